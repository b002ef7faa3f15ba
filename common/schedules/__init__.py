"""Schedules: when a cron schedule fires next."""
