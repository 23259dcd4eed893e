#!/usr/bin/env python3
"""Write the sync modules of hypervault from their asyncio sources (the async module is the one to edit).

The idea and the markers follow psycopg's ``tools/async_to_sync.py`` (Daniele Varrazzo, "Automatic async to sync
code conversion", 2024), which generates ``psycopg_pool/pool.py`` from ``pool_async.py``; this is our own, smaller
transformer working on the AST (with comments kept by the ``ast-comments`` package), then ``ruff`` for the layout.

What changes on the way to the sync module:

- ``async def``/``async with``/``async for`` lose ``async``; ``await x`` becomes ``x``; async comprehensions
  become plain ones;
- ``Awaitable[T]`` and ``Coroutine[Any, Any, T]`` become ``T``;
- names in `NAMES` are swapped wherever they occur: identifiers, attributes, imports, and words in strings,
  docstrings and comments (``AsyncDatastore`` → ``Datastore``, ``asynccontextmanager`` → ``contextmanager``,
  ``ALock`` → ``Lock``...); ``AsyncGenerator[T, None]`` becomes ``Generator[T, None, None]``;
- a block written for one side only is marked as psycopg marks it::

      if True:  # ASYNC
          ...        # kept in the async module only
      else:
          ...        # becomes the code of the sync module

  (mypy reads the ``else`` of ``if True`` as unreachable, so each side is type-checked in its own module);
- the output starts with a "generated from ..., do not edit" header and is formatted by ruff, so the result
  depends on the Python and ruff versions pinned by the project (``ruff`` in the ``dev`` extra).

Usage::

    python tools/async_to_sync.py            # rewrite every generated module
    python tools/async_to_sync.py --check    # exit 1 and list the modules that are not current (CI)
"""

from __future__ import annotations

import argparse
import ast as std_ast
import difflib
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path
from typing import Any

import ast_comments as ast

ROOT = Path(__file__).resolve().parents[1]

# (async source, generated sync module), relative to the repository root
PAIRS: list[tuple[str, str]] = [
    ("hvcore/_adatastore.py", "hvcore/_datastore.py"),
    ("backends/hvbackend_postgres/_astore.py", "backends/hvbackend_postgres/_store.py"),
    ("plugins/hvplugin_redis/_asequence.py", "plugins/hvplugin_redis/_sequence.py"),
    ("hvcore/_atransaction.py", "hvcore/_transaction.py"),
    ("backends/hvbackend_postgres/_atransaction.py", "backends/hvbackend_postgres/_transaction.py"),
    ("hvcore/_areadrouter.py", "hvcore/_readrouter.py"),
    ("hvcore/_acoalesce.py", "hvcore/_coalesce.py"),
]

