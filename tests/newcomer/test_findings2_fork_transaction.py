"""A second newcomer's findings: fork() inside an open db.transaction() block.

After a fork the child inherits the parent's "transaction open on shard 5" state, so the child's own
`with db.transaction(5):` becomes a savepoint in the PARENT's transaction, on the parent's connection (one socket
now shared by two processes). The child's block ends "committed"; when the parent's block then rolls back, the
child's acknowledged write is gone.
"""

from __future__ import annotations

import os
from typing import Any

import hvcore


def test_a_child_forked_inside_a_transaction_commits_its_own(pg_fresh_db: dict[str, Any]) -> None:
    servers = [{**pg_fresh_db, "shards": "0-8"}]
    with hvcore.Datastore(servers, backend="jsonb", worker=None) as db:
        db.provision()
        reader, writer = os.pipe()
        try:
            with db.transaction(5) as tx:
                tx.put(1, who="parent")
                pid = os.fork()
                if pid == 0:  # the child: its own transaction, committed when its block ends
                    code = 1
                    try:
                        with db.transaction(5) as child_tx:
                            key = child_tx.put(1, who="child")
                        os.write(writer, str(int(key)).encode())
                        code = 0
                    finally:
                        os._exit(code)
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0
                child_key = hvcore.Key(int(os.read(reader, 64)))
                raise RuntimeError("the parent changes its mind")
        except RuntimeError:
            pass
        finally:
            os.close(reader)
            os.close(writer)
        assert db.get(child_key) is not None, "the child's committed write was rolled back with the parent's"
