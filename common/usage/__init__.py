"""Usage: what requests used (tokens and cost) and the budgets that cap it."""
