"""Sessions: the conversations requests belong to, and their SQL."""
