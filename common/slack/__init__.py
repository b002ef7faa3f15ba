"""Slack: installations, where a user's replies may be posted, mrkdwn text and the ids of relaygate's buttons."""