# async name -> sync name, for identifiers, attributes, imported names and module paths, and words in text
NAMES: dict[str, str] = {
    # hypervault
    "AsyncDatastore": "Datastore",
    "AsyncServerStore": "ServerStore",
    "AsyncBackendFactory": "BackendFactory",
    "AsyncPostgresServerStore": "PostgresServerStore",
    "AsyncSequenceSource": "SequenceSource",
    "AsyncRedisSequence": "RedisSequence",
    "AsyncKeyGenerator": "KeyGenerator",
    "AsyncPlacementMixin": "PlacementMixin",
    "AsyncSequenceArg": "SequenceArg",
    "AsyncShardMover": "ShardMover",
    "AsyncSupportsWorkerLease": "SupportsWorkerLease",
    "AsyncShardTransaction": "ShardTransaction",
    "AsyncStoreTransaction": "StoreTransaction",
    "AsyncSupportsTransactions": "SupportsTransactions",
    "AsyncSupportsFilterWrites": "SupportsFilterWrites",
    "AsyncSupportsRowEstimates": "SupportsRowEstimates",
    "AsyncPostgresTransaction": "PostgresTransaction",
    "AsyncMemoryConnection": "MemoryConnection",  # the memory backend's lent objects (psycopg's async shape)
    "AsyncMemoryCursor": "MemoryCursor",
    "_atransaction": "_transaction",
    "alease_worker": "lease_worker",
    "AsyncReadRouter": "ReadRouter",
    "_areadrouter": "_readrouter",
    "_adatastore": "_datastore",
    "_astore": "_store",
    "_asequence": "_sequence",
    "_AsyncClient": "_SyncClient",
    "AConn": "Conn",
    "bounded_async_connection_class": "bounded_connection_class",
    "shard_bound_async_class": "shard_bound_class",
    "async_backend": "backend",
    "_acoalesce": "_coalesce",
    "_AFuture": "_Future",
    "ReadCoalescer": "ThreadReadCoalescer",
    "WriteCoalescer": "ThreadWriteCoalescer",
    # the async-compat pairs of hvcore._acompat
    "ALock": "Lock",
    "AEvent": "Event",
    "aspawn": "spawn",
    "agather": "gather",
    "acancel": "cancel",
    "asleep": "sleep",
    "ato_thread": "to_thread",
    "ashield": "shield",
    "aclosing": "closing",
    # psycopg and psycopg_pool
    "AsyncConnectionPool": "ConnectionPool",
    "AsyncConnection": "Connection",
    "AsyncCursor": "Cursor",
    "AsyncServerCursor": "ServerCursor",
    "AsyncClientCursor": "ClientCursor",
    "AsyncTransaction": "Transaction",
    "AsyncPipeline": "Pipeline",
    "AsyncCopy": "Copy",
    # standard library
    "AsyncIterator": "Iterator",
    "AsyncIterable": "Iterable",
    "AsyncGenerator": "Generator",
    "AbstractAsyncContextManager": "AbstractContextManager",
    "AsyncExitStack": "ExitStack",
    "asynccontextmanager": "contextmanager",
    "aonce_block": "once_block",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
    "aclose": "close",
    "anext": "next",
    "aiter": "iter",
}
# words replaced in strings, docstrings and comments only (not identifiers)
TEXT_ONLY: dict[str, str] = {
    " (asyncio)": "",
    "an async context manager": "a context manager",
    "an async iterator": "an iterator",
    "an async generator": "a generator",
    "async with": "with",
    "async for": "for",
    "awaitable": "callable",
    "a coroutine": "a function",
}
# Dotted module paths that differ: ``redis.asyncio`` -> ``redis``.
MODULES: dict[str, str] = {
    "redis.asyncio": "redis",
    "redis.asyncio.cluster": "redis.cluster",
    "redis.asyncio.retry": "redis.retry",
}

HEADER = (
    "# WARNING: generated from {source} by tools/async_to_sync.py.\n"
    "# Do not edit: edit the source, then run the tool.\n"
)
_BLANK = "# __hv_blank_line__"
_WORDS = re.compile(r"\b(" + "|".join(sorted(map(re.escape, NAMES), key=len, reverse=True)) + r")\b")
_PHRASES = re.compile("|".join(sorted(map(re.escape, TEXT_ONLY), key=len, reverse=True)))


def sync_text(text: str) -> str:
    """``text`` (a string, docstring or comment) with async names and phrases swapped for the sync ones."""
    text = _PHRASES.sub(lambda m: TEXT_ONLY[m.group(0)], text)
    return _WORDS.sub(lambda m: NAMES[m.group(0)], text)


def sync_annotation(text: str) -> str:
    """`sync_text`, plus the type rewrites of the tool (``AsyncGenerator[Y, S]`` → ``Generator[Y, S, None]``).

    For comparing signatures rendered as text (tests/test_sync_async.py).
    """
    text = re.sub(r"\bAsyncGenerator\[(.*?), None\]", r"Generator[\1, None, None]", text)
    text = re.sub(r"\bAwaitable\[([^\[\]]*)\]", r"\1", text)
    return sync_text(text)


def _is_async_marker(node: Any) -> bool:
    """True for ``if True:  # ASYNC``: a block kept only in the async module."""
    if not (isinstance(node, std_ast.If) and isinstance(node.test, std_ast.Constant) and node.test.value is True):
        return False
    first = node.body[0] if node.body else None
    return isinstance(first, ast.Comment) and first.inline and first.value.strip() == "# ASYNC"


