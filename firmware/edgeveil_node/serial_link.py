# The serial link: sealed frames out (COBS + CRC framing from protocol/), acknowledgements,
# time and configuration in, over a dedicated UART or the USB REPL line itself.

import sys
import time

from micropython import const

from protocol import RemoteProtocolError, ReplayWindow, StreamDecoder, encode_serial

from .link import accept_downlink, load_window

_CTRL_C = const(3)
_CR = const(13)
_CTRL_C_QUIET_MS = const(250)
_FRAME_GAP_MS = const(50)


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

    Ctrl-C must stay usable by a technician (mpremote sends "\\r\\x03" to stop the application
    before it takes the raw REPL), but a frame from the gateway may contain the byte 0x03. So the
    keyboard interrupt is switched off while the application runs and this port decides: a 0x03
    inside a frame (between its 0x00 delimiters) is data; outside a frame it is a Ctrl-C when it
    follows a carriage return or another 0x03, or when the line stays quiet after it. The port
    stops reading at that byte, so what the technician's tool sent next (the raw REPL request)
    stays on the line for the REPL.
    """

    def __init__(self, stream_in=None, stream_out=None):
        import select  # noqa: PLC0415

        import micropython  # noqa: PLC0415 - the REPL port only

        micropython.kbd_intr(-1)
        self._micropython = micropython
        self._in = stream_in if stream_in is not None else sys.stdin.buffer
        self._out = stream_out if stream_out is not None else sys.stdout.buffer
        self._poll = select.poll()
        self._poll.register(self._in, select.POLLIN)
        self._in_frame = False
        self._frame_len = 0
        self._previous = 0
        self._last_ms = time.ticks_ms()
        self._ctrl_c_ms = None  # a lone Ctrl-C waiting for the quiet that confirms it

    def write(self, data):
        self._out.write(data)

    def _interrupt(self):
        self._micropython.kbd_intr(3)
        raise KeyboardInterrupt

    def read(self):
        now = time.ticks_ms()
        if self._in_frame and time.ticks_diff(now, self._last_ms) > _FRAME_GAP_MS:
            self._in_frame = False  # the gateway writes a frame at once: a pause ends it
        data = bytearray()
        while len(data) < 256 and self._poll.poll(0):
            byte = self._in.read(1)[0]
            self._last_ms = now
            if byte == _CTRL_C and not self._in_frame:
                if self._previous in (_CTRL_C, _CR):
                    self._interrupt()
                self._ctrl_c_ms = now
            else:
                self._ctrl_c_ms = None
            if byte == 0:
                opening = not self._in_frame or not self._frame_len
                self._in_frame = opening
                self._frame_len = 0
            elif self._in_frame:
                self._frame_len += 1
            self._previous = byte
            data.append(byte)
        if self._ctrl_c_ms is not None and time.ticks_diff(now, self._ctrl_c_ms) > _CTRL_C_QUIET_MS:
            self._interrupt()
        return bytes(data) if data else None


class SerialLink:
    """Sends sealed frames; receives and verifies the gateway's frames for this node."""

    MAX_SIGHTINGS = 12  # per observations frame: 12 x 10 bytes fits a 256-byte frame easily

    def __init__(self, port, keys, window_file=None):
        """window_file: where the downlink replay window's highest counter is kept across
        reboots (link.DOWNLINK_FILE on a board); None keeps it in RAM only (tests)."""
        self._port = port
        self._keys = keys
        self._decoder = StreamDecoder()
        self._window_file = window_file
        self._window = load_window(window_file, keys.epoch) if window_file else ReplayWindow()
        self.sent = 0
        self.rejected = 0  # line noise and frames that do not verify

    def rekey(self, keys):
        """Open the gateway's frames with the keys of a new epoch: its counters start again."""
        self._keys = keys
        self._window = ReplayWindow()

    def send(self, frame, personal=False):  # personal: as LoRaLink's (nothing is dropped)
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
                message = accept_downlink(frame, self._keys, self._window, self._window_file)
                if message is not None:
                    messages.append(message)
            except RemoteProtocolError:
                self.rejected += 1
