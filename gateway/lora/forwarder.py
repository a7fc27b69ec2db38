"""LoRa through concentrator gateways: the server side of the Semtech UDP packet forwarder.

`ForwarderTransport.run()` listens on UDP (default 0.0.0.0:1700) for the packet forwarders
of SX1301/SX1302/SX1303 gateways (RAK5146, SX1302 CoreCell, any gateway running Semtech's
packet forwarder or its forks). For each datagram (gateway.lora.semtech parses it):

- from a gateway EUI not in the allow-list: counted, never answered, logged once per EUI;
- from an allowed EUI but another address than the one it is tied to: counted, ignored,
  logged once per burst. The protocol has no authentication (anyone on the network can quote
  an EUI), so an EUI is tied to its address: the configured one ("EUI@host"), else the one
  it is first heard from, which moves only after the gateway has been silent there for
  REBIND_S (a gateway whose address changed: a new DHCP lease, NAT);
- PUSH_DATA: PUSH_ACK at once (same version and token), also when its JSON is malformed
  (PROTOCOL.TXT: the server acknowledges every PUSH_DATA), then each good rxpk goes through
  the duplicate merger (gateway.lora.dedupe) to `on_frame(port, frame, RadioMeta)`; bad rxpk
  are counted by reason (crc_error for a failed CRC; "no CRC", stat 0, is taken: the frame
  authenticates itself), base64 ...);
- PULL_DATA: PULL_ACK, and the datagram's source address is remembered as that gateway's
  downlink route (the gateway may be behind NAT: PULL_DATA keeps the route open);
- TX_ACK: counted by result (tx_ok, TOO_LATE, COLLISION_PACKET ...);
- anything malformed: counted by reason, logged once per burst, dropped.

Downlinks (`send()`, only with `acks = true`): the sealed frame as a txpk in a PULL_RESP to
the gateway that heard the node best, in RX1: the uplink's tmst + 1 s, same frequency and
data rate, inverted IQ (as LoRaWAN downlinks: nodes do not hear each other's uplinks as
downlinks). At most two downlinks per uplink (SPEC.md section 13: the node's receive window
takes a second frame right after the first), the second scheduled after the first's airtime.
A downlink is not sent in RX1 when RX1 can no longer be reached (judged by when the
concentrator received the uplink, ConcentratorClock, not when its PUSH_DATA arrived), when it
would overlap another downlink of the same concentrator, when the uplink's channel is outside
the configured region plan (`region`, EU868), crosses one of its sub-band edges, or the power
(`tx_power_dbm`, with `antenna_gain_dbi`) is above the sub-band's ERP limit
(gateway.lora.region), when it is longer than the data rate allows (SPEC.md 13), or when it
would take the gateway's sub-band over its duty-cycle limit (gateway.lora.radio); each counted
by reason. When RX1 was refused for its moment or its sub-band (too late, overlap, duty cycle)
and the uplink's window carries nothing yet, RX2 is tried under the same rules: tmst + 2 s on
`rx2_freq_hz` at `rx2_sf` (869.525 MHz SF12, the 10 % sub-band, by default), where the node
listens when nothing came in RX1; counted as rx2_sent or rx2_<reason>. The window the first
downlink took is the window of the second. A node that gets no ack sends its frame again, so
a downlink not sent costs a retransmission, never data.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from firmware.edgeveil_node import airtime

from ..config import PacketForwarderConfig
from ..ingest import BurstLog
from ..metrics import Metrics
from ..transport import Backoff
from .dedupe import Deduplicator
from .link import LoraLink, OnFrame, log, observations
from .radio import (
    RX1_DELAY_US,
    RX1_LEAD_S,
    RX2_DELAY_US,
    DataRate,
    DutyCycle,
    RadioMeta,
    time_on_air,
)
from .region import PLANS
from .semtech import (
    TX_ERRORS,
    MalformedDatagram,
    PullData,
    PushData,
    TxAck,
    Txpk,
    parse_datagram,
    pull_ack,
    pull_resp,
    push_ack,
)

__all__ = ["RX1_DELAY_US", "RX2_DELAY_US", "ForwarderTransport", "OnFrame", "largest_downlink"]

Address = tuple[str, int]

# RX1 refusals that leave RX2 worth trying: the moment or the sub-band was the problem, not
# the frame or the uplink's channel (a node on a channel outside the plan is not ours)
RX2_WHEN_RX1 = frozenset({"too_late", "overlap", "duty_cycle"})
FRAMES_PER_WINDOW = 2  # SPEC.md 13: an ack and a time sync, the second right after the first
# between the end of a window's first frame and the start of its second: time for the node to
# hand the first to its firmware and listen again (SPEC.md section 13)
SECOND_FRAME_GAP_US = 25_000
MAX_LORA_PAYLOAD = 255
# A concentrator sends one packet at a time: its downlinks must not overlap, with the margins
# of Semtech's just-in-time queue (jitqueue.c: TX_START_DELAY 1.5 ms before, TX_MARGIN_DELAY
# 1 ms either side), here rounded up. Closer ones it refuses with COLLISION_PACKET.
TX_GUARD_BEFORE_US = 3000
TX_GUARD_AFTER_US = 1500
_BUSY_KEPT = 64  # scheduled downlinks remembered per concentrator (a few seconds' worth)
CLOCK_WINDOW_S = 600.0  # packets a concentrator clock estimate learns from (ConcentratorClock)
CLOCK_RESET_S = 5.0  # no packet is this old at arrival: the concentrator's counter restarted
_MAX_REMEMBERED = 1024  # unknown EUIs logged, downlink slots and tokens remembered
# A gateway sends PULL_DATA every 10 s and statistics every 30 s by default: a minute of
# silence at its address means it has moved (or is gone), not that it is busy.
REBIND_S = 60.0
_K = TypeVar("_K")
_V = TypeVar("_V")


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, received: Callable[[bytes, Address], None]) -> None:
        self._received = received

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP "port unreachable" after a PULL_RESP to a gateway that went away: harmless
        log.debug("packet forwarder UDP: %s", exc)


class ForwarderTransport(LoraLink[PacketForwarderConfig]):
    """One UDP server for packet forwarders; `run()` serves until cancelled.

    on_frame(port, frame, meta) is called from the event loop once per frame (after merging
    the copies several gateways heard); on_state(port, state) on every state change, "open"
    (listening) or "waiting" (cannot bind now; retried with backoff).
    """

    TASK_KIND = "lora-udp"

    def __init__(
        self,
        config: PacketForwarderConfig,
        on_frame: OnFrame,
        on_state: Callable[[str, str], None] | None = None,
        *,
        metrics: Metrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config, on_frame, on_state, metrics)
        self._monotonic = monotonic  # when a datagram came, how old an uplink is (tests: theirs)
        self._allowed = frozenset(config.gateways)
        self._udp: asyncio.DatagramTransport | None = None
        self._routes: dict[str, tuple[Address, int]] = {}  # EUI -> PULL_DATA address, version
        self._unknown_logged: set[str] = set()
        # EUI -> (host it is tied to, when last heard there); the configured ones never move
        self._hosts: dict[str, tuple[str, float]] = {
            eui: (host, float("inf")) for eui, host in config.fixed_hosts
        }
        # (EUI, uplink tmst) -> the window its downlinks use, how many went, when the next
        # one may start
        self._slots: OrderedDict[tuple[str, int], tuple[_Window, int, int]] = OrderedDict()
        self._tokens: OrderedDict[bytes, _Scheduled] = OrderedDict()  # PULL_RESP token ->
        # concentrator EUI -> its scheduled downlinks (tmst at start, airtime in us)
        self._busy: dict[str, deque[tuple[int, int]]] = {}
        self._clocks: dict[str, ConcentratorClock] = {}  # EUI -> its tmst against our clock
        self._duty: dict[str, DutyCycle] = {}
        self._plan = PLANS[config.region]
        self._dedupe = Deduplicator(self._release, config.dedupe_ms / 1000)
        self._burst_log = BurstLog(what="datagram or packet dropped")
        self._tx_warnings = BurstLog(what="sent with a limitation")

    # -- public, the same shape as SerialTransport ---------------------------------------

    @property
    def address(self) -> Address | None:
        """The address listened on now (the port chosen by the OS when configured as 0)."""
        if self._udp is None:
            return None
        host, port = self._udp.get_extra_info("sockname")[:2]
        return host, port

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(0.5, 30.0)
        where = f"{self.config.host}:{self.config.port}"
        try:
            while True:
                try:
                    udp, _ = await loop.create_datagram_endpoint(
                        lambda: _Udp(self._datagram),
                        local_addr=(self.config.host, self.config.port),
                    )
                except OSError as exc:
                    self._set_state("waiting", f"cannot listen on UDP {where}: {exc.strerror}")
                    await asyncio.sleep(backoff.next_delay())
                    continue
                self._udp = udp
                self._set_state("open", None)
                log.info(
                    "lora %s: packet forwarder server on UDP %s, %d gateways allowed, acks %s",
                    self.name,
                    where,
                    len(self._allowed),
                    "on" if self.config.acks else "off",
                )
                await loop.create_future()  # until cancelled
        finally:
            self._dedupe.close()  # frames held for merging go on: nothing is lost
            if self._udp is not None:
                self._udp.close()
                self._udp = None

    async def send(self, frame: bytes, meta: RadioMeta | None) -> bool:
        """Send a sealed downlink frame in a receive window of the uplink `meta` describes,
        through the gateway that heard it: RX1, else RX2 (module docstring). False when it is
        not sent (counted by reason)."""
        if not self.config.acks or meta is None or meta.tmst is None or self._udp is None:
            return False
        if meta.link not in self._routes:
            self._count_downlink("no_route")
            return False
        used = self._slots.get((meta.link, meta.tmst))
        if used is not None:
            # the window this uplink's first downlink took: the node listens there, and only
            # there (it opens RX2 only when nothing came in RX1)
            return self._try(frame, meta, *used) is None
        refusal = self._try(frame, meta, _Window(1, meta.freq_hz, meta.rate, RX1_DELAY_US))
        if refusal is None:
            return True
        if refusal not in RX2_WHEN_RX1 or not self.config.rx2:
            return False
        rate = DataRate(self.config.rx2_sf, meta.rate.bw_khz)
        rx2 = _Window(2, self.config.rx2_freq_hz, rate, RX2_DELAY_US)
        return self._try(frame, meta, rx2) is None

    def _try(
        self, frame: bytes, meta: RadioMeta, window: _Window, frames: int = 0, tx_at: int = -1
    ) -> str | None:
        """Hand the downlink to the concentrator as a PULL_RESP, the window's `frames`+1-th
        at `tx_at` (-1: at the window's start); None, or why it is refused (counted)."""
        assert self._udp is not None and meta.tmst is not None  # noqa: S101 - send() checked
        if tx_at < 0:
            tx_at = window.opens(meta.tmst)
        refusal = self._refusal(frame, meta, window, frames, tx_at)
        if refusal is not None:
            self._count_downlink(refusal if window.rx == 1 else f"rx2_{refusal}")
            return refusal
        airtime = time_on_air(len(frame), window.rate, meta.codr)
        airtime_us = round(airtime * 1e6)
        after = (tx_at + airtime_us + SECOND_FRAME_GAP_US) & 0xFFFFFFFF
        _remember(self._slots, (meta.link, meta.tmst), (window, frames + 1, after))
        busy = self._busy.setdefault(meta.link, deque(maxlen=_BUSY_KEPT))
        busy.append((tx_at, airtime_us))
        txpk = Txpk(
            data=frame,
            freq_hz=window.freq_hz,
            rate=window.rate,
            power_dbm=self.config.tx_power_dbm,
            tmst=tx_at,
            codr=meta.codr,
        )
        address, version = self._routes[meta.link]
        datagram = pull_resp(txpk, version)
        pending = _Scheduled(meta.link, window.freq_hz, window.rate.bw_khz, airtime, tx_at)
        _remember(self._tokens, datagram[1:3], pending)
        self._udp.sendto(datagram, address)
        self._count_downlink("sent" if window.rx == 1 else "rx2_sent")
        if version < 2:  # no TX_ACK will confirm it: counted as scheduled
            self.metrics.lora_airtime.labels(self.name, meta.link).inc(airtime)
        return None

    def _refusal(
        self, frame: bytes, meta: RadioMeta, window: _Window, frames: int, tx_at: int
    ) -> str | None:
        """Why this downlink (the window's `frames`+1-th, at `tx_at`) cannot go out, or None;
        the duty cycle is charged when it can."""
        if len(frame) > largest_downlink(window.rate):
            return "too_big"
        if self._monotonic() - meta.received > window.delay_us / 1e6 - RX1_LEAD_S:
            return "too_late"
        if frames >= FRAMES_PER_WINDOW:
            return "slot_taken"
        airtime = time_on_air(len(frame), window.rate, meta.codr)
        if _overlaps(self._busy.get(meta.link, ()), tx_at, round(airtime * 1e6)):
            return "overlap"  # the concentrator sends another downlink then
        config = self.config
        region = self._plan.refusal(
            window.freq_hz, window.rate.bw_khz, config.tx_power_dbm, config.antenna_gain_dbi
        )
        # outside_plan, crosses_edge, over_power: never sent, and nothing charged
        if region is None and not self._duty.setdefault(meta.link, DutyCycle()).allow(
            window.freq_hz, airtime, window.rate.bw_khz
        ):
            region = "duty_cycle"
        return region

    # -- receiving ---------------------------------------------------------------------------

    def _datagram(self, data: bytes, addr: Address) -> None:
        try:
            event = parse_datagram(data)
        except MalformedDatagram as exc:
            push = exc.push
            if push is not None and push[2] in self._allowed and self._from_its_host(push[2], addr):
                self._reply(push_ack(push), addr)  # every PUSH_DATA, whatever its JSON
            self._count_datagram(exc.reason)
            self._burst_log.rejected(self.name, exc.reason, f"{exc.detail} (from {addr[0]})")
            return
        if event.gateway not in self._allowed:
            self._unknown(event.gateway, addr)
            return
        if not self._from_its_host(event.gateway, addr):
            return
        if isinstance(event, PushData):
            self._reply(push_ack(event), addr)  # at once: the forwarder measures ackr by it
            self._count_datagram("push_data")
            self._push_data(event)
        elif isinstance(event, PullData):
            self._reply(pull_ack(event), addr)
            self._count_datagram("pull_data")
            if self._routes.get(event.gateway, (None, 0))[0] != addr:
                log.info("lora %s: gateway %s downlink route %s", self.name, event.gateway, addr[0])
            self._routes[event.gateway] = (addr, event.version)
        elif isinstance(event, TxAck):
            self._count_datagram("tx_ack")
            self._tx_ack(event)

    def _push_data(self, event: PushData) -> None:
        gateway = event.gateway
        for rejected in event.rejected:
            self._count_packet(gateway, rejected.reason)
            self._burst_log.rejected(
                self.name,
                rejected.reason,
                f"rxpk {rejected.index} from {gateway}: {rejected.detail}",
            )
        now = self._monotonic()
        clock = self._clocks.setdefault(gateway, ConcentratorClock())
        for rxpk in event.rxpk:
            counted = not observations(rxpk.data)
            if counted:
                self.metrics.lora_rssi.labels(self.name, gateway).observe(rxpk.rssi)
                if rxpk.lsnr is not None:
                    self.metrics.lora_snr.labels(self.name, gateway).observe(rxpk.lsnr)
            meta = RadioMeta(
                link=gateway,
                rssi=rxpk.rssi,
                snr=rxpk.lsnr,
                freq_hz=rxpk.freq_hz,
                rate=rxpk.rate,
                codr=rxpk.codr,
                tmst=rxpk.tmst,
                received=clock.received(rxpk.tmst, now),  # a late PUSH_DATA is seen as late
            )
            merged, late = self._dedupe.merged, self._dedupe.late
            self._dedupe.offer(rxpk.data, meta)
            if not counted:
                continue
            if self._dedupe.merged != merged:
                self._count_packet(gateway, "merged")
            elif self._dedupe.late != late:
                self._count_packet(gateway, "late")

    def _release(self, frame: bytes, meta: RadioMeta) -> None:
        if not observations(frame):
            self._count_packet(meta.link, "forwarded")
        try:
            self._on_frame(self.name, frame, meta)
        except Exception:  # a bug downstream must not stop the radio link
            self.counts["callback_errors"] += 1
            log.exception("lora %s: on_frame failed", self.name)

    def _tx_ack(self, event: TxAck) -> None:
        sent = self._tokens.pop(event.token, None)
        if event.error is None:
            self._count_downlink("tx_ok")
            if sent is not None:  # the airtime the concentrator confirmed
                self.metrics.lora_airtime.labels(self.name, sent.link).inc(sent.airtime)
            if event.warning is not None:
                # text from the network: escaped, cut short, at most one line per burst
                self._tx_warnings.rejected(
                    self.name,
                    "downlink limited",
                    f"gateway {event.gateway}: {repr(event.warning)[:40]} {repr(event.value)[:20]}",
                )
            return
        reason = event.error if event.error in TX_ERRORS else "other"
        self._count_downlink(reason)
        if sent is not None:  # not sent: neither its airtime nor its slot counts
            duty = self._duty.get(sent.link)
            if duty is not None:
                duty.refund(sent.freq_hz, sent.airtime, sent.bw_khz)
            busy = self._busy.get(sent.link)
            if busy is not None and (sent.tx_at, round(sent.airtime * 1e6)) in busy:
                busy.remove((sent.tx_at, round(sent.airtime * 1e6)))
        self._burst_log.rejected(
            self.name, f"downlink {reason}", f"gateway {event.gateway} did not send it (TX_ACK)"
        )

    def _from_its_host(self, eui: str, addr: Address) -> bool:
        """True when the datagram comes from the address `eui` is tied to (or may move to)."""
        now = self._monotonic()
        host, heard = self._hosts.get(eui, (None, 0.0))
        if host == addr[0] or host is None or now - heard >= REBIND_S:
            if host is not None and host != addr[0]:
                log.warning(
                    "lora %s: gateway %s now sends from %s (silent at %s for %.0f s)",
                    self.name,
                    eui,
                    addr[0],
                    host,
                    now - heard,
                )
            if heard != float("inf"):
                self._hosts[eui] = (addr[0], now)
            return True
        self._count_datagram("address_mismatch")
        self._burst_log.rejected(
            self.name,
            "address_mismatch",
            f"a datagram claiming gateway {eui} came from {addr[0]}, not {host}: ignored",
        )
        return False

    def _unknown(self, eui: str, addr: Address) -> None:
        self._count_datagram("unknown_gateway")
        if eui in self._unknown_logged or len(self._unknown_logged) >= _MAX_REMEMBERED:
            return
        self._unknown_logged.add(eui)
        log.warning(
            "lora %s: ignoring gateway %s (from %s): not in lora.packet_forwarder gateways; "
            "add its EUI there if it is yours",
            self.name,
            eui,
            addr[0],
        )

    def _reply(self, datagram: bytes, addr: Address) -> None:
        if self._udp is not None:
            self._udp.sendto(datagram, addr)

    # -- counting and state ------------------------------------------------------------------

    def _count_datagram(self, outcome: str) -> None:
        self.counts[f"datagram:{outcome}"] += 1
        self.metrics.lora_datagrams.labels(self.name, outcome).inc()

    def _count_packet(self, gateway: str, outcome: str) -> None:
        self.counts[f"packet:{outcome}"] += 1
        self.metrics.lora_packets.labels(self.name, gateway, outcome).inc()


class ConcentratorClock:
    """When a concentrator received a packet, in this process's time.monotonic(), from its
    tmst: what tells an uplink that reached us late (a PUSH_DATA held up on the network, a
    forwarder that batched) from a fresh one, so that it is not answered in an RX1 window
    that has passed or is about to.

    Each packet gives `arrival - tmst`: the clocks' offset plus that packet's delay. The least
    of these over the last CLOCK_WINDOW_S is the offset plus the shortest delay; a packet's
    age at arrival is its own value minus that least one. The 32-bit microsecond tmst is
    unwrapped (it wraps every 71.6 minutes); a packet that would be more than CLOCK_RESET_S
    old means the concentrator restarted (its counter began again), and the estimate starts
    afresh. Drift of the two clocks over the window (tens of ppm: ms) is left out.
    """

    def __init__(self) -> None:
        self._last: int | None = None  # the highest unwrapped tmst seen
        self._offsets: deque[tuple[float, float]] = deque(maxlen=256)  # (arrival, offset)

    def received(self, tmst: int, arrival: float) -> float:
        """The estimated time.monotonic() at which the concentrator received the packet."""
        value = self._unwrap(tmst)
        offset = arrival - value / 1e6
        while self._offsets and self._offsets[0][0] < arrival - CLOCK_WINDOW_S:
            self._offsets.popleft()
        least = min((o for _, o in self._offsets), default=offset)
        age = offset - least
        if age > CLOCK_RESET_S or age < -CLOCK_RESET_S:  # the counter began again
            self._offsets.clear()
            self._last = tmst
            age = 0.0
        self._offsets.append((arrival, offset))
        return arrival - max(0.0, age)

    def _unwrap(self, tmst: int) -> int:
        last = self._last
        if last is None:
            self._last = tmst
            return tmst
        value = (last & ~0xFFFFFFFF) | tmst
        if value < last - (1 << 31):
            value += 1 << 32  # the counter wrapped
        elif value > last + (1 << 31):
            value -= 1 << 32  # a packet from before the wrap, arriving after it
        self._last = max(last, value)
        return value


@dataclass(frozen=True, slots=True)
class _Window:
    """A receive window of the node: RX1 on the uplink's channel 1 s after it, or RX2 on its
    own channel 2 s after it."""

    rx: int  # 1 or 2
    freq_hz: int
    rate: DataRate
    delay_us: int  # after the end of the uplink

    def opens(self, tmst: int) -> int:
        """When the window opens, in concentrator microseconds (32-bit, wrapping)."""
        return (tmst + self.delay_us) & 0xFFFFFFFF


def largest_downlink(rate: DataRate) -> int:
    """The largest frame a downlink may carry at this data rate: the nodes' own limit per
    spreading factor (SPEC.md section 13: 51 bytes at SF10-SF12), the radio's 255 beyond it."""
    if 7 <= rate.sf <= 12:
        return int(airtime.max_frame(rate.sf))
    return MAX_LORA_PAYLOAD


@dataclass(frozen=True, slots=True)
class _Scheduled:
    """A downlink handed to a concentrator, until its TX_ACK says whether it went out."""

    link: str
    freq_hz: int
    bw_khz: int
    airtime: float
    tx_at: int  # concentrator microseconds


def _overlaps(busy: Iterable[tuple[int, int]], start: int, airtime_us: int) -> bool:
    """Whether a downlink at `start` (concentrator us, 32-bit, wrapping) for `airtime_us`
    comes within the guard times of one already scheduled."""
    low = (start - TX_GUARD_BEFORE_US) & 0xFFFFFFFF
    length = TX_GUARD_BEFORE_US + airtime_us + TX_GUARD_AFTER_US
    for other, other_us in busy:
        other_low = (other - TX_GUARD_BEFORE_US) & 0xFFFFFFFF
        other_length = TX_GUARD_BEFORE_US + other_us + TX_GUARD_AFTER_US
        # two intervals on a circle of 2^32 us overlap when either starts inside the other
        if (other_low - low) & 0xFFFFFFFF < length or (low - other_low) & 0xFFFFFFFF < other_length:
            return True
    return False


def _remember(table: OrderedDict[_K, _V], key: _K, value: _V) -> None:
    """Insert, dropping the oldest entries beyond _MAX_REMEMBERED (bounded memory)."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > _MAX_REMEMBERED:
        table.popitem(last=False)
