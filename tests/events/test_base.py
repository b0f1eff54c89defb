"""The envelope: building, encoding and decoding events."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from chassis.events import Backend, Delivery, Event, InvalidEvent, decode, encode
from chassis.events.base import check_name, new_event
from chassis.events.memory import InMemoryBroker


def test_new_event_has_an_id_utc_time_and_a_json_copy_of_the_data() -> None:
    data = {"amount": 5, "tags": ("a", "b")}
    event = new_event("order_created", data, source="orders", key="o1")
    assert len(event.id) == 36
    assert event.time.tzinfo is dt.timezone.utc
    assert event.data == {"amount": 5, "tags": ["a", "b"]}
    assert event.schema_version == 1 and event.attempt == 1 and not event.redelivered


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"when": dt.datetime(2024, 1, 1)}, "not JSON-serialisable"),
        ({"x": float("nan")}, "not JSON-serialisable"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_data_that_is_not_a_json_object_is_refused_clearly(data: object, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message) as caught:
        new_event("order_created", data, source="orders")  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    assert "order_created" in str(caught.value)


@pytest.mark.parametrize("name", ["", "1abc", "a.b", "a b", "x" * 129, "*"])
def test_bad_type_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidEvent, match="invalid event type"):
        check_name("type", name)


def test_encode_then_decode_round_trips_with_trace_context_in_headers() -> None:
    event = new_event(
        "order_created",
        {"id": 1, "name": "café"},
        source="orders",
        key="o1",
        schema_version=2,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        tracestate="vendor=1",
    )
    body, headers = encode(event)
    envelope = json.loads(body)
    assert set(envelope) == {
        "id", "type", "source", "time", "schema_version", "key",
        "traceparent", "tracestate", "data",
    }  # fmt: skip
    assert envelope["time"].endswith("Z")
    assert headers == {
        "event-id": event.id,
        "event-type": "order_created",
        "event-source": "orders",
        "traceparent": event.traceparent,
        "tracestate": "vendor=1",
    }
    decoded = decode(body, headers, attempt=3, redelivered=True)
    assert decoded == event
    assert (decoded.attempt, decoded.redelivered) == (3, True)


def test_trace_context_in_headers_wins_over_the_envelope() -> None:
    event = new_event("t", {}, source="s", traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    body, _ = encode(event)
    other = "00-" + "3" * 32 + "-" + "4" * 16 + "-01"
    assert decode(body, {"traceparent": other.encode()}).traceparent == other


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"not json", "not JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"id": "x"}', "lacks type, source, time, data"),
        (
            b'{"id": "x", "type": "t", "source": "s", "time": "yesterday", "data": {}}',
            "not an ISO 8601 time",
        ),
        (
            b'{"id": "x", "type": "t", "source": "s", "time": "2024-01-01T00:00:00", "data": {}}',
            "no timezone",
        ),
        (
            b'{"id": "x", "type": "t", "source": "s", "time": "2024-01-01T00:00:00Z", "data": 3}',
            "data must be a JSON object",
        ),
        (
            b'{"id": 1, "type": "t", "source": "s", "time": "2024-01-01T00:00:00Z", "data": {}}',
            "id must be",
        ),
        (
            b'{"id": "x", "type": "t", "source": "s", "time": "2024-01-01T00:00:00Z", "data": {},'
            b' "schema_version": 0}',
            "schema_version",
        ),
    ],
)
def test_decoding_a_bad_envelope_says_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        decode(body)


def test_event_equality_ignores_delivery_info() -> None:
    event = Event(id="1", type="t", source="s", time=dt.datetime.now(dt.timezone.utc), data={})
    assert event == Event(**{**_fields(event), "attempt": 2, "redelivered": True})


def test_the_memory_back_end_implements_the_protocols() -> None:
    backend = InMemoryBroker().connect()
    assert isinstance(backend, Backend)
    assert not isinstance(object(), Delivery)


def _fields(event: Event) -> dict[str, object]:
    return {name: getattr(event, name) for name in Event.__dataclass_fields__}
