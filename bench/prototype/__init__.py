"""The original Redis Streams prototype relaygate was designed from, rebuilt as a baseline for bench/e2e.py."""
