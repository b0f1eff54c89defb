"""Events: publish/subscribe between services, at least once, with idempotent consumers.

Every :class:`~chassis.Service` has ``service.events`` (an :class:`Events`)::

    @service.events.subscribe("orders", "order_created")
    async def on_order_created(event: Event) -> None: ...

    await service.events.publish("order_created", {"order_id": oid}, key=oid)

Back ends are interchangeable by configuration (``CHASSIS_EVENTS__BACKEND``):

* ``memory`` (the default): an :class:`InMemoryBroker` in the process, shared by
  the services it hosts; for demos and tests;
* ``rabbitmq`` (needs the ``rabbitmq`` extra): a topic exchange per publishing
  service, a durable queue per consuming service, publisher confirms, retries with
  back-off and a dead-letter queue.

Every back end implements :class:`Backend`; :class:`Event` is the envelope.
"""

from chassis.events.base import Backend, DeadLetter, Delivery, Event, decode, encode
from chassis.events.capability import EVENTS_KEY, Events, Subscription
from chassis.events.memory import InMemoryBackend, InMemoryBroker
from chassis.exceptions import EventError, InvalidEvent, PublishError

__all__ = [
    "Backend",
    "DeadLetter",
    "Delivery",
    "EVENTS_KEY",
    "Event",
    "EventError",
    "Events",
    "InMemoryBackend",
    "InMemoryBroker",
    "InvalidEvent",
    "PublishError",
    "Subscription",
    "decode",
    "encode",
]
