"""Slack: installations, where a user's replies may be posted, and mrkdwn text."""
