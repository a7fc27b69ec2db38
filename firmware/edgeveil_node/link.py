# The serial link: sealed frames out (COBS + CRC framing from protocol/), acknowledgements,
# time and configuration in. Frames wait in a bounded queue until the gateway acknowledges them,
# and are sent again with exponential backoff. A link is anything with send(frame) and poll();
# LoRa (lora_link.py) plugs in behind the same two methods.

import sys
import time

from micropython import const

from protocol import (
    RemoteProtocolError,
    ReplayWindow,
    StreamDecoder,
    encode_serial,
    open_frame,
    parse_header,
)

_MAX_BACKOFF_SHIFT = const(5)  # at most 32 x the ack timeout between two tries
_CTRL_C = const(3)
_CTRL_C_QUIET_MS = const(250)


def accept_downlink(frame, keys, window):
    """The message of a frame from the gateway, or None when the frame is for another node (a
    shared line, a radio channel) or a duplicate (which changes nothing). Raises
    RemoteProtocolError when the frame does not verify or is a replay."""
    header = parse_header(frame)
    if header.node_id != keys.node_id:
        return None
    message = open_frame(frame, keys, False, header)
    if window.check(header.counter) != 1:  # not NEW
        return None
    window.accept(header.counter)
    return message


class Pending:
    """One sealed frame waiting for its acknowledgement."""

    def __init__(self, counter, frame, droppable, due_ms):
        self.counter = counter
        self.frame = frame
        self.droppable = droppable  # readings and observations may go when the queue is full
        self.attempts = 0
        self.due_ms = due_ms


class RetransmitQueue:
    """Frames sent but not yet acknowledged, oldest first, at most `size` of them."""

    def __init__(self, size, ack_timeout_ms, max_retries):
        self.size = size
        self.ack_timeout_ms = ack_timeout_ms
        self.max_retries = max_retries
        self.items = []
        self.dropped = 0  # pushed out by newer frames (queue full)
        self.given_up = 0  # no acknowledgement after max_retries tries
        self.retransmissions = 0

    def __len__(self):
        return len(self.items)

    def add(self, counter, frame, droppable, now_ms):
        """Queue a frame that is due for its first send now. When full, the oldest droppable
        frame (else the oldest frame) makes room: a node keeps its newest data."""
        if len(self.items) >= self.size:
            victim = 0
            for i, item in enumerate(self.items):
                if item.droppable:
                    victim = i
                    break
            self.items.pop(victim)
            self.dropped += 1
        self.items.append(Pending(counter, frame, droppable, now_ms))

    def ack(self, counters):
        before = len(self.items)
        self.items = [p for p in self.items if p.counter not in counters]
        return before - len(self.items)

    def due(self, now_ms):
        """Frames to send now. Each send schedules the next try with doubling backoff; a frame
        that has had max_retries + 1 tries without an acknowledgement is given up."""
        out = []
        keep = []
        for p in self.items:
            if time.ticks_diff(now_ms, p.due_ms) < 0:
                keep.append(p)
                continue
            if p.attempts > self.max_retries:
                self.given_up += 1
                continue
            if p.attempts:
                self.retransmissions += 1
            shift = p.attempts if p.attempts < _MAX_BACKOFF_SHIFT else _MAX_BACKOFF_SHIFT
            p.attempts += 1
            p.due_ms = time.ticks_add(now_ms, self.ack_timeout_ms << shift)
            out.append(p)
            keep.append(p)
        self.items = keep
        return out

    def next_due_ms(self, now_ms):
        """Milliseconds until the earliest retry, or None when nothing waits."""
        if not self.items:
            return None
        return max(0, min(time.ticks_diff(p.due_ms, now_ms) for p in self.items))


class UartPort:
    """A link over a dedicated UART (machine.UART)."""

    def __init__(self, uart):
        self._uart = uart

    def write(self, data):
        self._uart.write(data)

    def read(self):
        n = self._uart.any()
        return self._uart.read(n) if n else None


class ConsolePort:
    """A link over the USB REPL line itself (sys.stdin/stdout), where console text and frames
    share the wire (protocol/framing.py tells them apart).

    Ctrl-C must stay usable by a technician (mpremote sends it to stop the application), but a
    frame from the gateway may contain the byte 0x03. So the keyboard interrupt is switched off
    while the application runs, and two or more 0x03 bytes followed by a quiet line (no frame
    ever ends like that: it ends with 0x00) are taken as a technician's Ctrl-C.
    """

    def __init__(self):
        import select  # noqa: PLC0415

        import micropython  # noqa: PLC0415 - the REPL port only

        micropython.kbd_intr(-1)
        self._micropython = micropython
        self._in = sys.stdin.buffer
        self._out = sys.stdout.buffer
        self._poll = select.poll()
        self._poll.register(self._in, select.POLLIN)
        self._ctrl_c = 0
        self._last_ms = 0

    def write(self, data):
        self._out.write(data)

    def read(self):
        data = bytearray()
        while self._poll.poll(0) and len(data) < 256:
            data += self._in.read(1)
        now = time.ticks_ms()
        if data:
            tail = 0
            while tail < len(data) and data[len(data) - 1 - tail] == _CTRL_C:
                tail += 1
            self._ctrl_c = self._ctrl_c + tail if tail == len(data) else tail
            # the stubs type ticks as an opaque _TicksMs, which the initial 0 (a valid tick) is not
            self._last_ms = now  # type: ignore[assignment]
            return bytes(data)
        if self._ctrl_c >= 2 and time.ticks_diff(now, self._last_ms) > _CTRL_C_QUIET_MS:
            self._micropython.kbd_intr(3)
            raise KeyboardInterrupt
        return None


class SerialLink:
    """Sends sealed frames; receives and verifies the gateway's frames for this node."""

    MAX_SIGHTINGS = 12  # per observations frame: 12 x 10 bytes fits a 256-byte frame easily

    def __init__(self, port, keys):
        self._port = port
        self._keys = keys
        self._decoder = StreamDecoder()
        self._window = ReplayWindow()  # downlink counters of this boot
        self.sent = 0
        self.rejected = 0  # line noise and frames that do not verify

    def send(self, frame):
        self._port.write(encode_serial(frame))
        self.sent += 1

    def poll(self):
        """Verified messages from the gateway that arrived since the last call."""
        data = self._port.read()
        if not data:
            return ()
        self._decoder.feed(data)
        messages = []
        while True:
            try:
                frame = self._decoder.next_event()
                if not isinstance(frame, bytes):  # NEED_DATA
                    return messages
                message = accept_downlink(frame, self._keys, self._window)
                if message is not None:
                    messages.append(message)
            except RemoteProtocolError:
                self.rejected += 1
