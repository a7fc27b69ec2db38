"""The MQTT uplink against a real Mosquitto (tests/mosquitto.py), and the embedded amqtt broker.

Each test starts its own broker on a free port. The spool is the real gateway.spool.Spool
(SQLite, in the test's temporary directory), recording every delete. The messages and the
metadata published here are the tests' own, not the gateway's, so the subscribers do not hold
them to the MQTT contract (`contract=False`; the gateway's own are, in the end-to-end tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import ssl
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho_client
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.broker import EmbeddedBroker
from gateway.config import MqttConfig
from gateway.errors import ConfigError, StorageError
from gateway.records import OutMessage, Topics
from gateway.spool import Spool
from gateway.uplink import Backoff, Uplink

from .command import async_child_process
from .mosquitto import (
    Mosquitto,
    Received,
    Subscriber,
    TlsFiles,
    mosquitto_passwd,
)
from .mosquitto import subscribed as contract_subscribed
from .waiting import until

ROOT = Path(__file__).resolve().parent.parent
TOPICS = Topics("edgeveil", "test-site", "gw-1")
METADATA = {"site": "test-site", "gateway_id": "gw-1", "version": "0.1.0", "nodes": 3}
DATA = f"{TOPICS.base}/node/#"


class RecordingSpool(Spool):
    """The real spool (SQLite), recording the seqs of every delete() call in call order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deletes: list[list[int]] = []

    def delete(self, seqs: Iterable[int]) -> None:
        seqs = list(seqs)
        super().delete(seqs)
        self.deletes.append(seqs)


def open_spool(directory: Path) -> RecordingSpool:
    spool = RecordingSpool.open(directory / "spool.db", 1_000_000, 3600, "drop_oldest")
    assert isinstance(spool, RecordingSpool)
    return spool


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[RecordingSpool]:
    with open_spool(tmp_path) as s:
        yield s


def subscribed(
    broker: Mosquitto, topic_filter: str, **kwargs: Any
) -> contextlib.AbstractAsyncContextManager[Subscriber]:
    """A subscriber for the tests' own messages (module docstring): no contract check."""
    return contract_subscribed(broker, topic_filter, contract=False, **kwargs)


def messages(first: int, count: int, nodes: int = 3) -> list[OutMessage]:
    out = []
    for i in range(first, first + count):
        node = 100 + i % nodes
        msg_id = f"gw-1:{node}:{i}:0"
        payload = json.dumps(
            [
                {
                    "bn": f"urn:dev:edgeveil:test-site:{node}:",
                    "mid": msg_id,
                    "n": "temperature",
                    "u": "Cel",
                    "v": i,
                }
            ],
            separators=(",", ":"),  # as the gateway writes them (split records compare equal)
        ).encode()
        out.append(OutMessage(msg_id, TOPICS.node(node, "readings"), payload))
    return out


def mid(r: Received) -> str:
    return str(json.loads(r.payload)[0]["mid"])


def first_copies(received: list[Received]) -> list[Received]:
    """What a consumer keeps when it drops duplicates by message id."""
    seen: set[str] = set()
    out = []
    for r in received:
        if mid(r) not in seen:
            seen.add(mid(r))
            out.append(r)
    return out


def by_topic(items: Sequence[OutMessage | Received]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for m in items:
        out.setdefault(m.topic, []).append(m.payload)
    return out


def config(broker: Mosquitto | EmbeddedBroker, **overrides: object) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, keepalive_s=5, **overrides)  # type: ignore[arg-type]


def uplink_for(broker: Mosquitto | EmbeddedBroker, spool: Spool, **kwargs: object) -> Uplink:
    settings: dict[str, object] = {
        "backoff_initial_s": 0.1,
        "backoff_max_s": 0.5,
        "poll_interval_s": 0.2,
        "delete_after_s": 0.2,
    }
    settings.update(kwargs)
    cfg = settings.pop("config", None) or config(broker)
    return Uplink(cfg, spool, TOPICS, METADATA, **settings)  # type: ignore[arg-type]


