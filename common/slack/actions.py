"""The `action_id`s of relaygate's Block Kit buttons: the dispatcher puts them on replies, the gateway's
interactivity endpoint acts on the presses."""

from __future__ import annotations

CANCEL = "rg_cancel"  # stop the reply being written
NEW = "rg_new"  # start a new conversation in the thread
APPROVE = "rg_approve"  # approve a tool call awaiting approval
DENY = "rg_deny"  # deny it
