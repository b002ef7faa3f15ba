"""`POST /stream?feature_id=&chat_id=` (the prototype's intake): one claim per chat names its generation."""

from __future__ import annotations

import uuid

from api.requests.compat import session_name
from common.platform.credentials import Principal
from common.platform.keys import start_key
from common.sessions import repository as session_repo
from tests.support.app import App


async def test_a_claim_whose_request_is_not_stored_yet_answers_retry(app: App) -> None:
    """Another gateway claimed the chat and is still storing its request: 409, and the claim is left alone."""
    gw, user, tenant = app.gateway, "user-" + uuid.uuid4().hex[:8], "tenant-" + uuid.uuid4().hex[:8]
    feature = gw.agents.agents[0].feature
    who = Principal(tenant_id=tenant, user_id=user, scopes=frozenset({"requests"}))
    session_id, _ = await session_repo.for_external_id(gw.db, who, session_name(feature, "c1"), 600)
    claim, storing = start_key(session_id, app.settings.stream_buckets), str(uuid.uuid4())
    await gw.streams.set(claim, storing, ex=60)
    async with app.client(user, tenant) as client:
        answer = await client.post(f"/stream?feature_id={feature}&chat_id=c1")
    assert answer.status_code == 409, answer.text
    assert "starting" in answer.json()["detail"]
    assert (await gw.streams.get(claim)).decode() == storing
