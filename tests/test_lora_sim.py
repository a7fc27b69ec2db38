"""The simulated LoRa modem, the emulated packet forwarder (over real UDP on localhost, against a
minimal Semtech server written here from PROTOCOL.TXT) and the LoRa fleet that drives them."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from firmware.host.forwarder import PacketForwarder, new_eui, parse_address
from firmware.host.lora_fleet import LoraFleet
from firmware.host.radio import Channel, Radio, airtime_us
from firmware.host.sim.lora_modem import RxPacket, SimModem, SimulatedTime
from gateway.registry import NodeRegistry
from protocol import Ack, NodeKeys, Readings, open_frame, parse_header, seal

from .command import ROOT, async_child_process, edgeveil
from .waiting import until

SF9 = Radio(868_100_000, sf=9)
LORA_CFG = {"freq_khz": 868100, "sf": 9, "bw": "125", "coding_rate": 5, "invert_iq_rx": True}
MARKER_EUI = bytes.fromhex("FEEDFACE00000001")  # the tests' own marker datagrams


def small_world() -> tuple[Channel, SimulatedTime, SimModem]:
    channel = Channel(seed=2)
    channel.add_gateway("gw", 0, 0)
    channel.add_node("n", 600, 0)
    clock = SimulatedTime()
    return channel, clock, SimModem(channel, "n", clock, LORA_CFG)


# -- the modem ---------------------------------------------------------------------------------


def test_modem_send_blocks_for_the_airtime_and_reaches_the_gateway() -> None:
    channel, clock, modem = small_world()
    assert modem.get_time_on_air_us(30) == airtime_us(SF9, 30)
    done_ms = modem.send(bytes(30))
    assert clock.now_us() == airtime_us(SF9, 30)
    assert done_ms == clock.now_us() // 1000
    (tx,) = channel.settle(clock.now_us())
    assert tx.source == "n" and tx.payload == bytes(30) and "gw" in tx.receptions


def test_modem_recv_gets_a_downlink_in_its_window_with_rssi_and_snr() -> None:
    channel, clock, modem = small_world()
    channel.transmit("gw", b"downlink", SF9, 300_000)
    rx = modem.recv(timeout_ms=1000)
    assert isinstance(rx, RxPacket)
    assert bytes(rx) == b"downlink" and rx.valid_crc
    reception = channel.receive("n", SF9, 0, 10**6)
    assert reception is not None
    expected = reception.receptions["n"]
    assert rx.rssi == round(expected.rssi_dbm)
    assert rx.snr == round(expected.snr_db * 4)  # quarter dB, as the SX127x register
    assert clock.now_us() >= 300_000 + airtime_us(SF9, 8)  # it was received to the end
    assert rx.ticks_ms == (300_000 + airtime_us(SF9, 8)) // 1000


def test_modem_recv_times_out_and_ignores_other_channels() -> None:
    channel, clock, modem = small_world()
    channel.transmit("gw", b"other sf", Radio(868_100_000, sf=10), 100_000)
    channel.transmit("gw", b"too late", SF9, 2_000_000)
    assert modem.recv(timeout_ms=1000) is None
    assert 1_000_000 <= clock.now_us() < 1_100_000


def test_modem_rejects_bad_configuration_in_one_line() -> None:
    _, _, modem = small_world()
    with pytest.raises(ValueError, match="Invalid lora_cfg bw"):
        modem.configure({"bw": "62.5"})
    with pytest.raises(ValueError, match=r"spreading factor must be 7\.\.12"):
        modem.configure({"sf": 5})
    with pytest.raises(ValueError, match="at most 255 bytes"):
        modem.send(bytes(256))


# -- the forwarder against a minimal server ----------------------------------------------------


@dataclass
class MiniServer(asyncio.DatagramProtocol):
    """The network-server side of Semtech UDP v2, as PROTOCOL.TXT describes it."""

    rxpk: list[dict[str, Any]] = field(default_factory=list)
    stat: list[dict[str, Any]] = field(default_factory=list)
    tx_acks: list[dict[str, Any]] = field(default_factory=list)
    euis: set[bytes] = field(default_factory=set)
    pull_addr: Any = None
    transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        version, kind = data[0], data[3]
        assert version == 2
        if kind == 0:  # PUSH_DATA
            self.euis.add(data[4:12])
            body = json.loads(data[12:])
            self.rxpk += body.get("rxpk", [])
            if "stat" in body:
                self.stat.append(body["stat"])
            self.transport.sendto(data[:3] + b"\x01", addr)
        elif kind == 2:  # PULL_DATA
            self.pull_addr = addr
            self.transport.sendto(data[:3] + b"\x04", addr)
        elif kind == 5:  # TX_ACK
            self.tx_acks.append(json.loads(data[12:])["txpk_ack"])

    def send_txpk(self, txpk: dict[str, Any]) -> None:
        self.transport.sendto(
            b"\x02\x12\x34\x03" + json.dumps({"txpk": txpk}).encode(), self.pull_addr
        )

    @property
    def port(self) -> int:
        port: int = self.transport.get_extra_info("sockname")[1]
        return port


@pytest_asyncio.fixture
async def server() -> AsyncIterator[MiniServer]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        MiniServer, local_addr=("127.0.0.1", 0)
    )
    yield protocol
    transport.close()


@pytest.mark.asyncio
async def test_forwarder_pushes_rxpk_and_sends_downlinks_at_tmst(server: MiniServer) -> None:
    channel, clock, modem = small_world()
    frame = b"\x01sealed frame"
    modem.send(frame)
    (tx,) = channel.settle(clock.now_us())

    def on_downlink(txpk: dict[str, Any], start_us: int) -> str:
        payload = base64.b64decode(txpk["data"])
        channel.transmit("gw", payload, Radio(868_100_000, sf=9), start_us)
        return "NONE"

    eui = new_eui()
    assert eui[0] & 0x02  # locally administered: never a real gateway's
    fwd = PacketForwarder(
        ("127.0.0.1", server.port), eui=eui, now_us=clock.now_us, on_downlink=on_downlink
    )
    async with fwd:
        keepalive = asyncio.create_task(fwd.run())
        fwd.push([(tx, tx.receptions["gw"])])
        fwd.push_stat()
        await until(lambda: server.rxpk and server.stat and server.pull_addr, "push and pull")
        (rx,) = server.rxpk
        assert server.euis == {eui}
        assert rx["datr"] == "SF9BW125" and rx["codr"] == "4/5" and rx["modu"] == "LORA"
        assert rx["freq"] == 868.1 and rx["stat"] == 1 and rx["size"] == len(frame)
        assert base64.b64decode(rx["data"]) == frame
        assert rx["tmst"] == tx.end_us
        assert rx["rssi"] == round(tx.receptions["gw"].rssi_dbm)
        assert rx["lsnr"] == round(tx.receptions["gw"].snr_db, 1)
        assert rx["time"].endswith("Z")
        assert server.stat[0]["rxnb"] == 1

        # a downlink 1 s after the uplink (RX1), and one for a moment already past
        server.send_txpk(
            {"tmst": rx["tmst"] + 1_000_000, "freq": 868.1, "datr": "SF9BW125", "codr": "4/5",
             "powe": 14, "ipol": True, "size": 2, "data": base64.b64encode(b"hi").decode()}
        )  # fmt: skip
        await until(lambda: len(server.tx_acks) == 1, "TX_ACK")
        server.send_txpk({"tmst": 5, "freq": 868.1, "datr": "SF9BW125", "data": "aGk="})
        await until(lambda: len(server.tx_acks) == 2, "second TX_ACK")
        assert [a["error"] for a in server.tx_acks] == ["NONE", "TOO_LATE"]
        assert fwd.stats.push_acked == 2 and fwd.stats.pull_acked >= 1
        keepalive.cancel()

    rx_packet = modem.recv(timeout_ms=2000)
    assert rx_packet is not None and bytes(rx_packet) == b"hi"
    assert rx_packet.ticks_ms == (tx.end_us + 1_000_000 + airtime_us(SF9, 2)) // 1000


def test_forwarder_address_errors_are_one_line() -> None:
    assert parse_address("127.0.0.1:1700") == ("127.0.0.1", 1700)
    assert parse_address("[::1]:1700") == ("::1", 1700)
    for bad in ("localhost", ":1700", "host:99999", "host:port"):
        with pytest.raises(ValueError, match="is not HOST:PORT"):
            parse_address(bad)


# -- the fleet ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fleet_forwards_exactly_what_the_channel_delivered(
    server: MiniServer, tmp_path: Path
) -> None:
    fleet = LoraFleet(
        60, gateways=2, servers=[("127.0.0.1", server.port)], seed=4, reading_interval=20
    )
    report = await fleet.run(120, speed=None)
    await until(lambda: len(server.rxpk) >= report.delivered, "all delivered frames pushed")

    fleet.write_registry(tmp_path / "registry.json")
    assert (tmp_path / "registry.json").stat().st_mode & 0o777 == 0o600
    with NodeRegistry.open(tmp_path / "registry.db") as registry:
        assert registry.import_file(tmp_path / "registry.json") == 60
        got = set()
        for rx in server.rxpk:
            frame = base64.b64decode(rx["data"])
            header = parse_header(frame)
            entry = registry.get(header.node_id)
            assert entry is not None
            assert isinstance(open_frame(frame, entry.keys, True, header), Readings)
            got.add((header.node_id, header.counter))
    assert got == report.delivered_frames  # each copy one the channel delivered; none missing
    assert len(server.rxpk) >= len(got)  # two gateways hear some frames both
    assert report.sent == sum(len(n.sent) for n in fleet.nodes)
    assert report.delivered + sum(report.losses.values()) == report.sent
    assert 0 < report.delivery_ratio < 1  # 60 nodes every 20 s at SF9: some collide
    assert set(report.losses) <= {"collision", "below sensitivity"}
    print(f"\n{report.sent} sent, delivery ratio {report.delivery_ratio:.3f}, {report.losses}")


@pytest.mark.slow  # paced to the wall clock: 4 s
@pytest.mark.asyncio
async def test_fleet_node_verifies_a_downlink_in_its_receive_window(server: MiniServer) -> None:
    fleet = LoraFleet(1, servers=[("127.0.0.1", server.port)], seed=5, reading_interval=30)
    node = fleet.nodes[0]
    # the gateway's answer to the first uplink: an Ack sealed with the node's keys, in RX1
    gateway_keys = NodeKeys(node.node_id, node.secret)
    ack = seal(Ack([0]), 0, gateway_keys)
    pushed = 0

    async def answer() -> None:
        nonlocal pushed
        while True:
            await asyncio.sleep(0.01)
            if len(server.rxpk) > pushed and server.pull_addr is not None:
                rx = server.rxpk[pushed]
                pushed += 1
                server.send_txpk(
                    {"tmst": rx["tmst"] + 1_000_000, "freq": rx["freq"], "datr": rx["datr"],
                     "codr": "4/5", "ipol": True, "size": len(ack),
                     "data": base64.b64encode(ack).decode()}
                )  # fmt: skip

    task = asyncio.create_task(answer())
    try:
        report = await fleet.run(40, speed=10.0)  # 4 s: the server answers in time
    finally:
        task.cancel()
    assert report.delivered >= 1
    assert any(isinstance(m, Ack) and m.counters == [0] for m in node.heard), server.tx_acks
    assert node.rejected == 0


# -- the command -------------------------------------------------------------------------------


async def everything_pushed(server: MiniServer) -> None:
    """Wait until the server has taken every datagram sent to it before this call: a marker
    datagram of its own goes to the back of the socket's queue; when the server has taken it,
    it has taken everything before it (a PUSH_DATA with no rxpk, from no gateway)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.sendto(b"\x02\xff\xff\x00" + MARKER_EUI + b"{}", ("127.0.0.1", server.port))
        await until(lambda: MARKER_EUI in server.euis, "the server took the marker datagram")
    finally:
        sock.close()
    server.euis.discard(MARKER_EUI)


