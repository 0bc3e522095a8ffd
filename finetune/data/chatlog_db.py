"""Where the conversation log lives: an SQLite file (the embedded default) or a PostgreSQL database, which replicas
of the chat server behind a balancer share (`chat_log.url: postgresql://user@host:5432/db`).

Every query of the log is written once, in SQLite's SQL with `?` placeholders, against the one schema of
`chatlog_schema.py`; what differs between the two databases is here and only here:
- placeholders (`?` -> `%s`) and the schema's types (SQLite's AUTOINCREMENT id -> an identity column, REAL ->
  DOUBLE PRECISION: PostgreSQL's REAL is 4 bytes, which would round a Unix time to minutes);
- the new row's id (`lastrowid` -> `RETURNING id`);
- a writer's transaction: SQLite's BEGIN IMMEDIATE takes the file's one write lock; PostgreSQL takes a transaction
  advisory lock, so replicas creating the schema at once, or replacing replies, run one after another as on SQLite;
- what tables and columns exist (sqlite_master / PRAGMA table_info -> information_schema).
Rows are read by name or by position in both. PostgreSQL commits every statement outside a transaction (autocommit)
and keeps synchronous_commit on by default, so a committed message survives a killed server as in WAL mode.

psycopg 3 is imported only for a PostgreSQL URL: pip install "psycopg[binary]" (the `postgres` extra).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

POSTGRES_SCHEMES = ("postgresql", "postgres")
_WRITE_LOCK = 0x6E63686C  # "nchl": the advisory lock of the log's writers (any constant shared by all of them)


def is_postgres(target: str | Path) -> bool:
    return isinstance(target, str) and urlsplit(target).scheme in POSTGRES_SCHEMES


def describe(target: str | Path) -> str:
    """The log's name for messages: the path, or the URL without its password."""
    if not isinstance(target, str) or "://" not in target:
        return str(target)
    parts = urlsplit(target)
    if parts.password is None:
        return target
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class Row(tuple):
    """A PostgreSQL row read as sqlite3.Row is: by position, by column name, and dict(row)."""

    names: tuple[str, ...] = ()

    def keys(self) -> list[str]:
        return list(self.names)

    def __getitem__(self, key):
        if isinstance(key, str):
            return tuple.__getitem__(self, self.names.index(key))
        return tuple.__getitem__(self, key)


def _row_factory(cursor):
    names = tuple(c.name for c in cursor.description or ())
    cls = type("Row", (Row,), {"names": names})
    return lambda values: cls(values)


class LogDB:
    """One connection to the log; `execute` takes SQLite's SQL. Not thread-safe: ChatLog holds a lock around it."""

    def __init__(self, target: str | Path, read_only: bool = False):
        self.dialect: Literal["sqlite", "postgresql"] = "postgresql" if is_postgres(target) else "sqlite"
        self.name = describe(target)
        self._target, self._read_only = target, read_only
        if self.dialect == "postgresql":
            self._con = self._pg_connect()
        elif read_only:  # exporting while the server writes is safe in WAL mode
            self._con = sqlite3.connect(f"file:{Path(target).expanduser()}?mode=ro", uri=True)
            self._con.row_factory = sqlite3.Row
        else:
            self._con = sqlite3.connect(Path(target).expanduser(), check_same_thread=False, isolation_level=None,
                                        timeout=30)
            self._con.row_factory = sqlite3.Row
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=FULL")
            self._con.execute("PRAGMA foreign_keys=ON")

    def _pg_connect(self):
        psycopg = _psycopg()
        try:
            return psycopg.connect(
                str(self._target), autocommit=True, row_factory=_row_factory, connect_timeout=10,
                **({"options": "-c default_transaction_read_only=on"} if self._read_only else {}),
            )
        except psycopg.OperationalError as err:
            raise ConnectionError(f"cannot reach the conversation log {self.name}: {err}".strip()) from err

    def _live(self):
        """The connection; a PostgreSQL one that broke (the database restarted, a failover) is made again. The
        statement that found it broken has failed (its request got an error): it is not replayed, since it may
        have been committed before the connection broke."""
        if self.dialect == "postgresql" and (self._con.closed or self._con.broken):
            self._con = self._pg_connect()
        return self._con

    @property
    def connection(self):
        """The driver's connection (sqlite3 or psycopg), for what this class does not cover."""
        return self._con

    def sql(self, query: str) -> str:
        return query.replace("?", "%s") if self.dialect == "postgresql" else query

    def execute(self, query: str, params: Sequence = ()):
        return self._live().execute(self.sql(query), tuple(params))

    def insert(self, query: str, params: Sequence = ()) -> int:
        """Run an INSERT into a table with an `id` column; return the new row's id."""
        if self.dialect == "postgresql":
            return int(self.execute(query + " RETURNING id", params).fetchone()[0])
        return int(self.execute(query, params).lastrowid)

    def create(self, schema: str) -> None:
        """Run the DDL of chatlog_schema.SCHEMA (CREATE ... IF NOT EXISTS statements), inside the caller's
        transaction if there is one (sqlite3's executescript would commit it first)."""
        if self.dialect == "postgresql":
            schema = (schema.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER GENERATED BY DEFAULT AS IDENTITY "
                                     "PRIMARY KEY").replace(" REAL", " DOUBLE PRECISION"))
        for statement in filter(str.strip, schema.split(";")):  # the schema has no ';' inside a statement
            self._con.execute(statement)

    @contextlib.contextmanager
    def write_transaction(self) -> Iterator[None]:
        """One transaction that no other writer of the log interleaves with; rolled back on any error."""
        if self.dialect == "sqlite":
            self._con.execute("BEGIN IMMEDIATE")
        else:
            self._live().execute("BEGIN")
            self._con.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):  # a broken connection cannot roll back: the error to raise is above
                self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    def tables(self) -> set[str]:
        if self.dialect == "sqlite":
            return {r[0] for r in self._con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {r[0] for r in self._con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}

    def columns(self, table: str) -> set[str]:
        if self.dialect == "sqlite":
            return {r[1] for r in self._con.execute(f"PRAGMA table_info({table})")}
        return {r[0] for r in self._con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = %s", (table,))}

    def close(self) -> None:
        self._con.close()


def connect(target: str | Path, read_only: bool = False) -> LogDB:
    """The log at `target`: a postgresql:// URL, else an SQLite file path. A read-only SQLite log must exist."""
    if not is_postgres(target):
        path = Path(target).expanduser()
        if read_only and not path.is_file():
            raise FileNotFoundError(f"No conversation log at {path}")
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
    return LogDB(target, read_only)


def _psycopg():
    try:
        import psycopg
    except ImportError as err:
        raise ImportError('A PostgreSQL conversation log needs psycopg 3: pip install "psycopg[binary]" '
                          '(or the package\'s `postgres` extra)') from err
    return psycopg
