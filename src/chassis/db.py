"""``Database``: a service's own SQLite store, with a transactional outbox and an inbox.

Each service owns its data (database per service). The chassis gives it an
embedded SQLite database through :mod:`aiosqlite`, so no server is needed::

    db = service.database("orders.db", schema=SCHEMA)

    async with db.transaction() as tx:
        await tx.execute("INSERT INTO orders (id, total) VALUES (?, ?)", (oid, total))
        tx.publish("order_created", {"order_id": oid}, key=oid)

    row = await db.fetchone("SELECT total FROM orders WHERE id = ?", (oid,))

* **Transactions** are ``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an
  exception) on one writer connection; they are serialised by an ``asyncio.Lock``.
  Reads outside a transaction use a second connection and see committed data (the
  file is in WAL mode, so they never wait for a writer).
* **Outbox**: :meth:`Transaction.publish` writes the event to the ``chassis_outbox``
  table in the same transaction as the state change. After the commit, a relay task
  publishes the pending rows in order and marks them sent. If the process dies
  between the commit and the publish, the row stays pending and the relay of the next
  process on that file sends it: the event is published at least once, never lost.
  The relay also wakes every ``events.outbox_poll_interval_seconds``; when
  publishing fails it backs off (exponentially, with full jitter) and retries the
  same row, keeping the order.
* **Inbox**: idempotent subscribers (``subscribe(..., idempotent=True)``) record the
  ids of the events they applied in ``chassis_inbox``, in the transaction of the
  handler, so a redelivered event is applied once in effect.

Rows are :class:`sqlite3.Row`: access columns by name (``row["total"]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import _compat
from .config import ChassisSettings, DatabaseSettings, EventsSettings
from .events.base import Event, decode, encode, new_event
from .exceptions import LifecycleError

if TYPE_CHECKING:
    import aiosqlite

__all__ = ["DATABASE_KEY", "Database", "Result", "Transaction"]

log = logging.getLogger("chassis.db")

Params = Sequence[Any] | Mapping[str, Any]
Publisher = Callable[[Event], Awaitable[Any]]
"""Publishes one event and returns once the broker holds it (the relay's sink)."""

CHASSIS_SCHEMA = """
CREATE TABLE IF NOT EXISTS chassis_outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT    NOT NULL UNIQUE,
    type       TEXT    NOT NULL,
    body       BLOB    NOT NULL,
    created_at REAL    NOT NULL,
    sent_at    REAL
);
CREATE INDEX IF NOT EXISTS chassis_outbox_pending ON chassis_outbox (seq) WHERE sent_at IS NULL;
CREATE TABLE IF NOT EXISTS chassis_inbox (
    handler      TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    source       TEXT NOT NULL,
    type         TEXT NOT NULL,
    processed_at REAL NOT NULL,
    PRIMARY KEY (handler, event_id)
);
"""
"""The chassis' own tables, created next to the service's schema."""

_SENT_RETENTION_SECONDS = 3600.0
"""Rows the relay sent are kept this long (for inspection), then deleted."""
_RELAY_BACKOFF_INITIAL_SECONDS = 0.1

_in_transaction: contextvars.ContextVar[Database | None] = contextvars.ContextVar(
    "chassis_db_transaction", default=None
)


@dataclass(frozen=True, slots=True)
class Result:
    """What a statement did."""

    rowcount: int
    """Rows changed (``-1`` for statements that change none)."""
    lastrowid: int | None
    """``rowid`` of the last inserted row."""


def _run_one(conn: sqlite3.Connection, sql: str, params: Params) -> Result:
    cursor = conn.execute(sql, params)
    try:
        return Result(cursor.rowcount, cursor.lastrowid)
    finally:
        cursor.close()


def _run_many(conn: sqlite3.Connection, sql: str, rows: list[Params]) -> Result:
    cursor = conn.executemany(sql, rows)
    try:
        return Result(cursor.rowcount, cursor.lastrowid)
    finally:
        cursor.close()


def _fetch_one(conn: sqlite3.Connection, sql: str, params: Params) -> sqlite3.Row | None:
    cursor = conn.execute(sql, params)
    try:
        row: sqlite3.Row | None = cursor.fetchone()
        return row
    finally:
        cursor.close()


def _fetch_all(conn: sqlite3.Connection, sql: str, params: Params) -> list[sqlite3.Row]:
    cursor = conn.execute(sql, params)
    try:
        return cursor.fetchall()
    finally:
        cursor.close()


def _begin_then(conn: sqlite3.Connection, fn: Callable[..., Any], *args: Any) -> Any:
    """Open the write transaction and run its first statement: one trip, not two."""
    conn.execute("BEGIN IMMEDIATE")
    return fn(conn, *args)


_INSERT_OUTBOX = "INSERT INTO chassis_outbox (event_id, type, body, created_at) VALUES (?, ?, ?, ?)"


def _commit(conn: sqlite3.Connection, begun: bool, outbox: list[Params]) -> None:
    """Write the outbox rows and commit, beginning first if no statement did: one trip."""
    if not begun:
        conn.execute("BEGIN IMMEDIATE")
    if outbox:
        conn.executemany(_INSERT_OUTBOX, outbox).close()
    conn.execute("COMMIT")


def _mark_and_count(conn: sqlite3.Connection, sent_at: float, first: int, last: int) -> int:
    """Mark sent the pending rows ``first..last``; how many rows are still pending."""
    conn.execute(
        "UPDATE chassis_outbox SET sent_at = ? WHERE sent_at IS NULL AND seq BETWEEN ? AND ?",
        (sent_at, first, last),
    ).close()
    row = _fetch_one(conn, "SELECT count(*) FROM chassis_outbox WHERE sent_at IS NULL", ())
    return int(row[0]) if row is not None else 0


async def _in_thread(conn: aiosqlite.Connection, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(sqlite3_connection, *args)`` on ``conn``'s thread: one trip there and back.

    aiosqlite's public calls cost a trip each (execute, fetch, close: three for one
    query); each trip wakes its thread and then the event loop, which is most of the
    cost of a small query.
    """
    run: Callable[..., Awaitable[Any]] = conn._execute  # aiosqlite's queue to its thread
    return await run(lambda: fn(conn._conn, *args))


class Transaction:
    """One write transaction. Get it from :meth:`Database.transaction`.

    ``BEGIN IMMEDIATE`` goes with the first statement and ``COMMIT`` with the outbox
    rows, so a transaction of one statement costs two trips to the connection's thread
    (a trip, not the statement, is most of the cost of a small query).
    """

    __slots__ = ("_begun", "_conn", "_db", "_outbox")

    def __init__(self, db: Database, conn: aiosqlite.Connection) -> None:
        self._db = db
        self._conn = conn
        self._outbox: list[Event] = []
        self._begun = False

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._begun:
            return await _in_thread(self._conn, fn, *args)
        self._begun = True  # even if the statement fails after BEGIN: roll back then
        return await _in_thread(self._conn, _begin_then, fn, *args)

    async def execute(self, sql: str, params: Params = ()) -> Result:
        """Run one statement."""
        result: Result = await self._run(_run_one, sql, params)
        return result

    async def executemany(self, sql: str, rows: Iterable[Params]) -> Result:
        """Run one statement once per parameter set."""
        result: Result = await self._run(_run_many, sql, list(rows))
        return result

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        """The first row of a query, or None; sees this transaction's own writes."""
        row: sqlite3.Row | None = await self._run(_fetch_one, sql, params)
        return row

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Every row of a query; sees this transaction's own writes."""
        rows: list[sqlite3.Row] = await self._run(_fetch_all, sql, params)
        return rows

    def publish(
        self,
        type: str,
        data: Mapping[str, Any],
        *,
        key: str | None = None,
        schema_version: int = 1,
    ) -> Event:
        """Publish an event if, and only if, this transaction commits (the outbox).

        The event is checked and built now (so bad data fails here, inside the
        transaction) and written to the outbox table when the transaction commits.
        The trace context of the current span travels with it.

        Raises:
            InvalidEvent: a bad type, or data that is not a JSON object.
            LifecycleError: the database has no event source (no service name).
        """
        from .tracing import inject_headers

        source = self._db.source
        if source is None:
            raise LifecycleError(
                "this Database publishes for no service: build it with service.database() "
                "or pass source='<service name>'"
            )
        context: dict[str, str] = inject_headers({})
        event = new_event(
            type,
            data,
            source=source,
            key=key,
            schema_version=schema_version,
            traceparent=context.get("traceparent"),
            tracestate=context.get("tracestate"),
        )
        self._outbox.append(event)
        return event

    async def _commit(self) -> int:
        """Write the outbox and commit (nothing to do if nothing was run or published)."""
        if not self._begun and not self._outbox:
            return 0
        now = time.time()
        rows: list[Params] = [(e.id, e.type, encode(e)[0], now) for e in self._outbox]
        begun, self._begun = self._begun, True
        await _in_thread(self._conn, _commit, begun, rows)
        self._begun = False
        return len(rows)

    async def _rollback(self) -> None:
        if self._begun:
            self._begun = False
            await _in_thread(self._conn, _run_one, "ROLLBACK", ())


class Database:
    """A service's SQLite database: transactions, reads, outbox relay and inbox.

    Args:
        path: the database file (``str`` or ``Path``), or ``":memory:"``; none means
            ``CHASSIS_DATABASE__PATH``, or ``<service name>.db``.
        schema: SQL run at every open with ``executescript``; make it idempotent
            (``CREATE TABLE IF NOT EXISTS``).
        source: the service name stamped on events published through the outbox.
        publisher: where the relay publishes outbox rows (a
            :meth:`chassis.events.Events.publish_event`); none disables the relay.
        settings: database settings; when omitted, the service's (or the defaults).
        events_settings: the relay's poll interval and batch size come from here.

    With a :class:`~chassis.Service`, use ``service.database(...)``: it installs the
    database (opened at startup, closed at shutdown, a ``database`` readiness check)
    and connects its outbox to ``service.events``. Without one, ``await db.open()``
    and ``await db.aclose()``, or ``async with db:``.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        schema: str = "",
        source: str | None = None,
        publisher: Publisher | None = None,
        settings: DatabaseSettings | None = None,
        events_settings: EventsSettings | None = None,
    ) -> None:
        self._path = path
        self.schema = schema
        self.source = source
        self.publisher = publisher
        self._explicit_settings = settings
        self.settings = settings or DatabaseSettings()
        self.events_settings = events_settings or EventsSettings()
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._relay_task: asyncio.Task[None] | None = None
        self._relay_go = asyncio.Event()
        self._closed = False
        self.outbox_backlog = 0
        """Outbox rows not yet published, as last counted (exported as a gauge)."""
        self.relay_failures = 0
        """Failed publish attempts of the relay since the database opened."""

    def __repr__(self) -> str:
        state = "open" if self._writer is not None else "closed"
        return f"<Database {str(self.path)!r} {state}>"

    @property
    def path(self) -> str:
        """The database file (``:memory:`` for an in-memory database)."""
        if self._path is not None:
            return str(self._path)
        if self.settings.path is not None:
            return self.settings.path
        return f"{self.source or 'service'}.db"

    @property
    def in_memory(self) -> bool:
        """Whether the data lives in memory only."""
        return self.path == ":memory:"

    # -- lifecycle ------------------------------------------------------------------
    def configure(self, settings: ChassisSettings) -> None:
        """Adopt a service's database and events settings unless explicit ones were given."""
        if self._explicit_settings is None:
            self.settings = settings.database
        self.events_settings = settings.events

    def setup(self, app: web.Application) -> None:
        """Add one cleanup context: open at startup, close at shutdown."""
        app[DATABASE_KEY] = self
        app.cleanup_ctx.append(self._lifespan)

    async def _lifespan(self, app: web.Application) -> AsyncIterator[None]:
        await self.open(start_relay=False)
        try:
            yield
        finally:
            await self.aclose()

    async def __aenter__(self) -> Database:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self, *, start_relay: bool = True) -> None:
        """Open the connections, create the tables, start the relay.

        ``start_relay=False`` opens with the relay held until :meth:`start_relay`
        (a service starts it once its consumers are bound).

        Raises:
            LifecycleError: the database is open or was closed.
        """
        import aiosqlite

        if self._writer is not None or self._closed:
            raise LifecycleError(f"{self!r} cannot be opened again")
        path = self.path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        timeout = self.settings.busy_timeout_seconds
        writer = await self._connect(aiosqlite, path, timeout)
        try:
            if not self.in_memory:
                await writer.execute("PRAGMA journal_mode=WAL")
                await writer.execute("PRAGMA synchronous=NORMAL")
            await writer.executescript(CHASSIS_SCHEMA)
            if self.schema:
                await writer.executescript(self.schema)
            reader = writer
            if not self.in_memory:
                reader = await self._connect(aiosqlite, path, timeout)
        except BaseException:
            await writer.close()
            raise
        self._writer, self._reader = writer, reader
        await self._count_pending()
        if self.publisher is not None:
            loop = asyncio.get_running_loop()
            self._relay_task = loop.create_task(self._relay(), name=f"chassis-outbox-{path}")
            if start_relay:
                self.start_relay()
        log.debug("database %s open", path, extra={"event": "database_open", "path": path})

    @staticmethod
    async def _connect(module: Any, path: str, timeout: float) -> aiosqlite.Connection:
        conn: aiosqlite.Connection = await module.connect(
            path, timeout=timeout, isolation_level=None
        )
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def start_relay(self) -> None:
        """Let the outbox relay run (it waits for this when opened with ``start_relay=False``)."""
        self._relay_go.set()
        self._wake.set()

    async def aclose(self) -> None:
        """Stop the relay (after one last round, if it can publish) and close; idempotent."""
        self._closed = True
        task, self._relay_task = self._relay_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self._relay_go.is_set():
                # Send what requests committed while the service drained, if the
                # broker takes it now; what it does not take waits for the next start.
                try:
                    async with _compat.timeout(self.events_settings.stop_timeout_seconds):
                        await self.relay_once()
                except Exception:
                    log.warning(
                        "outbox keeps %d unsent event(s) for the next start",
                        self.outbox_backlog,
                        extra={"event": "outbox_pending", "backlog": self.outbox_backlog},
                    )
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None
        async with self._lock:
            if reader is not None and reader is not writer:
                await reader.close()
            if writer is not None:
                await writer.close()

    async def check(self) -> bool:
        """Readiness: the database answers a trivial query."""
        row = await self.fetchone("SELECT 1")
        return row is not None

    # -- access ---------------------------------------------------------------------
    def _conn(self, which: str) -> aiosqlite.Connection:
        conn = self._writer if which == "writer" else self._reader
        if conn is None:
            raise LifecycleError(f"{self!r} is not open: it opens when the service starts")
        return conn

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A write transaction: committed on exit, rolled back on an exception.

        Events published with :meth:`Transaction.publish` are written to the outbox
        in the same transaction. Transactions run one at a time; a transaction
        cannot be nested in another one of the same database.

        Raises:
            LifecycleError: the database is not open, or this task is already
                inside one of its transactions.
        """
        if _in_transaction.get() is self:
            raise LifecycleError("transactions of one database cannot be nested")
        async with self._lock:
            conn = self._conn("writer")
            token = _in_transaction.set(self)
            try:
                tx = Transaction(self, conn)
                try:
                    yield tx
                    published = await tx._commit()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await tx._rollback()
                    raise
                if published:
                    # Counted under the lock, so the relay's recount cannot miss or
                    # double-count these rows.
                    self.outbox_backlog += published
                    self._wake.set()
            finally:
                _in_transaction.reset(token)

    async def execute(self, sql: str, params: Params = ()) -> Result:
        """Run one statement in a transaction of its own."""
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        """The first row of a query over committed data, or None."""
        async with self._reading() as conn:
            row: sqlite3.Row | None = await _in_thread(conn, _fetch_one, sql, params)
            return row

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Every row of a query over committed data."""
        async with self._reading() as conn:
            # One trip to the connection's thread, not three (execute, fetch, close).
            return list(await conn.execute_fetchall(sql, params))

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[aiosqlite.Connection]:
        conn = self._conn("reader")
        if conn is not self._writer:
            yield conn
            return
        # In memory there is one connection: reads wait for the writer.
        if _in_transaction.get() is self:
            raise LifecycleError(
                "inside a transaction of an in-memory database, read with tx.fetchone/fetchall"
            )
        async with self._lock:
            yield conn

    # -- inbox ----------------------------------------------------------------------
    async def seen(self, tx: Transaction, handler: str, event: Event) -> bool:
        """Record that ``handler`` applies ``event`` in ``tx``; True if it already had."""
        result = await tx.execute(
            "INSERT OR IGNORE INTO chassis_inbox (handler, event_id, source, type, processed_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (handler, event.id, event.source, event.type, time.time()),
        )
        return result.rowcount == 0

    # -- outbox relay -----------------------------------------------------------------
    async def _count_pending(self) -> int:
        # On the writer, under the lock: a commit cannot slip between the count and its use.
        async with self._lock:
            conn = self._conn("writer")
            row = await _in_thread(
                conn, _fetch_one, "SELECT count(*) FROM chassis_outbox WHERE sent_at IS NULL", ()
            )
            self.outbox_backlog = int(row[0]) if row is not None else 0
        return self.outbox_backlog

    async def pending_events(self) -> list[Event]:
        """The outbox events not yet published, oldest first."""
        rows = await self.fetchall(
            "SELECT body FROM chassis_outbox WHERE sent_at IS NULL ORDER BY seq"
        )
        return [decode(bytes(row["body"])) for row in rows]

    async def relay_once(self) -> int:
        """Publish pending outbox rows in order until none is left; return how many.

        Raises:
            Exception: what the publisher raised, after marking what was sent.
        """
        publisher = self.publisher
        if publisher is None:
            return 0
        sent = 0
        batch = self.events_settings.outbox_batch_size
        while True:
            rows = await self.fetchall(
                "SELECT seq, body FROM chassis_outbox WHERE sent_at IS NULL ORDER BY seq LIMIT ?",
                (batch,),
            )
            if not rows:
                break
            done: list[int] = []
            try:
                for row in rows:
                    try:
                        event = decode(bytes(row["body"]))
                    except Exception as exc:  # written by us; only a foreign writer gets here
                        log.error("outbox row %s is not an event (%s); skipped", row["seq"], exc)
                        done.append(int(row["seq"]))
                        continue
                    await publisher(event)
                    done.append(int(row["seq"]))
                    sent += 1
            finally:
                # What was published is marked even when a later row fails: one
                # statement for the batch, not one per row, in the trip that recounts
                # the backlog (rows committed meanwhile, or by another process).
                await self._mark_sent(done)
            if not self.outbox_backlog:
                break
        return sent

    async def _mark_sent(self, seqs: Sequence[int]) -> None:
        """Mark sent the rows ``seqs``: the first rows, in order, of the pending ones."""
        if not seqs:
            return
        async with self._lock:
            conn = self._conn("writer")
            # Pending rows are taken in ``seq`` order and new rows get higher ``seq``s,
            # so no pending row lies between two of ``seqs`` that is not one of them.
            self.outbox_backlog = await _in_thread(
                conn, _mark_and_count, time.time(), seqs[0], seqs[-1]
            )

    async def _prune(self) -> None:
        async with self._lock:
            conn = self._conn("writer")
            await conn.execute(
                "DELETE FROM chassis_outbox WHERE sent_at IS NOT NULL AND sent_at < ?",
                (time.time() - _SENT_RETENTION_SECONDS,),
            )
            retention = self.settings.inbox_retention_seconds
            await conn.execute(
                "DELETE FROM chassis_inbox WHERE processed_at < ?", (time.time() - retention,)
            )

    async def _relay(self) -> None:
        await self._relay_go.wait()
        failures = 0
        last_prune = 0.0
        while not self._closed:  # the flag backs up the cancellation that stops the loop
            self._wake.clear()
            try:
                await self.relay_once()
                failures = 0
            except Exception as exc:
                failures += 1
                self.relay_failures += 1
                cap = self.events_settings.reconnect_max_seconds
                delay = random.uniform(0, min(cap, _RELAY_BACKOFF_INITIAL_SECONDS * 2**failures))
                log.warning(
                    "outbox relay could not publish (%s: %s); retrying in %.2gs",
                    type(exc).__name__,
                    exc,
                    delay,
                    extra={"event": "outbox_relay_failed", "backlog": self.outbox_backlog},
                )
                await asyncio.sleep(delay)
                continue
            if time.monotonic() - last_prune > _SENT_RETENTION_SECONDS / 4:
                last_prune = time.monotonic()
                try:
                    await self._prune()
                except Exception:
                    log.exception("outbox pruning failed")
            # Not asyncio.wait_for: before Python 3.12 it can swallow the cancellation
            # that stops the relay when the wake-up comes at the same moment.
            with contextlib.suppress(TimeoutError):
                async with _compat.timeout(self.events_settings.outbox_poll_interval_seconds):
                    await self._wake.wait()


DATABASE_KEY = web.AppKey("chassis.database", Database)
"""The service's :class:`Database`: ``request.app[DATABASE_KEY]``."""
