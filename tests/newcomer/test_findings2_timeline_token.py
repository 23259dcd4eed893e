"""A second newcomer's findings: the read-your-writes token in a cookie, as the README shows it.

README: `response.set_cookie("hv", tl.token(secret=SECRET))   # ~20 bytes per shard written, base64url`. Browsers
keep cookies up to about 4096 bytes (RFC 6265's minimum) and drop larger ones without a word; a user whose requests
wrote to ~150 shards within max_age (60 s: a bulk action, entities spread over random shards) gets a token past
that, so the cookie is lost and with it read-your-writes on every shard. Past 256 shards the token also drops the
oldest entries silently (TOKEN_MAX_ENTRIES, not in the README).
"""

from __future__ import annotations

from typing import Any

import hvcore

SECRET = b"at least 16 bytes of secret"


def test_a_timeline_token_of_many_shards_fits_a_cookie(pg_fresh_db: dict[str, Any]) -> None:
    servers = [{**pg_fresh_db, "shards": "0-200", "replicas": [{"port": 1}]}]  # a standby that is down: fine
    with hvcore.Datastore(servers, backend="jsonb", read_from="replica", worker=None) as db:
        db.provision()
        timeline = hvcore.Timeline()
        with db.timeline(timeline):
            for shard in range(200):
                db.put(shard, 1, n=shard)
        token = timeline.token(secret=SECRET)
    assert hvcore.Timeline.from_token(token, secret=SECRET) is not None
    assert len(f"hv={token}; Path=/; Secure; HttpOnly; SameSite=Lax") <= 4096, f"{len(token)} characters"
