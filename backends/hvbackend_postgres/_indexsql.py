"""The SQL of secondary indexes (no I/O): a body field as a typed expression, the index DDL, query conditions.

See ``_indexes`` for the design. The query side (`typed_conditions`, used by ``StoreCore._query_sql``) and the DDL
use the same `field_expr` text: the planner matches an index only against the same expression, with the field name
as a constant (a bound parameter would not match).
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from hvbackend_postgres._schema import TABLE, body_index_ddl
from hvcore._backend import QuerySpec
from hvcore._schemadefs import BIGINT_MAX, BIGINT_MIN, INT_PATTERN, NUMERIC_PATTERN, IndexSpec, typed_value

__all__ = ["OPERATORS", "PG_TYPES", "BoundLiteral", "field_expr", "index_ddl", "typed_conditions"]

PG_TYPES = {
    "text": "text",
    "bigint": "bigint",
    "numeric": "numeric",
    "timestamptz": "timestamptz",
    "boolean": "boolean",
}
OPERATORS = frozenset({"=", ">", ">=", "<", "<="})


class BoundLiteral(sql.Literal):
    """A `psycopg.sql.Literal` for a statement executed with bound parameters: its ``%`` signs are doubled.

    psycopg reads placeholders in the whole statement text, string constants included, so a field named ``cpu%``
    spliced as a plain literal fails ("only '%s', '%b', '%t' are allowed") and one named ``a%%b`` silently becomes
    ``a%b`` (another field: a newcomer's delete_where deleted the wrong records). Doubled, the server receives the
    constant exactly as the index's DDL (run without parameters) wrote it, so the planner still matches the index.
    """

    def as_bytes(self, context: Any = None) -> bytes:
        """The literal's SQL with ``%`` written ``%%``."""
        return super().as_bytes(context).replace(b"%", b"%%")

    def as_string(self, context: Any = None) -> str:
        """As `as_bytes`, decoded."""
        return super().as_string(context).replace("%", "%%")


def _match(text: sql.Composable, pattern: str, literal: type[sql.Literal]) -> sql.Composed:
    return sql.SQL("{} ~ {}").format(text, literal(f"^({pattern})$"))


def field_expr(field: str, type_name: str, ext: str | None, *, bound: bool = False) -> sql.Composed:
    """The indexed expression: body field ``field`` as ``type_name``, NULL when it is not one (never an error).

    ``ext`` is the hstore extension's schema for hstore bodies (text values), None for jsonb. The same text is used
    to build the index and to query it (the planner matches expressions, and the field as a constant).
    ``bound``: the text goes into a statement executed with bound parameters (`BoundLiteral` constants).
    """
    literal: type[sql.Literal] = BoundLiteral if bound else sql.Literal
    name = literal(field)
    if ext is None:
        value = sql.SQL("(body -> {})").format(name)
        text: sql.Composable = sql.SQL("(body ->> {})").format(name)

        def when(json_type: str, then: sql.Composable) -> sql.Composed:
            return sql.SQL("(CASE WHEN jsonb_typeof({}) = {} THEN {} END)").format(value, literal(json_type), then)

        if type_name == "text":
            return sql.SQL('({} COLLATE "C")').format(when("string", text))
        if type_name == "boolean":
            return when("boolean", sql.SQL("({})::boolean").format(value))
        if type_name == "numeric":
            return when("number", sql.SQL("({})::numeric").format(value))
        if type_name == "bigint":
            number = sql.SQL("({})::numeric").format(value)
            integral = sql.SQL(
                "(CASE WHEN {n} = trunc({n}) AND {n} BETWEEN {lo} AND {hi} THEN {n}::bigint END)"
            ).format(n=number, lo=literal(BIGINT_MIN), hi=literal(BIGINT_MAX))
            return when("number", integral)
        if type_name == "timestamptz":
            return when("string", sql.SQL("hypervault.hv_timestamptz({})").format(text))
        raise ValueError(f"unknown index type {type_name!r}")
    text = sql.SQL("(body OPERATOR({}.->) {})").format(sql.Identifier(ext), name)
    if type_name == "text":
        return sql.SQL('({} COLLATE "C")').format(text)
    if type_name == "boolean":
        return sql.SQL("(CASE WHEN {t} IN ('true', 'false') THEN {t}::boolean END)").format(t=text)
    if type_name == "numeric":
        return sql.SQL("(CASE WHEN {} THEN {}::numeric END)").format(_match(text, NUMERIC_PATTERN, literal), text)
    if type_name == "bigint":
        return sql.SQL(
            "(CASE WHEN {m} THEN (CASE WHEN {t}::numeric BETWEEN {lo} AND {hi} THEN {t}::bigint END) END)"
        ).format(m=_match(text, INT_PATTERN, literal), t=text, lo=literal(BIGINT_MIN), hi=literal(BIGINT_MAX))
    if type_name == "timestamptz":
        return sql.SQL("hypervault.hv_timestamptz({})").format(text)
    raise ValueError(f"unknown index type {type_name!r}")


def index_ddl(spec: IndexSpec, schema: str, ext: str | None, *, concurrently: bool) -> sql.Composed:
    """``CREATE [UNIQUE] INDEX [CONCURRENTLY] IF NOT EXISTS`` of ``spec`` on ``schema``'s entities table (for
    `IndexSpec.body`, `_schema.body_index_ddl`)."""
    if spec.is_body:
        return body_index_ddl(schema, ext, concurrently=concurrently)
    return sql.SQL(
        "CREATE {unique}INDEX {concurrently}IF NOT EXISTS {name} ON {schema}.{table} (({expr})) WHERE kind = {kind}"
    ).format(
        unique=sql.SQL("UNIQUE " if spec.unique else ""),
        concurrently=sql.SQL("CONCURRENTLY " if concurrently else ""),
        name=sql.Identifier(spec.name),
        schema=sql.Identifier(schema),
        table=sql.Identifier(TABLE),
        expr=field_expr(str(spec.field), spec.type, ext),
        kind=sql.Literal(spec.kind),
    )


def typed_conditions(spec: QuerySpec, ext: str | None, text_only: bool) -> tuple[list[sql.Composable], list[Any]]:
    """The WHERE conditions (and their parameters) of a query's typed filters: each filter's field expression
    compared with bound values cast to the index's type, plus the kind as a literal (the partial index's predicate).

    An equality hint whose value is not of the index's type adds nothing (the plain ``where`` filter decides).
    """
    conds: list[sql.Composable] = []
    params: list[Any] = []
    for flt in spec.filters:
        assert flt.type is not None and flt.kind is not None, "typed filters are bound to an index"
        ops = flt.ops
        if flt.hint:
            value = typed_value(ops[0][1], flt.type, text_values=text_only)
            if value is None:
                continue
            ops = (("=", value),)
        expr = field_expr(flt.field, flt.type, ext, bound=True)
        conds.append(sql.SQL("kind = {}").format(sql.Literal(flt.kind)))
        for op, bound in ops:
            if op not in OPERATORS:
                raise ValueError(f"unknown operator {op!r}")
            conds.append(sql.SQL("{} {} CAST(%s AS {})").format(expr, sql.SQL(op), sql.SQL(PG_TYPES[flt.type])))
            params.append(bound)
    return conds, params
