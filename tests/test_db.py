"""chassis.db: transactions, reads, the outbox relay and its crash safety, the inbox."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import pytest

from chassis import Database, Event, InMemoryBroker, InvalidEvent, LifecycleError, Service
from chassis.events import Backend, DeadLetter, PublishError
from chassis.events.base import Binding, DeliveryHandler

from .conftest import quick_settings
from .events.conftest import eventually

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id      TEXT PRIMARY KEY,
    balance INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    id         INTEGER PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id)
);
"""


@pytest.fixture
def broker() -> InMemoryBroker:
    return InMemoryBroker()


@pytest.fixture
async def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with Database(tmp_path / "bank.db", schema=SCHEMA, source="bank") as database:
        yield database


def service_with_db(
    name: str, path: Path | str, broker: InMemoryBroker, **events: object
) -> Service:
    settings = quick_settings(
        events={"retry_initial_seconds": 0.01, "outbox_poll_interval_seconds": 0.1, **events}
    )
    service = Service(name, settings=settings)
    service.events.broker = broker
    service.database(path, schema=SCHEMA)
    return service


# -- transactions and reads ----------------------------------------------------------


async def test_transaction_commits_on_exit_and_rows_read_by_column_name(db: Database) -> None:
    async with db.transaction() as tx:
        result = await tx.execute("INSERT INTO accounts VALUES (?, ?)", ("a", 10))
        assert result.rowcount == 1
        inside = await tx.fetchone("SELECT balance FROM accounts WHERE id = ?", ("a",))
        assert inside is not None and inside["balance"] == 10
    row = await db.fetchone("SELECT * FROM accounts WHERE id = ?", ("a",))
    assert isinstance(row, sqlite3.Row)
    assert row["balance"] == 10
    assert [tuple(r) for r in await db.fetchall("SELECT * FROM accounts")] == [("a", 10)]


async def test_transaction_rolls_back_when_the_block_raises(db: Database) -> None:
    with pytest.raises(RuntimeError, match="declined"):  # noqa: PT012
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO accounts VALUES (?, ?)", ("a", 10))
            raise RuntimeError("declined")
    assert await db.fetchall("SELECT * FROM accounts") == []


