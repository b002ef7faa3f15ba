"""The prototype's ARQ worker: `generate_messages` XADDs N messages to `stream:{feature}:{chat}`.

PROTO_MESSAGES (200) messages, PROTO_DELAY_MS (0) between them, then `[DONE]`; 60 s expiry.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from datetime import datetime
from typing import Any

from arq.connections import RedisSettings

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
MESSAGES = int(os.environ.get("PROTO_MESSAGES", "200"))
DELAY = float(os.environ.get("PROTO_DELAY_MS", "0")) / 1000


async def generate_messages(ctx: dict[str, Any], feature_id: str, chat_id: str) -> None:
    redis = ctx["redis"]
    key = f"stream:{feature_id}:{chat_id}"
    for i in range(MESSAGES):
        if DELAY:
            await asyncio.sleep(DELAY)
        data = {
            "id": str(i),
            "feature_id": feature_id,
            "chat_id": chat_id,
            "message": f"Message {i} from feature {feature_id}, chat {chat_id}",
            "timestamp": datetime.now().isoformat(),
            "ts": time.time(),
            "container_id": socket.gethostname(),
            "container_feature_id": "worker-default",
            "worker": "arq",
        }
        await redis.xadd(key, {"data": json.dumps(data)})
        await redis.expire(key, 60)
    await redis.xadd(key, {"data": "[DONE]"})


class WorkerSettings:
    functions = [generate_messages]
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    max_jobs = int(os.environ.get("PROTO_MAX_JOBS", "1000"))
    job_timeout = 60
    keep_result = 60
