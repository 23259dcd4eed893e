"""The checks of user SQL (`check_not_ending`, `check_pooled_user_sql`) read statements as PostgreSQL's lexer does.

Literals, comments, quoted identifiers and ``BEGIN ATOMIC`` bodies mentioning commit/end/rollback/set/prepare/
advisory locks and semicolons are no statements (never refused); a real transaction end or session statement
between such parts is always refused. No server: the checks run before anything is sent.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import pq

from hvbackend_postgres._bouncer import check_pooled_user_sql
from hvbackend_postgres._common import check_not_ending
from hvcore.errors import ConnectionMisuse, TransactionError

WORDS = [
    "commit",
    "END",
    "rollback",
    "abort",
    "set",
    "SET work_mem = 1",
    "prepare",
    "PREPARE TRANSACTION",
    "pg_advisory_lock(1)",
    "set_config('a', 'b', false)",
    "listen x",
    "declare",
    ";",
    "; ",
    ";commit;",
    "x",
]
TEXT = st.lists(st.sampled_from(WORDS), min_size=1, max_size=5).map(" ".join)


def _benign_part(text: str, kind: int) -> str:
    """``text`` inside something that is no statement: a literal, a comment, a quoted identifier, a dollar quote."""
    if kind == 0:
        return "'" + text.replace("'", "''") + "'"
    if kind == 1:
        return "E'" + text.replace("'", "''").replace("\\", "\\\\") + "'"
    if kind == 2:
        return "$q$" + text.replace("$q$", "") + "$q$"
    if kind == 3:
        return '"' + text.replace('"', '""') + '"'
    return "1 /* " + text.replace("*/", "") + " */"


PARTS = st.builds(_benign_part, TEXT, st.integers(0, 4))
BENIGN = st.lists(PARTS, min_size=1, max_size=3).map(lambda parts: "SELECT " + ", ".join(parts))
ATOMIC = st.sampled_from(
    [
        "CREATE FUNCTION hv_f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
        "CREATE OR REPLACE PROCEDURE hv_p() LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END",
    ]
)
ENDINGS = st.sampled_from(["COMMIT", "end", "ABORT", "rollback work", "END TRANSACTION", "PREPARE TRANSACTION 'x'"])
SESSION = st.sampled_from(
    [
        "SET work_mem = '9MB'",
        "SELECT set_config('work_mem', '9MB', false)",
        "LISTEN hv",
        "PREPARE hv AS SELECT 1",
        "SELECT pg_advisory_lock(4246)",
        "CREATE TEMP TABLE hv_t (a int)",
        "set role hv",
    ]
)
LEAD = st.sampled_from(["", "/* a; */ ", "-- commit;\n", "  "])


def _conn(autocommit: bool, status: pq.TransactionStatus) -> Any:
    return SimpleNamespace(autocommit=autocommit, pgconn=SimpleNamespace(transaction_status=status))


STATES = [
    (True, pq.TransactionStatus.IDLE),
    (False, pq.TransactionStatus.INTRANS),
    (True, pq.TransactionStatus.INTRANS),
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(BENIGN, ATOMIC), min_size=1, max_size=3).map("; ".join), st.sampled_from(STATES))
def test_benign_parts_are_never_refused(statement: str, state: tuple[bool, pq.TransactionStatus]) -> None:
    check_not_ending(statement, None, 3)
    check_pooled_user_sql(_conn(*state), statement, "shard 3")


@settings(max_examples=200, deadline=None)
@given(BENIGN, LEAD, ENDINGS)
def test_a_real_end_is_always_refused(benign: str, lead: str, ending: str) -> None:
    statement = f"{benign}; {lead}{ending}"
    with pytest.raises(TransactionError):
        check_not_ending(statement, None, 3)
    with pytest.raises(ConnectionMisuse):
        check_pooled_user_sql(_conn(False, pq.TransactionStatus.INTRANS), statement, "shard 3")


@settings(max_examples=200, deadline=None)
@given(BENIGN, LEAD, SESSION)
def test_a_session_statement_in_autocommit_is_always_refused(benign: str, lead: str, session: str) -> None:
    with pytest.raises(ConnectionMisuse):
        check_pooled_user_sql(_conn(True, pq.TransactionStatus.IDLE), f"{benign}; {lead}{session}", "shard 3")


@pytest.mark.parametrize("statement", ["SELECT %s, %(name)s; COMMIT", "SELECT 'unterminated; COMMIT"])
def test_placeholders_lex_and_what_the_lexer_refuses_is_left_to_the_server(statement: str) -> None:
    refused = "COMMIT" in statement and "'unterminated" not in statement
    if refused:
        with pytest.raises(TransactionError):
            check_not_ending(statement, None, 3)
    else:
        check_not_ending(statement, None, 3)
