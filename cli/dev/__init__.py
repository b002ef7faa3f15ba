"""`relaygate dev`: embedded servers and every process in one command, for development only."""
