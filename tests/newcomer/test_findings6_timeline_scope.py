"""Sixth newcomer: a ``db.timeline(tl)`` scope entered twice (nested) stays in force after both blocks end.

``TimelineScope`` keeps one contextvar token: entering it again inside itself overwrites the outer token, the inner
exit restores the outer value, and the outer exit finds no token and restores nothing. The thread (or task) keeps
``tl`` as its timeline after the ``with`` blocks: a web server's worker thread then records every later request's
writes in that user's timeline (and its token) and routes their reads by it. Other blocks entered twice are a typed
error (newcomer2's reused-blocks findings); this one is silently wrong.
"""

from __future__ import annotations

import hvcore
from hvcore._replicas import _scoped


def test_a_timeline_scope_entered_twice_is_gone_after_its_blocks() -> None:
    db = hvcore.Datastore([dict(shards="0-8")], backend="memory")
    try:
        mine = hvcore.Timeline()
        scope = db.timeline(mine)
        try:
            with scope, scope:  # a middleware and a handler decorator entering the request's scope
                db.put(3, 1, a="1")
        except hvcore.HypervaultError:
            pass  # refusing the re-entry would do
        assert _scoped.get() is None, "the request's timeline outlived its blocks"
    finally:
        db.close()
