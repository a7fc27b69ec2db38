"""A real Mosquitto broker for integration tests, and an MQTT subscriber that collects messages.

    with Mosquitto(tmp_path / "broker") as broker:      # 127.0.0.1, a free port
        broker.stop(); broker.start()                    # same port: outages and restarts
        broker.pause(); broker.resume()                  # SIGSTOP/SIGCONT: no PUBACKs meanwhile

    async with Subscriber(broker.host, broker.port, "edgeveil/#") as sub:
        await sub.wait_for(lambda got: len(got) >= 3)
    # leaving the block fails the test if a message broke the MQTT contract (below)

The `mosquitto` fixture below gives a started broker for one test; a test module or conftest
may import it (`from tests.mosquitto import mosquitto`). Every process started here is killed
when its test ends, failed or not (and at interpreter exit, as a last resort).

Every message a Subscriber receives is held to the MQTT interface's contract, the AsyncAPI
document docs/mqtt/asyncapi.yaml (tests/mqtt_contract.py): a message on a topic of no channel,
or whose payload its channel's schema does not accept, fails the test when the subscriber's
block ends (after the test's own checks, so the gateway's timing is not disturbed). Tests that
publish messages of their own making rather than the gateway's pass `contract=False`.

Mosquitto missing is a failure, never a skip: scripts/test installs it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt
import cbor2
import pytest

from gateway import senml

from .mqtt_contract import contract as mqtt_contract
from .waiting import until_sync

HOST = "127.0.0.1"
# a topic level for markers a test publishes itself (to know the broker sent all before them)
TEST_MARKER = "test-marker"
MISSING = "install mosquitto (scripts/test does it)"
# Debian puts the broker in /usr/sbin, which is not on every user's PATH.
_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])

_live: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        with contextlib.suppress(OSError):
            proc.kill()


def mosquitto_binary() -> str:
    path = shutil.which("mosquitto", path=_SEARCH)
    if path is None:
        pytest.fail(f"mosquitto is not installed: {MISSING}", pytrace=False)
    return path


def mosquitto_passwd(password_file: Path, username: str, password: str) -> None:
    """Mosquitto 2 reads hashed passwords only; its own tool writes them."""
    tool = shutil.which("mosquitto_passwd", path=_SEARCH)
    if tool is None:
        pytest.fail(f"mosquitto_passwd is not installed: {MISSING}", pytrace=False)
    flags = ["-b", "-c"] if not password_file.exists() else ["-b"]
    subprocess.run(
        [tool, *flags, str(password_file), username, password],
        check=True,
        capture_output=True,
        timeout=10,
    )


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class TlsFiles:
    """A listener's certificate: PEM files of the CA, the server's chain and its key."""

    ca: Path
    cert: Path
    key: Path


class Mosquitto:
    """One mosquitto process on 127.0.0.1 with a generated configuration.

    `tls` makes the listener TLS-only; `password_file` (from mosquitto_passwd) turns anonymous
    access off; `persistence` keeps sessions, queued messages and retained messages across a
    stop()/start() (in `workdir`), as a production broker would.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        tls: TlsFiles | None = None,
        password_file: Path | None = None,
        persistence: bool = False,
        extra: str = "",
    ) -> None:
        self.binary = mosquitto_binary()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = port or free_port()
        self.tls = tls
        self.config_file = workdir / "mosquitto.conf"
        self.log_file = workdir / "mosquitto.log"
        lines = [
            f"listener {self.port} {HOST}",
            f"allow_anonymous {'false' if password_file else 'true'}",
            f"persistence {'true' if persistence else 'false'}",
            "user root",  # when run as root, do not drop to the 'mosquitto' user (tmp files)
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if persistence:
            lines.append(f"persistence_location {workdir}/")
        if password_file is not None:
            lines.append(f"password_file {password_file}")
        if tls is not None:
            lines += [f"cafile {tls.ca}", f"certfile {tls.cert}", f"keyfile {tls.key}"]
        if extra:
            lines.append(extra)
        self.config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        # a port we chose may be taken between free_port() and the broker's bind: then choose
        # again (once the broker has run, the port stays: restarts keep their clients' port)
        self._may_move = port is None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    # -- process control (blocking; use the a* forms inside a running event loop) ----------------

    def start(self, timeout: float = 5.0) -> None:
        if self.running:
            return
        self._log = self.log_file.open("ab")
        since = self._log.tell()  # this start's lines: the log keeps the earlier ones
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_file)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        _live.add(self._proc)
        proc = self._proc

        def listening_or_ended() -> bool:
            if proc.poll() is not None:
                return True  # ended: what it logged says why (below)
            # its own "running" line first: another process may listen on the port
            if " running" not in self.log()[since:]:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        try:
            until_sync(listening_or_ended, f"mosquitto listens on {self.port}", timeout)
        except AssertionError:
            self.kill()
            pytest.fail(f"mosquitto did not listen within {timeout} s:\n{self.log()}")
        if proc.poll() is not None:
            self._reap()
            if self._may_move and "Address already in use" in self.log()[since:]:
                self._move()
                self.start(timeout)
                return
            pytest.fail(f"mosquitto exited at start:\n{self.log()}", pytrace=False)
        self._may_move = False

    def _move(self) -> None:
        """Another process took the port we chose: listen on a new one."""
        old = self.port
        self.port = free_port()
        text = self.config_file.read_text(encoding="utf-8")
        self.config_file.write_text(
            text.replace(f"listener {old} {HOST}", f"listener {self.port} {HOST}"),
            encoding="utf-8",
        )

    def stop(self, timeout: float = 5.0) -> None:
        """A graceful stop (SIGTERM): clients see their connection closed."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGCONT)  # a paused broker cannot handle SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reap()

    def kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._reap()

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts bytes, but the broker answers nothing."""
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGCONT)

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _reap(self) -> None:
        if self._proc is not None:
            _live.discard(self._proc)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A started broker for one test, killed when the test ends."""
    with Mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


# -- a subscriber ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int


def split_records(message: Received) -> list[Received]:
    """A SenML message as its records, each as a message of its own, the way a consumer reads
    the gateway's packs (senml.join: each record starts with an entry that carries its "mid";
    docs/mqtt/asyncapi.yaml). A message with one record, and any other message, comes back as
    it is. Split records are encoded again as the gateway encodes one record (compact JSON,
    or deterministic CBOR), so they are the bytes the gateway gives a record on its own."""
    payload = message.payload
    try:
        if payload[:1] == b"[":
            entries = json.loads(payload)
        elif payload and payload[0] >> 5 == 4:
            entries = cbor2.loads(payload)
        else:
            return [message]
    except ValueError:
        return [message]
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        return [message]
    if "mid" not in entries[0]:
        return [message]
    records = senml.records(entries)
    if len(records) < 2:
        return [message]
    as_json = payload[:1] == b"["
    return [dataclasses.replace(message, payload=_encoded(r, as_json)) for r in records]


def _encoded(record: list[Any], as_json: bool) -> bytes:
    if as_json:
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
    return bytes(cbor2.dumps(record, canonical=True))


class Subscriber:
    """Collects every message on `topic_filter` in `received`, in arrival order.

    It reconnects by itself when the broker goes away. With `session` (a client id), the
    session is persistent (clean_session=False) and the subscription QoS 1, so a broker with
    persistence queues what arrives while the subscriber is away.

    With `contract` (the default) every message received is checked against the MQTT
    interface's AsyncAPI document when the `async with` block ends without an error; a message
    that breaks it fails the test there (see the module docstring).
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic_filter: str,
        *,
        session: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        contract: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.topic_filter = topic_filter
        self.session = session
        self.username = username
        self.password = password
        self.tls_context = tls_context
        self.contract = contract
        self.messages: list[Received] = []  # as the broker delivered them
        self.received: list[Received] = []  # the same, each SenML record on its own
        self.connections = 0
        self._changed = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                client = aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=self.session,
                    clean_session=self.session is None,
                    username=self.username,
                    password=self.password,
                    tls_context=self.tls_context,
                    timeout=5,
                )
                async with client:
                    await client.subscribe(self.topic_filter, qos=1)
                    self.connections += 1
                    self._subscribed.set()
                    async for m in client.messages:
                        payload = (
                            m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                        )
                        raw = Received(m.topic.value, payload, m.retain, m.qos)
                        self.messages.append(raw)
                        self.received.extend(split_records(raw))
                        self._changed.set()
            except aiomqtt.MqttError:
                self._subscribed.clear()
                await asyncio.sleep(0.05)

    async def wait_for(
        self, condition: Callable[[list[Received]], bool], timeout: float = 5.0
    ) -> list[Received]:
        """Wait until condition(received) holds; returns `received`."""
        try:
            async with asyncio.timeout(timeout):
                while not condition(self.received):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            summary = [(r.topic, r.payload[:60], r.retain) for r in self.received[-10:]]
            raise AssertionError(
                f"{self.topic_filter}: condition not met within {timeout} s; "
                f"{len(self.received)} received, the last: {summary}"
            ) from None
        return self.received

    def payloads(self, topic: str) -> list[bytes]:
        return [r.payload for r in self.received if r.topic == topic]

    def contract_problems(self) -> list[str]:
        """What breaks the MQTT contract among the messages received (one line each); a
        test's own markers (a TEST_MARKER topic level) are not the gateway's."""
        check = mqtt_contract().check
        problems = (
            check(r.topic, r.payload, r.qos)
            for r in self.messages
            if f"/{TEST_MARKER}/" not in r.topic
        )
        return [p for p in problems if p is not None]

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=f"subscriber {self.topic_filter}")
        try:
            async with asyncio.timeout(5):
                await self._subscribed.wait()
        except TimeoutError:
            await self.__aexit__(None, None, None)
            raise AssertionError(f"could not subscribe at {self.host}:{self.port}") from None
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.contract and exc_type is None:
            problems = self.contract_problems()
            if problems:
                shown = "\n  ".join(problems[:10])
                raise AssertionError(
                    f"{len(problems)} of {len(self.messages)} messages on {self.topic_filter} "
                    f"break the MQTT contract (docs/mqtt/asyncapi.yaml):\n  {shown}"
                )

    async def wait_subscribed(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            await self._subscribed.wait()


@contextlib.asynccontextmanager
async def subscribed(
    broker: Mosquitto, topic_filter: str, **kwargs: Any
) -> AsyncIterator[Subscriber]:
    async with Subscriber(broker.host, broker.port, topic_filter, **kwargs) as sub:
        yield sub
