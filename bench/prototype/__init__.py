"""The original prototype, rebuilt from ../shared/reference/redis-streams-prototype.md as a baseline."""