def handed_to_mqtt(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The topics of the PUBLISH packets MQTT clients hand to paho from now on (its publish():
    the packet goes out on the socket, or waits in paho's queue for the socket)."""
    topics: list[str] = []
    real = paho_client.Client.publish

    def publish(self: paho_client.Client, topic: str, *args: Any, **kwargs: Any) -> Any:
        info = real(self, topic, *args, **kwargs)
        topics.append(topic)
        return info

    monkeypatch.setattr(paho_client.Client, "publish", publish)
    return topics


def failed_attempts(caplog: pytest.LogCaptureFixture) -> int:
    """Connection attempts the uplink logged as failed (a warning, then info or debug lines:
    caplog must take edgeveil.uplink at DEBUG)."""
    return sum(
        r.name == "edgeveil.uplink" and r.getMessage().startswith("MQTT broker ")
        for r in caplog.records
    )


def last_payload(topic: str) -> Callable[[list[Received]], bytes | None]:
    def get(received: list[Received]) -> bytes | None:
        mine = [r.payload for r in received if r.topic == topic]
        return mine[-1] if mine else None

    return get


availability = last_payload(TOPICS.availability)


async def retained(broker: Mosquitto, **kwargs: object) -> dict[str, Received]:
    """What a fresh subscriber gets at once for the gateway's availability and metadata."""
    async with subscribed(broker, f"{TOPICS.base}/+", **kwargs) as sub:  # type: ignore[arg-type]
        await sub.wait_for(lambda got: len(got) >= 2)
        return {r.topic: r for r in sub.received}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "mosquitto") as b:
        yield b


# -- delivery ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_delivers_in_order_exactly_once_and_deletes_only_after_puback(
    broker: Mosquitto, spool: RecordingSpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    latencies: list[float | None] = []
    handed = handed_to_mqtt(monkeypatch)
    window = 32  # PUBLISHes awaiting their PUBACK at most (Uplink's default)
    async with subscribed(broker, "edgeveil/#") as sub:
        async with uplink_for(broker, spool, window=window, on_published=latencies.extend) as up:
            await sub.wait_for(lambda got: availability(got) == b"online")
            first = messages(0, 300)
            put_at = time.time()  # the latencies are measured on this clock (put to PUBACK)
            spool.put(first)
            up.notify()
            await sub.wait_for(lambda got: len(by_topic_data(got)) >= 300)
            await until(lambda: up.published == 300 and spool.held == 0, "all deleted")
            all_acked_at = time.time()

            data = by_topic_data(sub.received)
            # in order per topic (MQTT orders a topic's messages, not different topics')
            assert by_topic(data) == by_topic(first)
            # the waiting records of a topic went out joined: fewer MQTT messages than records
            assert len(by_topic_data(sub.messages)) < 300
            assert sorted(s for batch in spool.deletes for s in batch) == list(range(1, 301))
            assert up.published == 300
            assert len(latencies) == 300
            # each one measured, and within the time the test saw all of them take
            assert all(s is not None and 0 <= s <= all_acked_at - put_at for s in latencies)

            # A frozen broker still takes our bytes (the kernel does) but sends no PUBACK:
            # nothing may leave the spool. Once the uplink has handed a whole window of
            # PUBLISHes to its client, all it can do is wait for their PUBACKs.
            broker.pause()
            second = messages(300, 40)
            handed.clear()
            spool.put(second)
            up.notify()
            await until(  # every record handed over: packs of the frozen broker's topics
                lambda: {t for t in handed if "/node/" in t} >= set(by_topic(second)),
                "the PUBLISHes sent to the frozen broker",
                detail=lambda: len(handed),
            )
            assert spool.depth == 40
            assert up.published == 300
            broker.resume()
            await sub.wait_for(lambda got: len(by_topic_data(got)) >= 340)
            await until(lambda: up.published == 340 and spool.held == 0, "all deleted")
            data = by_topic_data(sub.received)
            assert by_topic(data) == by_topic(first + second)
            assert up.reconnects == 0
            assert up.last_error is None
        # a clean stop publishes "offline" itself (the will is not sent on a clean DISCONNECT)
        await sub.wait_for(lambda got: availability(got) == b"offline")
    got = await retained(broker)
    assert got[TOPICS.availability].payload == b"offline"
    assert got[TOPICS.availability].retain


def by_topic_data(received: list[Received]) -> list[Received]:
    return [r for r in received if "/node/" in r.topic]


@pytest.mark.asyncio
async def test_broker_outage_loses_nothing_and_uplink_reconnects_by_itself(
    tmp_path: Path, spool: RecordingSpool, caplog: pytest.LogCaptureFixture
) -> None:
    # Persistence on this broker keeps the SUBSCRIBER's session over the restart, so the test
    # sees everything; the uplink's own session is clean and does not need it.
    with Mosquitto(tmp_path / "mosquitto", persistence=True) as broker:
        async with (
            subscribed(broker, DATA, session="test-consumer") as sub,
            uplink_for(broker, spool) as up,
        ):
            before = messages(0, 30)
            spool.put(before)
            up.notify()
            await sub.wait_for(lambda got: len(got) >= 30)
            await until(lambda: spool.depth == 0, "first messages acknowledged")

            caplog.clear()
            with caplog.at_level(logging.DEBUG, logger="edgeveil.uplink"):
                await broker.astop()
                await until(lambda: not up.connected, "uplink saw the outage")
                during = messages(30, 50)
                for i in range(0, 50, 10):  # ingest keeps putting during the outage...
                    spool.put(during[i : i + 10])
                    up.notify()
                    tried = failed_attempts(caplog)  # ...while the uplink tries to reconnect
                    await until(lambda t=tried: failed_attempts(caplog) > t, "a failed attempt")
                assert spool.depth == 50  # nothing deleted without a PUBACK
                assert up.last_error is not None
                await broker.astart()
                await until(lambda: up.connected, "uplink reconnected", timeout=5)
            after = messages(80, 20)
            spool.put(after)
            up.notify()

            await sub.wait_for(lambda got: len({mid(r) for r in got}) >= 100, timeout=8)
            await until(lambda: up.published >= 100 and spool.held == 0, "all deleted")
            assert up.reconnects == 1

    kept = first_copies(sub.received)
    assert by_topic(kept) == by_topic(before + during + after)  # all, in order per topic
    ours = [r for r in caplog.records if r.name.startswith("edgeveil")]
    warnings = [r for r in ours if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # one line per outage
    assert "connection lost" in warnings[0].getMessage()
    assert not any(r.exc_info for r in ours)  # no stack traces
    assert any("again after" in r.getMessage() for r in ours)


@pytest.mark.asyncio
async def test_a_connect_attempt_that_timed_out_never_reaches_a_broker_that_was_only_slow(
    broker: Mosquitto, spool: RecordingSpool
) -> None:
    """A stalled broker (SIGSTOP: its kernel still accepts connections) answers no CONNECT.
    An attempt that timed out must not connect later, when the broker reads what it was sent
    while stalled: with our client id, a late CONNECT would take over the connection that
    replaced it, and the abandoned client would log a future's exception when it is dropped."""
    settings = MqttConfig(host=broker.host, port=broker.port, keepalive_s=1)
    async with uplink_for(broker, spool, config=settings, connect_timeout_s=0.5) as up:
        await until(lambda: up.connected, "connected")
        broker.pause()
        try:
            await until(lambda: up._failed_attempts >= 2, "two attempts timed out", timeout=15)
        finally:
            broker.resume()
        await until(lambda: up.connected, "connected again", timeout=10)
        await asyncio.sleep(0.5)  # the broker reads what it was sent while it was stopped
        assert up.connected
        connected_as_us = broker.log().count(f" as {up.client_id} (")
        assert connected_as_us == 2, broker.log()  # the first connection and its successor


@pytest.mark.asyncio
async def test_broker_restart_gets_online_and_metadata_retained_again(
    broker: Mosquitto, spool: RecordingSpool
) -> None:
    async with uplink_for(broker, spool) as up:
        await until(lambda: up.connected, "connected")
        got = await retained(broker)
        assert got[TOPICS.availability].payload == b"online"

        # The broker forgets retained messages on a restart (no persistence): show it with a
        # topic of the test's own...
        async with subscribed(broker, "probe") as probe_sub:
            await publish_once(broker, "probe", b"x", retain=True)
            await probe_sub.wait_for(lambda got: len(got) == 1)
        await broker.astop()
        await until(lambda: not up.connected, "uplink saw the restart")
        await broker.astart()
        async with subscribed(broker, "probe") as probe_sub:
            # a retained message comes at once on subscribing, before anything published
            # after the subscription: the marker's arrival shows none came
            await publish_once(broker, "probe", b"marker", retain=False)
            await probe_sub.wait_for(lambda got: len(got) >= 1)
            assert [r.payload for r in probe_sub.received] == [b"marker"]

        # ...and the uplink announces itself again, without being restarted.
        await until(lambda: up.connected and up.reconnects == 1, "reconnected")
        got = await retained(broker)
        assert got[TOPICS.availability].payload == b"online"
        assert got[TOPICS.availability].retain
        assert json.loads(got[TOPICS.metadata].payload) == METADATA
        assert got[TOPICS.metadata].retain

        up.set_metadata({**METADATA, "nodes": 4})
        async with subscribed(broker, TOPICS.metadata) as sub:
            await sub.wait_for(lambda got: any(json.loads(r.payload)["nodes"] == 4 for r in got))


async def publish_once(broker: Mosquitto, topic: str, payload: bytes, *, retain: bool) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


@pytest.mark.asyncio
async def test_a_failing_spool_is_logged_and_retried_never_fatal(
    broker: Mosquitto, spool: RecordingSpool, caplog: pytest.LogCaptureFixture
) -> None:
    class FlakySpool:
        fail = 2

        def peek(self, limit: int, after: int = 0) -> list[tuple[int, OutMessage]]:
            if self.fail:
                self.fail -= 1
                raise sqlite3.OperationalError("disk I/O error")
            return spool.peek(limit, after)

        def delete(self, seqs: list[int]) -> None:
            spool.delete(seqs)

        def published(self, seqs: list[int]) -> None:
            spool.published(seqs)

    batch = messages(0, 5)
    spool.put(batch)
    async with subscribed(broker, DATA) as sub, uplink_for(broker, FlakySpool()) as up:
        await sub.wait_for(lambda got: len(got) >= 5)
        await until(lambda: spool.depth == 0, "spool drained")
        assert up.last_error == "OperationalError: disk I/O error"
    errors = [r for r in caplog.records if r.name == "edgeveil.uplink" and r.levelno >= 40]
    assert len(errors) == 1  # once, with its stack trace: a failing disk is worth one
    assert errors[0].exc_info


@pytest.mark.asyncio
async def test_what_the_disk_refuses_to_delete_is_not_published_again(
    broker: Mosquitto, spool: RecordingSpool
) -> None:
    """A full disk refuses the delete after the PUBACK: the uplink keeps the acknowledged
    messages aside (not published again) and deletes them once the disk lets it."""

    class FullDiskSpool:
        refuse = 3

        def peek(self, limit: int, after: int = 0) -> list[tuple[int, OutMessage]]:
            return spool.peek(limit, after)

        def delete(self, seqs: list[int]) -> None:
            if self.refuse:
                self.refuse -= 1
                raise StorageError("spool", "disk_full", "the spool cannot be written")
            spool.delete(seqs)

        def published(self, seqs: list[int]) -> None:
            spool.published(seqs)

    full = FullDiskSpool()
    async with subscribed(broker, DATA) as sub, uplink_for(broker, full) as up:
        spool.put(messages(0, 3))
        up.notify()
        await sub.wait_for(lambda got: len(got) >= 3)
        spool.put(messages(3, 3))
        up.notify()
        await sub.wait_for(lambda got: len(got) >= 6)
        await until(lambda: spool.held == 0, "deleted once the disk lets it", timeout=20)
        assert full.refuse == 0
        assert up.last_error is None  # not a connection problem
        got = [r.payload for r in sub.received]
    assert len(got) == len(set(got)) == 6  # each once


# -- availability ------------------------------------------------------------------------------

CHILD = """
import asyncio, sys
from gateway.config import MqttConfig
from gateway.errors import ConfigError, StorageError
from gateway.records import Topics
from gateway.uplink import Uplink

class EmptySpool:
    def peek(self, limit, after=0):
        return []
    def delete(self, seqs):
        pass
    def published(self, seqs):
        pass

async def main():
    config = MqttConfig(host=sys.argv[1], port=int(sys.argv[2]), keepalive_s=5)
    topics = Topics("edgeveil", "test-site", "gw-1")
    await Uplink(config, EmptySpool(), topics, {"site": "test-site"}).run()

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_last_will_offline_when_the_gateway_dies(broker: Mosquitto, tmp_path: Path) -> None:
    with (tmp_path / "child.err").open("wb") as stderr:
        async with (
            subscribed(broker, f"{TOPICS.base}/+") as sub,
            async_child_process(
                sys.executable, "-c", CHILD, broker.host, str(broker.port), cwd=ROOT, stderr=stderr
            ) as child,
        ):
            try:
                await sub.wait_for(
                    lambda got: (
                        availability(got) == b"online"
                        and last_payload(TOPICS.metadata)(got) is not None
                    ),
                    timeout=8,
                )
            except AssertionError:
                stderr.flush()
                raise AssertionError((tmp_path / "child.err").read_text()) from None
            child.kill()  # SIGKILL: no clean shutdown, the kernel closes the socket
            await child.wait()
            await sub.wait_for(lambda got: availability(got) == b"offline")
    got = await retained(broker)
    assert got[TOPICS.availability].payload == b"offline"
    assert got[TOPICS.availability].retain
    assert json.loads(got[TOPICS.metadata].payload) == {"site": "test-site"}


@pytest.mark.asyncio
async def test_cancelled_run_publishes_offline(broker: Mosquitto, spool: RecordingSpool) -> None:
    """The TaskGroup shape: run() in a task; cancelling it still says "offline"."""
    up = uplink_for(broker, spool)
    async with subscribed(broker, TOPICS.availability) as sub:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(up.run(), name="uplink")
            await sub.wait_for(lambda got: availability(got) == b"online")
            task.cancel()
        assert task.cancelled()
        await sub.wait_for(lambda got: availability(got) == b"offline")
    got = await retained(broker)
    assert got[TOPICS.availability].payload == b"offline"


# -- TLS and credentials -----------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_tls(directory: Path) -> TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1, written to `directory`."""
    ca_key, ca_cert = make_ca("edgeveil test CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files


# paho leaves the socket of a failed TLS handshake to the garbage collector (ResourceWarning).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.asyncio
async def test_tls_with_username_and_password(
    tmp_path: Path, spool: RecordingSpool, caplog: pytest.LogCaptureFixture
) -> None:
    tls = make_tls(tmp_path / "pki")
    passwd = tmp_path / "passwd"
    mosquitto_passwd(passwd, "gateway", "right horse battery")
    mosquitto_passwd(passwd, "consumer", "consumer secret")
    for name, password in (("good", "right horse battery\n"), ("bad", "wrong horse\n")):
        (tmp_path / name).write_text(password)
        (tmp_path / name).chmod(0o600)
    _, other_ca = make_ca("some other CA")
    (tmp_path / "other-ca.pem").write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))

    with Mosquitto(tmp_path / "mosquitto", tls=tls, password_file=passwd) as broker:
        consumer_tls = ssl.create_default_context(cafile=str(tls.ca))
        good = config(
            broker, tls=True, ca_file=tls.ca, username="gateway", password_file=tmp_path / "good"
        )
        async with (
            subscribed(
                broker,
                DATA,
                username="consumer",
                password="consumer secret",  # noqa: S106
                tls_context=consumer_tls,
            ) as sub,
            uplink_for(broker, spool, config=good) as up,
        ):
            batch = messages(0, 10)
            spool.put(batch)
            up.notify()
            await sub.wait_for(lambda got: len(got) >= 10)
            assert by_topic(sub.received) == by_topic(batch)
            assert up.connected
            assert up.last_error is None

        wrong_password = config(
            broker,
            tls=True,
            ca_file=tls.ca,
            username="gateway",
            password_file=tmp_path / "bad",
            client_id="edgeveil-wrong-password",
        )
        caplog.set_level(logging.DEBUG, logger="edgeveil.uplink")
        async with uplink_for(broker, spool, config=wrong_password) as up:
            await until(lambda: up.last_error is not None, "an error")
            assert not up.connected
            assert "refused" in up.last_error  # type: ignore[operator]
            assert "not authori" in up.last_error.lower()  # type: ignore[union-attr]
            assert "mqtt.password_file" in up.last_error  # type: ignore[operator]
            tried = failed_attempts(caplog)  # it keeps trying, and nothing crashes
            await until(lambda: failed_attempts(caplog) >= tried + 2, "two more attempts")
            assert not up.connected

        wrong_ca = config(
            broker,
            tls=True,
            ca_file=tmp_path / "other-ca.pem",
            username="gateway",
            password_file=tmp_path / "good",
            client_id="edgeveil-wrong-ca",
        )
        async with uplink_for(broker, spool, config=wrong_ca) as up:
            await until(lambda: up.last_error is not None, "an error")
            assert "certificate verify failed" in up.last_error  # type: ignore[operator]
            assert not up.connected


def test_credential_files_others_can_read_are_refused(
    tmp_path: Path, spool: RecordingSpool
) -> None:
    """Security review: a password or client key readable by every user of the
    gateway is refused before anything connects, with the fix."""
    password = tmp_path / "password"
    password.write_text("right horse battery\n")
    password.chmod(0o644)
    loose = MqttConfig(host="127.0.0.1", username="gw", password_file=password)
    with pytest.raises(ConfigError, match=r"mqtt.password_file.*mode 644.*chmod o-rwx"):
        Uplink(loose, spool, TOPICS, METADATA)
    password.chmod(0o640)  # the gateway's group may read it
    Uplink(loose, spool, TOPICS, METADATA)


# -- the embedded broker -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_embedded_broker_round_trip(spool: RecordingSpool) -> None:
    async with EmbeddedBroker() as eb:
        assert eb.host == "127.0.0.1"
        assert eb.port > 0
        async with Subscriber(eb.host, eb.port, "edgeveil/#", contract=False) as sub:
            async with uplink_for(eb, spool) as up:
                batch = messages(0, 20)
                spool.put(batch)
                up.notify()
                await sub.wait_for(lambda got: len(by_topic_data(got)) >= 20)
                await until(lambda: spool.depth == 0, "spool drained")
            data = by_topic_data(sub.received)
            assert by_topic(data) == by_topic(batch)
            await sub.wait_for(lambda got: availability(got) == b"offline")
            assert b"online" in sub.payloads(TOPICS.availability)


def test_embedded_broker_listens_on_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        EmbeddedBroker(host="0.0.0.0")  # noqa: S104
    EmbeddedBroker(host="::1")
    EmbeddedBroker(host="localhost")


# -- backoff -----------------------------------------------------------------------------------


def test_backoff_doubles_to_its_maximum_with_jitter() -> None:
    b = Backoff(0.5, 30.0)
    ceilings = [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    for ceiling in ceilings:
        delay = b.next()
        assert ceiling / 2 <= delay <= ceiling
    b.reset()
    assert b.next() <= 0.5
