"""Task functions that fail the way real code does, loaded with FLOW_FUNCTION_MODULES by the tests."""

from __future__ import annotations

import traceback
from typing import Any

from common.flows.functions import TaskCall, TaskFunctionError, register

SECRET_PATH = "/srv/relaygate/secrets/provider-key.pem"


@register("leaky")
async def leaky(call: TaskCall) -> Any:
    """An unexpected error whose message names a server path."""
    with open(SECRET_PATH) as handle:
        return handle.read()


@register("chatty")
async def chatty(call: TaskCall) -> Any:
    """A deliberate failure that pastes a traceback into its message."""
    try:
        {}["missing"]
    except KeyError:
        raise TaskFunctionError("lookup failed\n" + traceback.format_exc()) from None
