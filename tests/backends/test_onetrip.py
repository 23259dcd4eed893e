"""The pure parts of the one-trip write (`_onetrip`) and of settling it (`_commit`): no server needed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvbackend_postgres._commit import (
    XID_GROUP_RETURNING,
    XID_RETURNING,
    applied_sql,
    full_xid,
    returning_xid,
    without_xid,
)
from hvbackend_postgres._onetrip import PreparedNames, dollar_params

PLAIN = st.text(alphabet=st.characters(blacklist_characters="%\x00", codec="utf-8"), max_size=12)


@given(st.lists(st.tuples(PLAIN, st.sampled_from(["%s", "%%"])), max_size=8), PLAIN)
def test_placeholders_become_numbered_parameters_and_nothing_else_changes(
    parts: list[tuple[str, str]], tail: str
) -> None:
    statement = "".join(text + mark for text, mark in parts) + tail
    converted, count = dollar_params(statement)
    assert count == sum(1 for _, mark in parts if mark == "%s")
    expected, n = "", 0
    for text, mark in parts:
        if mark == "%s":
            n += 1
        expected += text + (f"${n}" if mark == "%s" else "%")
    assert converted == (expected + tail).encode()


@pytest.mark.parametrize("statement", ["SELECT %d", "x % y", "100%", "%(name)s"])
def test_any_other_percent_sequence_is_refused(statement: str) -> None:
    with pytest.raises(ValueError, match="placeholder"):
        dollar_params(statement)


def test_the_id_column_comes_off_for_a_server_refusing_it_in_returning() -> None:
    single = "INSERT INTO s.entities (id, kind, body) VALUES (%s, %s, %s)"
    assert without_xid(returning_xid(single)) == single
    group = f"INSERT INTO s.entities VALUES (%s), (%s) ON CONFLICT DO NOTHING RETURNING id{XID_GROUP_RETURNING}"
    assert without_xid(group) == "INSERT INTO s.entities VALUES (%s), (%s) ON CONFLICT DO NOTHING RETURNING id"
    assert returning_xid(single).endswith(XID_RETURNING)


@given(st.integers(0, (1 << 62)), st.integers(-(1 << 31) + 1, (1 << 31) - 1))
def test_a_32_bit_transaction_id_widens_to_the_full_id_near_the_servers(full: int, distance: int) -> None:
    """pg_stat_activity's backend_xid has 32 bits; pg_xact_status wants xid8: the one within 2^31 of the server's."""
    near = full + distance
    assert full_xid(full & 0xFFFFFFFF, near) == full


def test_an_update_or_delete_by_key_reads_whether_it_is_in_place_with_the_same_parameters() -> None:
    merge = 'UPDATE "shard0003"."entities" SET body = body || %s WHERE id = %s'
    assert applied_sql(merge) == 'SELECT (body || %s) = body FROM "shard0003"."entities" WHERE id = %s'
    hstore = 'UPDATE "s"."entities" SET body = "public".hstore(%s::text[], %s::text[]) WHERE id = %s'
    assert (
        applied_sql(hstore)
        == 'SELECT ("public".hstore(%s::text[], %s::text[])) = body FROM "s"."entities" WHERE id = %s'
    )
    delete = 'DELETE FROM "s"."entities" WHERE id = %s'
    assert applied_sql(delete) == 'SELECT NOT EXISTS (SELECT FROM "s"."entities" WHERE id = %s)'


def test_prepared_names_depend_on_the_text_and_are_forgotten_per_connection() -> None:
    names = PreparedNames()

    class Conn:
        pass

    one, two = Conn(), Conn()
    a, b = PreparedNames.name(b"INSERT 1"), PreparedNames.name(b"INSERT 2")
    assert a != b and a.startswith(b"hv_w_")
    names.add(one, a)
    assert names.known(one, a) and not names.known(one, b) and not names.known(two, a)
    names.forget(one)
    assert not names.known(one, a)
