"""`Row`: a result row that is a tuple and a read-only mapping at once (``row[0]`` and ``row["version"]``).

Modelled on psycopg2's ``DictRow`` (``psycopg2.extras.DictCursor``, which the 2015 library's ``DictConnection``
handed out): index by position or by column name, ``keys()``/``values()``/``items()``/``get()``, and ``in``
tests column names. It is a `tuple` subclass (so unpacking, slicing, ``len`` and tuple equality work) and it also
compares equal to a mapping with the same columns and values, as the plain dict rows of earlier releases did.
The PostgreSQL backends make these rows with a psycopg row factory (``hvbackend_postgres._common.row_factory``);
no I/O here.
"""

from __future__ import annotations

from collections.abc import ItemsView, KeysView, Mapping, Sequence
from typing import Any, SupportsIndex, overload

__all__ = ["Row", "make_row_maker"]


class Row(tuple[Any, ...]):
    """One result row: a tuple of column values that is also read-only indexable by column name.

    ``row[0]``, ``row[-1]``, ``row[1:3]`` index by position; ``row["version"]`` by column name (`KeyError` for an
    unknown name); ``row.get(name, default)``, ``row.keys()``, ``row.values()`` (a tuple), ``row.items()`` and
    ``dict(row)`` work as on a mapping; ``"version" in row`` tests a column name (as psycopg2's ``DictRow`` does).
    Two columns of the same name: the name finds the last one. Equal to a tuple with the same values, and to a
    mapping with the same names and values.
    """

    __module__ = "hvcore"

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: Mapping[str, int]) -> Row:
        """A row of ``values`` whose column ``name`` is at position ``index[name]``."""
        row = super().__new__(cls, values)
        row._index = index if type(index) is dict else dict(index)
        return row

    def __reduce__(self) -> tuple[Any, ...]:
        return (Row, (tuple(self), self._index))

    @overload
    def __getitem__(self, key: SupportsIndex) -> Any: ...

    @overload
    def __getitem__(self, key: slice) -> tuple[Any, ...]: ...

    @overload
    def __getitem__(self, key: str) -> Any: ...

    def __getitem__(self, key: SupportsIndex | slice | str) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def keys(self) -> KeysView[str]:
        """The column names, in column order."""
        return self._index.keys()

    def values(self) -> tuple[Any, ...]:
        """The values, in column order (a plain tuple)."""
        return tuple(self)

    def items(self) -> ItemsView[str, Any]:
        """``(name, value)`` pairs, in column order."""
        return self.as_dict().items()

    def get(self, name: str, default: Any = None) -> Any:
        """The value of column ``name``, or ``default`` if there is no such column."""
        index = self._index.get(name)
        return default if index is None else tuple.__getitem__(self, index)

    def as_dict(self) -> dict[str, Any]:
        """The row as a plain dict of column name → value."""
        return {name: tuple.__getitem__(self, i) for name, i in self._index.items()}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self.as_dict() == dict(other)
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        names = {i: name for name, i in self._index.items()}  # a repeated column name maps to its last column
        shown = (f"{names[i]}={v!r}" if i in names else repr(v) for i, v in enumerate(tuple.__iter__(self)))
        return "Row(" + ", ".join(shown) + ")"


def make_row_maker(names: Sequence[str]) -> Any:
    """A function making `Row` objects of these column names from a sequence of values."""
    index = {name: i for i, name in enumerate(names)}

    def make(values: Sequence[Any]) -> Row:
        return Row(values, index)

    return make
