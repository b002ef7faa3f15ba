"""What every process runs on: settings, Postgres and migrations, Redis key names, logging, metrics, tracing, store
outages, credentials, the outbound guard and the event sink."""