@pytest.mark.asyncio
async def test_emulate_link_lora_sends_to_the_forwarder_it_is_given(server: MiniServer) -> None:
    async with async_child_process(
        sys.executable, "-m", "gateway.cli", "emulate", "--link", "lora", "--nodes", "4",
        "--gateways", "2", "--reading-interval", "1", "--duration", "1.5", "--radio-only",
        "--forwarder", f"127.0.0.1:{server.port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    ) as proc:  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    nodes = {int(line.split()[1]) for line in lines if line.startswith("node ")}
    gateways = {line.split()[1] for line in lines if line.startswith("gateway ")}
    assert len(nodes) == 4 and len(gateways) == 2
    assert lines[-1].startswith("registry ")  # a temporary file, removed at exit
    # in the simulation's time (the fleet's event queue, paced to the wall clock but never
    # decided by it): each node sends its first reading at a random moment of the first
    # second, and no second one in the 1.5 s: the 1 % duty cycle makes it wait 20 s after
    # 0.2 s on air
    summary = re.search(r"(\d+) frames sent, (\d+) received by a gateway", err.decode())
    assert summary is not None, err
    assert int(summary[1]) == 4
    await everything_pushed(server)  # the datagrams the emulator sent before it exited
    frames = {base64.b64decode(rx["data"]) for rx in server.rxpk}
    assert len(frames) == int(summary[2])  # what the channel delivered, and only that
    assert {parse_header(f).node_id for f in frames} <= nodes
    assert {eui.hex().upper() for eui in server.euis} <= gateways


def test_emulate_link_lora_bad_options_are_one_line_errors() -> None:
    for args, message in (
        (["--sf", "13"], "--sf must be 7..12, got 13"),
        (
            ["--forwarder", "localhost"],
            "--forwarder: 'localhost' is not HOST:PORT (e.g. 127.0.0.1:1700)",
        ),
        (["--nodes", "0"], "--nodes must be 1..5000 with --link lora, got 0"),
        (["--area-m", "0"], "--area-m must be 10..100000 metres, got 0"),
        (["--gateways", "0"], "--gateways must be 1..16, got 0"),
    ):
        result = edgeveil("emulate", "--link", "lora", *args)
        assert result.returncode == 2, result
        assert result.stderr.strip() == f"edgeveil emulate: error: {message}"
