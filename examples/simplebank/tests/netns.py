"""Several hosts on one machine: Linux network namespaces joined by a bridge.

:class:`Network` makes one namespace per host, each with an ``eth0`` holding a private
address (``10.77.0.x/24``), plugged into a bridge that lives in a hub namespace of its
own. Nothing is added to the machine's own namespace: no interface, address or route.
Names are unique per run (``sb<hex>-<role>``); :meth:`Network.delete` kills whatever
still runs inside them and deletes them all, and runs even when the test fails::

    with Network({"infra": 2, "a": 11, "b": 12}) as net:
        argv = net.exec_args("a", sys.executable, "-m", "chassis", "run", ...)
        net.counters("a")        # eth0's (rx_bytes, tx_bytes)

:class:`NamespaceThread` runs an event loop on a thread of the test process placed in
one namespace, so the test's own clients and servers sit on a host of the network too
(a socket belongs to the namespace of the thread that opened it).

Run as a script inside a namespace, ``python netns.py infra ADDRESS`` serves the
Consul stand-in on ``ADDRESS:8500`` and a RabbitMQ broker
(``tests/events/rabbitmq_server.py``) on ``ADDRESS:5672``, prints one JSON line with
their URLs (:func:`infra_urls`) once both answer, and stops both on SIGTERM.

Without ``ip`` or the right to create namespaces (root), :func:`unavailable` skips the
test, or fails it when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, TypeVar

import pytest

__all__ = ["SUBNET", "NamespaceThread", "Network", "infra_urls", "serve_infra", "unavailable"]

SUBNET = "10.77.0"
"""The /24 every host's ``eth0`` is on; it exists only inside the namespaces made here."""
CLONE_NEWNET = 0x40000000
COMMAND_TIMEOUT_SECONDS = 30.0
THREAD_TIMEOUT_SECONDS = 30.0
T = TypeVar("T")


def unavailable(reason: str) -> NoReturn:
    """Skip the test for ``reason``; fail it instead when ``CI`` is set."""
    if os.environ.get("CI"):
        pytest.fail(f"network namespaces unavailable: {reason}")
    pytest.skip(f"network namespaces unavailable: {reason}")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; raise ``RuntimeError`` with its stderr when it fails and ``check``."""
    done = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


class Network:
    """Hosts on one private /24, each in a network namespace, joined by a bridge.

    Args:
        hosts: role -> last octet of the host's address, e.g. ``{"a": 11}`` for
            ``10.77.0.11``.
    """

    def __init__(self, hosts: Mapping[str, int]) -> None:
        self.run_id = secrets.token_hex(3)
        self.hub = f"sb{self.run_id}-hub"
        self.hosts = dict(hosts)
        self.namespaces = {role: f"sb{self.run_id}-{role}" for role in self.hosts}
        self.addresses = {role: f"{SUBNET}.{octet}" for role, octet in self.hosts.items()}
        self._made: list[str] = []

    def __repr__(self) -> str:
        return f"<Network {self.run_id} {self.addresses}>"

    # -- lifecycle ---------------------------------------------------------------------
    def create(self) -> None:
        """Make the hub with its bridge, then each host; :func:`unavailable` if not allowed."""
        if shutil.which("ip") is None:
            unavailable("no `ip` command (Debian package iproute2)")
        try:
            self._add_namespace(self.hub)
        except RuntimeError as exc:  # the first command tells whether we may at all
            self.delete()
            unavailable(f"{exc} (network namespaces need root)")
        try:
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "link", "set", "br0", "up")
            for role in self.hosts:
                self._add_host(role)
        except BaseException:
            self.delete()
            raise

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _add_host(self, role: str) -> None:
        namespace, port = self.namespaces[role], f"to-{role}"
        self._add_namespace(namespace)
        # A cable: one end in the hub (a bridge port), the other the host's eth0.
        _ip("-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0",
            "netns", namespace)  # fmt: skip
        _ip("-n", self.hub, "link", "set", port, "master", "br0", "up")
        _ip("-n", namespace, "addr", "add", f"{self.addresses[role]}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")

    def delete(self) -> None:
        """Kill every process left in the namespaces, then delete them (idempotent)."""
        for name in reversed(self._made):
            self._kill_inside(name)
        for name in reversed(self._made):
            _ip("netns", "del", name, check=False)
        self._made.clear()

    @staticmethod
    def _kill_inside(namespace: str) -> None:
        deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            found = _ip("netns", "pids", namespace, check=False).stdout.split()
            pids = [int(pid) for pid in found if pid.isdigit() and int(pid) != os.getpid()]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def __enter__(self) -> Network:
        self.create()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.delete()

    # -- use ---------------------------------------------------------------------------
    def exec_args(self, role: str, *argv: str) -> list[str]:
        """``argv`` run inside host ``role``: ``ip netns exec <namespace> argv...``."""
        return ["ip", "netns", "exec", self.namespaces[role], *argv]

    def counters(self, role: str) -> tuple[int, int]:
        """Bytes received and sent so far by host ``role``'s ``eth0``."""
        shown = _ip("-j", "-s", "-n", self.namespaces[role], "link", "show", "dev", "eth0")
        stats = json.loads(shown.stdout)[0]["stats64"]
        return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])