async def test_a_failing_first_statement_rolls_back_and_frees_the_writer(db: Database) -> None:
    # BEGIN goes with the first statement: when that statement fails, the transaction
    # it opened is still rolled back.
    with pytest.raises(sqlite3.IntegrityError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO entries VALUES (?, ?)", (1, "no such account"))
    with pytest.raises(sqlite3.IntegrityError):  # noqa: PT012
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO accounts VALUES (?, ?)", ("a", 10))
            await tx.fetchall("SELECT * FROM accounts")
            await tx.execute("INSERT INTO accounts VALUES (?, ?)", ("a", 20))
    async with db.transaction() as tx:
        pass  # runs nothing and publishes nothing: nothing to commit
    async with db.transaction() as tx:
        rows = await tx.fetchall("SELECT * FROM accounts")
        assert rows == []
        await tx.execute("INSERT INTO accounts VALUES (?, ?)", ("b", 5))
    assert [tuple(r) for r in await db.fetchall("SELECT * FROM accounts")] == [("b", 5)]


async def test_reads_outside_a_transaction_see_only_committed_data(db: Database) -> None:
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO accounts VALUES (?, ?)", ("a", 10))
        assert await db.fetchone("SELECT * FROM accounts") is None
    assert await db.fetchone("SELECT * FROM accounts") is not None


async def test_transactions_run_one_at_a_time(db: Database) -> None:
    await db.execute("INSERT INTO accounts VALUES ('a', 0)")

    async def deposit() -> None:
        async with db.transaction() as tx:
            row = await tx.fetchone("SELECT balance FROM accounts WHERE id = 'a'")
            assert row is not None
            await asyncio.sleep(0)  # a lost update would happen here without serialisation
            await tx.execute("UPDATE accounts SET balance = ? WHERE id = 'a'", (row[0] + 1,))

    await asyncio.gather(*(deposit() for _ in range(20)))
    row = await db.fetchone("SELECT balance FROM accounts WHERE id = 'a'")
    assert row is not None and row[0] == 20


async def test_nested_transactions_fail_instead_of_deadlocking(db: Database) -> None:
    async with db.transaction():
        with pytest.raises(LifecycleError, match="nested"):
            async with db.transaction():
                pass


async def test_foreign_keys_are_enforced_and_the_file_is_in_wal_mode(db: Database) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        await db.execute("INSERT INTO entries (account_id) VALUES ('nobody')")
    row = await db.fetchone("PRAGMA journal_mode")
    assert row is not None and row[0] == "wal"


async def test_data_and_idempotent_schema_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "bank.db"
    async with Database(path, schema=SCHEMA) as first:
        await first.execute("INSERT INTO accounts VALUES ('a', 3)")
    async with Database(str(path), schema=SCHEMA) as second:
        row = await second.fetchone("SELECT balance FROM accounts")
    assert row is not None and row[0] == 3


async def test_in_memory_database_reads_with_tx_inside_a_transaction() -> None:
    async with Database(":memory:", schema=SCHEMA) as db:
        assert db.in_memory
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO accounts VALUES ('a', 1)")
            with pytest.raises(LifecycleError, match=r"tx\.fetchone"):
                await db.fetchone("SELECT * FROM accounts")
        assert await db.fetchone("SELECT balance FROM accounts") is not None


async def test_a_closed_or_unopened_database_refuses_use(tmp_path: Path) -> None:
    db = Database(tmp_path / "x.db")
    with pytest.raises(LifecycleError, match="not open"):
        await db.fetchone("SELECT 1")
    await db.open()
    await db.aclose()
    await db.aclose()  # idempotent
    with pytest.raises(LifecycleError, match="cannot be opened again"):
        await db.open()


async def test_path_defaults_to_the_setting_then_the_service_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Database(source="orders").path == "orders.db"
    service = Service("orders", settings=quick_settings(database={"path": str(tmp_path / "o.db")}))
    db = service.database()
    async with service.running(port=0):
        assert db.path == str(tmp_path / "o.db")
    assert (tmp_path / "o.db").exists()


async def test_service_database_is_ready_checked_and_closed_at_shutdown(
    tmp_path: Path, broker: InMemoryBroker
) -> None:
    service = service_with_db("bank", tmp_path / "bank.db", broker)
    with pytest.raises(LifecycleError, match="has a database already"):
        service.database(tmp_path / "other.db")
    async with (
        service.running(port=0) as running,
        aiohttp.ClientSession() as session,
        session.get(running.url + "/health/ready") as response,
    ):
        body = await response.json()
    assert response.status == 200
    assert body["checks"]["database"]["status"] == "pass"
    assert body["checks"]["events"]["status"] == "pass"
    with pytest.raises(LifecycleError):
        await service.events.database.fetchone("SELECT 1")  # type: ignore[union-attr]


# -- the outbox ------------------------------------------------------------------------


async def test_state_change_and_its_event_commit_together(
    tmp_path: Path, broker: InMemoryBroker
) -> None:
    bank = service_with_db("bank", tmp_path / "bank.db", broker)
    audit = Service("audit", settings=quick_settings())
    audit.events.broker = broker
    received: list[Event] = []

    @audit.events.subscribe("bank", "account_opened")
    async def on_opened(event: Event) -> None:
        received.append(event)

    db = bank.events.database
    assert db is not None
    async with audit.running(port=0), bank.running(port=0):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO accounts VALUES ('a', 0)")
            published = tx.publish("account_opened", {"account": "a"}, key="a")
        await bank.events.drained(timeout=20)
        pending = await db.pending_events()

    assert [e.id for e in received] == [published.id]
    assert received[0].key == "a" and received[0].data == {"account": "a"}
    assert pending == []
    value = bank.metrics.registry.get_sample_value("events_outbox_backlog")
    assert value == 0


async def test_a_rolled_back_transaction_publishes_nothing(
    tmp_path: Path, broker: InMemoryBroker
) -> None:
    bank = service_with_db("bank", tmp_path / "bank.db", broker)
    audit = Service("audit", settings=quick_settings())
    audit.events.broker = broker
    received: list[Event] = []
    audit.events.add_handler("bank", "*", _collect(received))
    db = bank.events.database
    assert db is not None
    async with audit.running(port=0), bank.running(port=0):
        with pytest.raises(ValueError, match="insufficient"):  # noqa: PT012
            async with db.transaction() as tx:
                tx.publish("account_opened", {"account": "a"})
                raise ValueError("insufficient funds")
        with pytest.raises(InvalidEvent, match="not JSON-serialisable"):  # noqa: PT012
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO accounts VALUES ('b', 0)")
                tx.publish("account_opened", {"when": object()})
        await bank.events.drained(timeout=20)
        rows = await db.fetchall("SELECT * FROM chassis_outbox")
        accounts = await db.fetchall("SELECT * FROM accounts")
    assert received == [] and rows == [] and accounts == []


async def test_the_relay_publishes_in_commit_order(tmp_path: Path, broker: InMemoryBroker) -> None:
    bank = service_with_db("bank", tmp_path / "bank.db", broker, outbox_batch_size=3)
    audit = Service("audit", settings=quick_settings())
    audit.events.broker = broker
    received: list[Event] = []
    audit.events.add_handler("bank", "deposited", _collect(received))
    db = bank.events.database
    assert db is not None
    async with audit.running(port=0), bank.running(port=0):
        for n in range(10):
            async with db.transaction() as tx:
                tx.publish("deposited", {"n": n})
        await bank.events.drained(timeout=20)
    assert [e.data["n"] for e in received] == list(range(10))


class FlakyBackend:
    """Wraps a back end; the first ``failures`` publishes raise."""

    name = "flaky"

    def __init__(self, inner: Backend, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    async def start(self) -> None:
        await self.inner.start()

    async def publish(self, event: Event) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise PublishError("broker unreachable", event_type=event.type)
        await self.inner.publish(event)

    async def consume(
        self,
        consumer: str,
        bindings: Sequence[Binding],
        on_delivery: DeliveryHandler,
        *,
        prefetch: int,
    ) -> None:
        await self.inner.consume(consumer, bindings, on_delivery, prefetch=prefetch)

    async def stop_consuming(self) -> None:
        await self.inner.stop_consuming()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def healthy(self) -> bool:
        return self.inner.healthy()

    async def dead_letters(self, consumer: str) -> list[DeadLetter]:
        return await self.inner.dead_letters(consumer)


async def test_the_relay_backs_off_on_publish_failures_and_loses_nothing(
    tmp_path: Path, broker: InMemoryBroker
) -> None:
    bank = service_with_db("bank", tmp_path / "bank.db", broker)
    flaky = FlakyBackend(broker.connect(), failures=3)
    bank.events.backend = flaky
    audit = Service("audit", settings=quick_settings())
    audit.events.broker = broker
    received: list[Event] = []
    audit.events.add_handler("bank", "deposited", _collect(received))
    db = bank.events.database
    assert db is not None
    async with audit.running(port=0), bank.running(port=0):
        async with db.transaction() as tx:
            tx.publish("deposited", {"n": 1})
            tx.publish("deposited", {"n": 2})
        await eventually(lambda: len(received) == 2, what="both events")
        failures = bank.metrics.registry.get_sample_value(
            "events_publish_failures_total", {"type": "deposited"}
        )
    assert [e.data["n"] for e in received] == [1, 2]
    assert db.relay_failures == 3
    assert failures == 3


async def test_a_database_without_a_service_relays_to_its_publisher(tmp_path: Path) -> None:
    sent: list[Event] = []

    async def publish(event: Event) -> None:
        sent.append(event)

    async with Database(tmp_path / "x.db", source="jobs", publisher=publish) as db:
        async with db.transaction() as tx:
            event = tx.publish("job_done", {"id": 7})
        await eventually(lambda: bool(sent), what="the relay")
    assert [e.id for e in sent] == [event.id]


async def test_publishing_needs_a_source(tmp_path: Path) -> None:
    async with Database(tmp_path / "x.db") as db, db.transaction() as tx:
        with pytest.raises(LifecycleError, match="source"):
            tx.publish("job_done", {})


# -- the inbox -----------------------------------------------------------------------


async def test_the_inbox_records_each_handler_and_event_once(db: Database) -> None:
    event = Event(
        id="e1", type="t", source="s", time=__import__("datetime").datetime.now(), data={}
    )
    async with db.transaction() as tx:
        assert not await db.seen(tx, "handler-a", event)
        assert await db.seen(tx, "handler-a", event)
        assert not await db.seen(tx, "handler-b", event)


def _collect(into: list[Event]):  # type: ignore[no-untyped-def]
    async def collect(event: Event) -> None:
        into.append(event)

    return collect