class AsyncToSync(std_ast.NodeTransformer):
    """The AST rewrite from the asyncio source to the sync module."""

    def generic_visit(self, node: std_ast.AST) -> std_ast.AST:
        for field, old in std_ast.iter_fields(node):
            if field in ("body", "orelse", "finalbody") and isinstance(old, list):
                setattr(node, field, self._statements(old, node))
        return super().generic_visit(node)

    def _statements(self, statements: list[Any], parent: std_ast.AST) -> list[Any]:
        out: list[Any] = []
        for statement in statements:
            if _is_async_marker(statement):
                out.extend(statement.orelse)
            else:
                out.append(statement)
        emptied = statements and not any(not isinstance(s, ast.Comment) for s in out)
        if emptied and not isinstance(parent, std_ast.Module):
            out.append(std_ast.Pass())
        return out

    def _visit(self, node: std_ast.AST) -> std_ast.AST:
        visited: std_ast.AST = self.visit(node)
        return visited

    def visit_AsyncFunctionDef(self, node: std_ast.AsyncFunctionDef) -> std_ast.AST:
        new = std_ast.FunctionDef(**{f: getattr(node, f) for f in node._fields})
        return self._visit(std_ast.copy_location(new, node))

    def visit_AsyncWith(self, node: std_ast.AsyncWith) -> std_ast.AST:
        new = std_ast.With(**{f: getattr(node, f) for f in node._fields})
        return self._visit(std_ast.copy_location(new, node))

    def visit_AsyncFor(self, node: std_ast.AsyncFor) -> std_ast.AST:
        new = std_ast.For(**{f: getattr(node, f) for f in node._fields})
        return self._visit(std_ast.copy_location(new, node))

    def visit_Await(self, node: std_ast.Await) -> std_ast.AST:
        return self._visit(node.value)

    def visit_comprehension(self, node: std_ast.comprehension) -> std_ast.AST:
        node.is_async = 0
        return self.generic_visit(node)

    def visit_FunctionDef(self, node: std_ast.FunctionDef) -> std_ast.AST:
        node.name = NAMES.get(node.name, node.name)
        return self.generic_visit(node)

    def visit_ClassDef(self, node: std_ast.ClassDef) -> std_ast.AST:
        node.name = NAMES.get(node.name, node.name)
        return self.generic_visit(node)

    def visit_Name(self, node: std_ast.Name) -> std_ast.AST:
        node.id = NAMES.get(node.id, node.id)
        return node

    def visit_Attribute(self, node: std_ast.Attribute) -> std_ast.AST:
        dotted = _dotted(node)
        if dotted in MODULES:
            parts = MODULES[dotted].split(".")
            new: std_ast.expr = std_ast.Name(id=parts[0], ctx=std_ast.Load())
            for part in parts[1:]:
                new = std_ast.Attribute(value=new, attr=part, ctx=std_ast.Load())
            return std_ast.copy_location(new, node)
        node.attr = NAMES.get(node.attr, node.attr)
        return self.generic_visit(node)

    def visit_Subscript(self, node: std_ast.Subscript) -> std_ast.AST:
        # Awaitable[T] -> T, Coroutine[Any, Any, T] -> T
        if isinstance(node.value, std_ast.Name) and node.value.id == "Awaitable":
            return self._visit(node.slice)
        name = node.value.id if isinstance(node.value, std_ast.Name) else None
        if name == "Coroutine" and isinstance(node.slice, std_ast.Tuple):
            return self._visit(node.slice.elts[-1])
        # AsyncGenerator[Y, S] -> Generator[Y, S, None]
        if name == "AsyncGenerator" and isinstance(node.slice, std_ast.Tuple) and len(node.slice.elts) == 2:
            node.slice.elts.append(std_ast.Constant(value=None))
        return self.generic_visit(node)

    def visit_ImportFrom(self, node: std_ast.ImportFrom) -> std_ast.AST:
        if node.module is not None:
            module = MODULES.get(node.module, node.module)
            node.module = ".".join(NAMES.get(part, part) for part in module.split("."))
        for alias in node.names:
            alias.name = NAMES.get(alias.name, alias.name)
            if alias.asname is not None:
                alias.asname = NAMES.get(alias.asname, alias.asname)
        return node

    def visit_Import(self, node: std_ast.Import) -> std_ast.AST:
        for alias in node.names:
            alias.name = MODULES.get(alias.name, alias.name)
        return node

    def visit_Constant(self, node: std_ast.Constant) -> std_ast.AST:
        if isinstance(node.value, str):
            node.value = sync_text(node.value)
        return node

    def visit_Comment(self, node: Any) -> Any:
        node.value = sync_text(node.value)
        return node


