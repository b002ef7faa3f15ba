"""A request: its models, the state machine in Postgres, its SQL, how it ends, and the limits it is admitted under."""
