"""`hvcore.Row`, the rows of ``cursor()``: index, name and mapping access, and a repr that shows every column."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hvcore._row import make_row_maker


def test_repeated_column_names_keep_every_value_in_the_repr() -> None:
    """``SELECT 1 AS a, 2 AS a, 3 AS b`` showed ``Row(a=2, b=3)``: the first column was invisible."""
    row = make_row_maker(["a", "a", "b"])((1, 2, 3))
    assert repr(row) == "Row(1, a=2, b=3)"
    assert tuple(row) == (1, 2, 3) and row["a"] == 2 and len(row) == 3  # by name: the last, as psycopg2's DictRow


@given(st.lists(st.sampled_from(["a", "b", "c", "current_setting"]), min_size=1, max_size=6))
def test_the_repr_shows_every_value_once_in_column_order(names: list[str]) -> None:
    values = [f"v{i}" for i in range(len(names))]
    text = repr(make_row_maker(names)(values))
    positions = [text.index(repr(v)) for v in values]
    assert positions == sorted(positions) and all(text.count(repr(v)) == 1 for v in values)
