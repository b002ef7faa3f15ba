"""Dispatcher workers: finished replies delivered to Slack, email, webhooks and SMS, with a log of every attempt."""
