"""Agents: the agents file and routing, and the checkpoints of their tool calls."""