def enter_namespace(namespace: str) -> None:
    """Move the calling thread (only it) into network namespace ``namespace``."""
    with open(f"/run/netns/{namespace}", "rb") as handle:
        setns = getattr(os, "setns", None)  # Python 3.12+
        if setns is not None:
            setns(handle.fileno(), CLONE_NEWNET)
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({namespace}): {os.strerror(errno)}")


class NamespaceThread:
    """An event loop on a thread of this process that lives in ``namespace``.

    Everything :meth:`run` awaits opens its sockets there: servers listen on that
    host's addresses, clients connect from it. The thread is never reused for anything
    else, so the namespace cannot leak into the rest of the test process.
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._main, args=(ready,), name=f"netns-{self.namespace}", daemon=True
        )
        self._thread.start()
        if not ready.wait(THREAD_TIMEOUT_SECONDS) or self._failure is not None:
            raise RuntimeError(f"no event loop in {self.namespace}") from self._failure

    def _main(self, ready: threading.Event) -> None:
        try:
            enter_namespace(self.namespace)
            loop = asyncio.new_event_loop()
        except Exception as exc:
            self._failure = exc
            ready.set()
            return
        asyncio.set_event_loop(loop)
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the namespace's loop (cancelling this cancels it there)."""
        assert self._loop is not None, "start() first"
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Stop the loop (cancelling what still runs on it) and join the thread."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(THREAD_TIMEOUT_SECONDS)
        self._loop = self._thread = None

    def __enter__(self) -> NamespaceThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- the infra host: RabbitMQ and the Consul stand-in, run inside its namespace ----------
AMQP_PORT = 5672
CONSUL_PORT = 8500


def infra_urls(address: str) -> dict[str, str]:
    """The URLs :func:`serve_infra` serves on ``address`` (known before it starts)."""
    return {
        "consul": f"http://{address}:{CONSUL_PORT}",
        "amqp": f"amqp://guest:guest@{address}:{AMQP_PORT}/",
    }


def _broker(address: str) -> Any:
    """The test suite's broker on the standard port (the namespace is ours), also
    listening on ``address`` and letting ``guest`` in from there (RabbitMQ admits
    ``guest`` from loopback only by default)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "events"))
    from rabbitmq_server import RabbitMQServer

    class NamespaceBroker(RabbitMQServer):  # type: ignore[misc]
        def _write_files(self) -> None:
            self.port = AMQP_PORT
            super()._write_files()  # also answers on 127.0.0.1: its own readiness check
            with (self.directory / "rabbitmq.conf").open("a") as conf:
                conf.write(f"listeners.tcp.host = {address}:{self.port}\n")
                conf.write("loopback_users.guest = false\n")

    return NamespaceBroker()


async def _serve(address: str) -> None:
    from chassis.testing import ConsulStandIn

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    broker = _broker(address)
    try:
        async with ConsulStandIn(host=address, port=CONSUL_PORT):
            await asyncio.to_thread(broker.start)  # Consul answers meanwhile
            print(json.dumps(infra_urls(address)), flush=True)
            await stop.wait()
    finally:
        await asyncio.to_thread(broker.close)


def serve_infra(address: str) -> None:
    """Serve the Consul stand-in and the broker on ``address`` until SIGTERM; print
    :func:`infra_urls` as one JSON line once both answer."""
    asyncio.run(_serve(address))


if __name__ == "__main__":
    command, address = sys.argv[1:]
    assert command == "infra", f"unknown command {command!r}"
    serve_infra(address)
