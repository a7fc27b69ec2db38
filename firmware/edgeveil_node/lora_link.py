# The LoRa link: sealed frames out over a LoRa modem, one radio packet per frame (no COBS: the
# packet's own length delimits it and its CRC drops most corrupted packets, SPEC.md section 1),
# acknowledgements and time in through a receive window after an uplink when acks are on.
#
# Same interface as SerialLink (serial_link.py: send(frame), poll() -> verified gateway
# messages), plus what the application asks of a radio: `acks` (False: fire and forget, nothing is retransmitted),
# `max_frame` (readings and status are split to fit) and next_due_ms() (when a frame held back
# by the duty cycle may go). The modem is any object with micropython-lib's `lora` modem API
# (SX1276, SX1262, or the simulator's modem): only send(), recv() and configure() are used.
#
# Before a frame goes on air:
# - its size is checked against the spreading factor's limit (airtime.max_frame): too big is
#   dropped and counted (dropped_too_big), never sent;
# - the duty-cycle limiter is asked: a frame that would exceed the sub-band's hourly share waits
#   in a small queue (deferred_duty_cycle counts frames queued to wait) and goes once it fits;
# - over the daily airtime budget, readings and observations are dropped (dropped_budget: by the
#   time the budget returns they are stale); status and events wait for it.
#
# Receive windows: like LoRaWAN class A's RX1, the modem listens 1 s after the end of the uplink
# (RP002: RECEIVE_DELAY1), on the uplink's frequency and spreading factor unless configured
# (rx_freq_khz, rx_sf), with inverted IQ as LoRaWAN downlinks use (so that nodes do not hear
# each other's uplinks in their windows). A frame received there may be followed at once by a
# second one (an ack and then a time_sync); the window stays open for it, at most two frames.
# When nothing at all came in RX1, RX2 opens 2 s after the end of the uplink (RECEIVE_DELAY2)
# on its own channel (rx2_freq_khz, rx2_sf: 869.525 MHz SF12 by default), the same way: the
# gateway answers there when RX1 was not free (duty cycle, another downlink, a late uplink).
# A window need only catch the start of a downlink: the SX127x's symbol timeout and the
# SX126x's RX timer stop once a preamble and header are detected, and the packet is then
# received whole (the simulator's modem does the same), so RX1 has closed before RX2 opens.

import time

from micropython import const

from protocol import RemoteProtocolError, ReplayWindow, parse_header

from .airtime import max_frame, symbol_time_us, time_on_air_us
from .dutycycle import DutyCycleLimiter
from .link import accept_downlink, load_window

RX_DELAY_MS = const(1000)  # RX1 opens 1 s after the end of the uplink (LoRaWAN RECEIVE_DELAY1)
RX2_DELAY_MS = const(2000)  # RX2 1 s later (RECEIVE_DELAY2), when nothing came in RX1
_RX_EARLY_MS = const(20)  # listen a little before the gateway starts: our clock is in ms
_MAX_DOWNLINKS = const(2)  # frames one receive window takes: an ack, then a time_sync
_QUEUE = const(8)  # frames waiting for airtime
_READINGS = const(0)  # message types that go stale and may be dropped (protocol/messages.py)
_OBSERVATIONS = const(1)


def modem_config(link):
    """The micropython-lib `lora_cfg` for a validated "link" configuration (config.py)."""
    return {
        "freq_khz": link["freq_khz"],
        "sf": link["sf"],
        "bw": link["bw_khz"],
        "coding_rate": link["coding_rate"],
        "preamble_len": link["preamble_len"],
        "syncword": link["syncword"],
        "output_power": link["output_power"],
        "crc_en": True,
        "implicit_header": False,
        "invert_iq_tx": False,
        "invert_iq_rx": True,  # downlinks come with inverted IQ, as in LoRaWAN
    }


_MOST_SIGHTINGS = const(12)  # per frame, as on a serial line (serial_link.SerialLink)


def sightings_per_frame(limit):
    """BLE sightings that fit one observations frame of at most `limit` bytes: at worst an 18-byte
    frame overhead (header 1, key epoch 1, kid 4, counter 4, tag 8), 2 bytes of array head and
    radio, and 10
    bytes per sighting (array head, 6-byte address as a byte string, 2-byte RSSI; SPEC.md 7.2).
    At most 12 even where more would fit (SF7-SF9): sealing a frame allocates about 45 bytes
    per sighting in one pass of the scheduler, and a node's heap has no room for twenty
    (docs/firmware/ram.md); two more frames of 14 bytes' overhead per crowd of 64 cost less."""
    fit = (limit - 20) // 10
    return fit if fit < _MOST_SIGHTINGS else _MOST_SIGHTINGS