def _dotted(node: std_ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, std_ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, std_ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _mark_blank_lines(source: str) -> str:
    """Blank lines outside strings become marker comments, so that the rewrite keeps the source's paragraphs."""
    lines = source.splitlines(keepends=True)
    blank: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NL and token.line.strip() == "":
            blank.add(token.start[0])
    out = []
    for number, line in enumerate(lines, start=1):
        if number in blank:
            following = next((x for x in lines[number:] if x.strip()), "")
            indent = following[: len(following) - len(following.lstrip())]
            out.append(f"{indent}{_BLANK}\n")
        else:
            out.append(line)
    return "".join(out)


def _drop_source_note(tree: Any) -> None:
    """Remove the module docstring's paragraph that says the module is a source for this tool (wrong once generated)."""
    doc = next((node for node in tree.body if not isinstance(node, ast.Comment)), None)
    if isinstance(doc, std_ast.Expr) and isinstance(doc.value, std_ast.Constant) and isinstance(doc.value.value, str):
        paragraphs = doc.value.value.split("\n\n")
        kept = [p for p in paragraphs if not p.lstrip().startswith("This module is the source of")]
        doc.value.value = "\n\n".join(kept).rstrip() + ("\n" if len(kept) > 1 else "")


def convert(source: str, source_name: str, target_name: str) -> str:
    """The sync module generated from the asyncio ``source`` (formatted as the repository's ruff settings say)."""
    tree = ast.parse(_mark_blank_lines(source), filename=source_name)
    _drop_source_note(tree)
    tree = AsyncToSync().visit(tree)
    std_ast.fix_missing_locations(tree)
    text = ast.unparse(tree)
    text = re.sub(rf"^[ \t]*{re.escape(_BLANK)}$", "", text, flags=re.MULTILINE)
    text = HEADER.format(source=source_name) + text + "\n"
    return _ruff(text, target_name)


def _ruff(text: str, target_name: str) -> str:
    """Drop imports the sync side no longer uses, sort imports, undo ast.unparse's habits, format (repository settings).

    ``yield`` in a loop becomes ``yield from`` (UP028; an async generator cannot delegate) and a generator argument
    loses the parentheses ast.unparse gives it (UP034).
    """
    for command in (
        [
            "check",
            "--fix-only",
            "--quiet",
            "--unsafe-fixes",
            "--select",
            "F401,I001,UP028,UP034",
            "--stdin-filename",
            target_name,
            "-",
        ],
        ["format", "--quiet", "--stdin-filename", target_name, "-"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *command], input=text, capture_output=True, text=True, cwd=ROOT, check=False
        )
        if done.returncode not in (0, 1) or not done.stdout:
            raise SystemExit(f"ruff {command[0]} failed on {target_name}: {done.stderr.strip()}")
        text = done.stdout
    return text


def main(argv: list[str] | None = None) -> int:
    """Generate (or ``--check``) every sync module listed in `PAIRS`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated module is stale")
    parser.add_argument("--diff", action="store_true", help="with --check: show what differs")
    parser.add_argument("files", nargs="*", help="only these async sources (default: all)")
    options = parser.parse_args(argv)
    stale = []
    for source_name, target_name in PAIRS:
        if options.files and not any(Path(f).resolve() == ROOT / source_name for f in options.files):
            continue
        source = (ROOT / source_name).read_text(encoding="utf-8")
        generated = convert(source, source_name, target_name)
        target = ROOT / target_name
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if generated == current:
            continue
        stale.append(target_name)
        if options.check:
            if options.diff:
                sys.stdout.writelines(
                    difflib.unified_diff(
                        current.splitlines(keepends=True), generated.splitlines(keepends=True), target_name, "generated"
                    )
                )
        else:
            target.write_text(generated, encoding="utf-8")
            print(f"wrote {target_name} (from {source_name})")
    if options.check and stale:
        print(
            "stale generated modules (run `python tools/async_to_sync.py`): " + ", ".join(stale),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
