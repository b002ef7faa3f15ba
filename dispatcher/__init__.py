"""Dispatcher workers: delivery of finished replies to Slack, email, webhooks and SMS (not built yet)."""
