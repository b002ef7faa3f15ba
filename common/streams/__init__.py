"""The session stream protocol, the writer (with its Lua scripts) and the hub that fans streams out to clients."""