class LoRaLink:
    def __init__(self, modem, keys, link, limiter=None, window_file=None):
        """window_file: as SerialLink's (link.DOWNLINK_FILE on a board, None in tests)."""
        self._modem = modem
        self._keys = keys
        self._window_file = window_file
        self.freq_khz = link["freq_khz"]
        self.sf = link["sf"]
        self.bw_khz = link["bw_khz"]
        self._coding_rate = link["coding_rate"]
        self._preamble_len = link["preamble_len"]
        self.acks = link["acks"]
        self.max_frame = max_frame(self.sf)
        self.MAX_SIGHTINGS = sightings_per_frame(self.max_frame)
        if limiter is None:
            limiter = DutyCycleLimiter(link["daily_airtime_s"] * 1000)
        self.limiter = limiter
        rx_sf = link.get("rx_sf", self.sf)
        rx_freq = link.get("rx_freq_khz", self.freq_khz)
        self._rx_cfg = None  # RX1's settings when they differ from the uplink's
        if rx_sf != self.sf or rx_freq != self.freq_khz:
            self._rx_cfg = {"freq_khz": rx_freq, "sf": rx_sf}
        self.rx_window_ms = self._window_ms(rx_sf)
        rx2_sf = link.get("rx2_sf", 12)
        self._rx2_cfg = {"freq_khz": link.get("rx2_freq_khz", 869525), "sf": rx2_sf}
        self.rx2_window_ms = self._window_ms(rx2_sf)
        self._waiting = []  # (frame, droppable) oldest first
        self._held_by_band = False  # the oldest waiting frame waits for the duty cycle
        self._inbox = []  # frames received in the last windows, not yet verified
        self._window = load_window(window_file, keys.epoch) if window_file else ReplayWindow()
        self._rx_packet = None  # reused by modem.recv() for a packet of the same length
        self._ticks = time.ticks_ms()
        self._elapsed_ms = 0  # monotonic: ticks wrap, the limiter's hour and day must not
        self._retry_at = 0  # elapsed ms before which a waiting frame need not be tried again
        self.sent = 0
        self.dropped_too_big = 0
        self.deferred_duty_cycle = 0
        self.dropped_budget = 0
        self.dropped_queue = 0  # pushed out of a full queue while frames waited for airtime
        self.dropped = 0  # all of the dropped_* above but personal frames, for the status
        self.rx_rejected = 0  # downlinks with a bad CRC or that do not verify
        self.received = 0
        # for the status (SPEC.md 7.3, v1.1), presence frames left out
        self.airtime_ms = 0
        self.too_big = 0
        self._rx_signal = None  # (RSSI dBm, SNR dB) of the last downlink heard

    def _window_ms(self, sf):
        """How long a receive window listens: long enough to detect a downlink that starts on
        time (its preamble, sync word and header: preamble + 12.25 symbols), from our early
        start to as late after the gateway's moment (our clock counts in ms)."""
        symbols = self._preamble_len + 13
        return 2 * _RX_EARLY_MS + symbol_time_us(sf, self.bw_khz * 1000) * symbols // 1000 + 1

    def airtime_us(self, length):
        return time_on_air_us(
            length, self.sf, self.bw_khz * 1000, self._coding_rate, self._preamble_len
        )

    def _now(self):
        now = time.ticks_ms()
        self._elapsed_ms += time.ticks_diff(now, self._ticks)
        self._ticks = now
        return self._elapsed_ms

    # -- uplink ----------------------------------------------------------------------------

    def rekey(self, keys):
        """As SerialLink.rekey: the keys of a new epoch, the gateway's counters from 0."""
        self._keys = keys
        self._window = ReplayWindow()

    def send(self, frame, personal=False):
        """personal: a frame whose number says people were near (sightings, motion): its
        drops are left out of `dropped`, which the node's status reports."""
        if len(frame) > self.max_frame:
            self.dropped_too_big += 1
            if not personal:
                self.dropped += 1
                self.too_big += 1
            return
        for item in self._waiting:
            if item[0] == frame:
                return  # a retransmission of a frame that still waits for airtime
        if len(self._waiting) >= _QUEUE:
            self._drop_oldest()
        droppable = parse_header(frame).msg_type in (_READINGS, _OBSERVATIONS)
        self._waiting.append((frame, droppable, personal))
        self._retry_at = 0
        self._transmit()
        if self._held_by_band and self._waiting and self._waiting[-1][0] is frame:
            self.deferred_duty_cycle += 1

    def _drop_oldest(self):
        victim = 0
        for i, item in enumerate(self._waiting):
            if item[1]:
                victim = i
                break
        item = self._waiting.pop(victim)
        self.dropped_queue += 1
        if not item[2]:
            self.dropped += 1

    def _transmit(self):
        """Send the oldest waiting frame the limits allow (at most one per call, as the
        scheduler does one unit of work per pass: next_due_ms() says 0 while more may go);
        drop on the way those that can never go."""
        while self._waiting:
            item = self._waiting[0]
            airtime = self.airtime_us(len(item[0]))
            now = self._now()
            budget = self.limiter.budget_wait_ms(airtime, now)
            if budget is None or (budget and item[1]):
                self._waiting.pop(0)
                self.dropped_budget += 1
                if not item[2]:
                    self.dropped += 1
                continue
            band = self.limiter.band_wait_ms(self.freq_khz, self.bw_khz, airtime, now)
            if band is None:  # longer than the sub-band's whole hour: not at SF12 or below
                self._waiting.pop(0)
                self.dropped_too_big += 1
                if not item[2]:
                    self.dropped += 1
                continue
            self._held_by_band = bool(band)
            if band or budget:  # a status or event waits for the daily budget too
                self._retry_at = now + (band if band > budget else budget)
                return
            self.limiter.spend(self.freq_khz, self.bw_khz, airtime, now)
            self._waiting.pop(0)
            if not item[2]:
                self.airtime_ms += airtime // 1000
            tx_end = self._modem.send(item[0])
            self.sent += 1
            if self.acks:
                self._listen(tx_end)
            return

    def health(self, presence):
        """The link's status fields (SPEC.md 7.3, v1.1). `presence`: the node sends presence
        frames, whose airtime would show in the duty cycle's deferrals and the budget's drops:
        those are left out then."""
        out = {"airtime_ms": self.airtime_ms, "too_big": self.too_big}
        if not presence:
            out["deferred"] = self.deferred_duty_cycle
            out["budget_drops"] = self.dropped_budget
        if self._rx_signal is not None:
            rssi = self._rx_signal[0]
            out["downlink_rssi"] = -200 if rssi < -200 else 50 if rssi > 50 else rssi
            out["downlink_snr"] = self._rx_signal[1]
        return out

    def next_due_ms(self):
        """Milliseconds until a waiting frame may go, or None when none waits."""
        if not self._waiting:
            return None
        return max(0, self._retry_at - self._now())

    # -- downlink --------------------------------------------------------------------------

    def _listen(self, tx_end):
        """RX1 after an uplink that ended at `tx_end` (ticks_ms, as modem.send() returns it),
        then RX2 if nothing came in RX1."""
        try:
            opens = time.ticks_add(tx_end, RX_DELAY_MS - _RX_EARLY_MS)
            if not self._rx_window(opens, self._rx_cfg, self.rx_window_ms):
                opens = time.ticks_add(tx_end, RX2_DELAY_MS - _RX_EARLY_MS)
                self._rx_window(opens, self._rx2_cfg, self.rx2_window_ms)
        finally:
            self._modem.configure({"freq_khz": self.freq_khz, "sf": self.sf})

    def _rx_window(self, opens, cfg, window_ms):
        """Up to two frames in a window that opens at `opens` (ticks_ms), on `cfg`'s channel
        (None: the uplink's); the number of packets heard there, good or not."""
        if cfg is not None:
            self._modem.configure(cfg)
        for heard in range(_MAX_DOWNLINKS):
            wait = time.ticks_diff(opens, time.ticks_ms())
            if wait > 0:
                time.sleep_ms(wait)
            packet = self._modem.recv(timeout_ms=window_ms, rx_packet=self._rx_packet)
            if packet is None:
                return heard
            self._rx_packet = packet
            if not packet.valid_crc:  # micropython-lib's RxPacket (lora/modem.py)
                self.rx_rejected += 1
            else:
                self.received += 1
                self._inbox.append(bytes(packet))
                # RxPacket's SNR counts quarter dB; clamped to the status field's range
                snr = (packet.snr + 2) // 4
                self._rx_signal = (packet.rssi, -50 if snr < -50 else 50 if snr > 50 else snr)
            opens = time.ticks_ms()  # a second frame follows at once, if at all
        return _MAX_DOWNLINKS

    def poll(self):
        """Verified messages from the gateway received since the last call. Also sends frames
        that waited for airtime once the limits allow."""
        if self._waiting and self._now() >= self._retry_at:
            self._transmit()
        if not self._inbox:
            return ()
        frames = self._inbox
        self._inbox = []
        messages = []
        for frame in frames:
            try:
                message = accept_downlink(frame, self._keys, self._window, self._window_file)
            except RemoteProtocolError:
                self.rx_rejected += 1
                continue
            if message is not None:
                messages.append(message)
        return messages
