# What every link shares: frames wait in a bounded queue until the gateway acknowledges them,
# and are sent again with exponential backoff; a frame from the gateway is taken only when it
# verifies and is new. A link is anything with send(frame) and poll(): the serial link
# (serial_link.py) and LoRa (lora_link.py) plug in behind those two methods, and a node imports
# only the one its configuration names.

import time

from micropython import const

from protocol import Ack, Reason, RemoteProtocolError, ReplayWindow, open_frame, parse_header

_MAX_BACKOFF_SHIFT = const(5)  # at most 32 x the ack timeout between two tries
# the highest gateway counter taken (SPEC.md section 10), and its key epoch: "highest epoch"
# ("highest" alone: epoch 0)
DOWNLINK_FILE = "downlink.window"
_ALL_SEEN = 0xFFFFFFFFFFFFFFFF  # a window restored at boot: every counter up to highest seen


def load_window(path=DOWNLINK_FILE, epoch=0):
    """The replay window of the gateway's frames at boot (SPEC.md section 10): every counter
    up to the highest one persisted counts as seen, so a time sync or configuration update
    captured before a reboot is refused after it. None persisted yet, or persisted under
    another key epoch (the gateway's counters start again with new keys): a fresh window."""
    try:
        with open(path) as f:
            words = f.read().split()
        if int(words[1] if len(words) > 1 else 0) == epoch:
            return ReplayWindow(int(words[0]), _ALL_SEEN)
    except (OSError, ValueError, IndexError):
        pass
    return ReplayWindow()


def accept_downlink(frame, keys, window, path=None):
    """The message of a frame from the gateway, or None when the frame is for another node (a
    shared line, a radio channel), a duplicate (which changes nothing), or a time sync or
    configuration update whose counter could not be persisted first to `path` (the gateway
    sends it again). Raises RemoteProtocolError when the frame does not verify or is a
    replay. Acks are not persisted: a replayed ack names counters this node never uses again,
    and writing the flash for every ack would wear it out (SPEC.md section 10)."""
    header = parse_header(frame)
    if header.node_id != keys.node_id:
        return None
    if header.epoch != keys.epoch:  # keys this node no longer has, or not yet
        raise RemoteProtocolError(
            Reason.RETIRED_KEY if header.epoch < keys.epoch else Reason.UNKNOWN_NODE, ""
        )
    message = open_frame(frame, keys, False, header)
    if window.check(header.counter) != 1:  # not NEW
        return None
    if path is not None and not isinstance(message, Ack):
        try:
            with open(path, "w") as f:  # one small file: littlefs writes it atomically
                highest = str(max(header.counter, window.highest))
                f.write(highest + " " + str(keys.epoch) if keys.epoch else highest)
        except OSError:
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

    def next_due(self, now_ms):
        """The oldest frame to send now, or None. Sending schedules its next try with doubling
        backoff; a frame that has had max_retries + 1 tries without an acknowledgement is given
        up on the way."""
        items = self.items
        i = 0
        while i < len(items):
            p = items[i]
            if time.ticks_diff(now_ms, p.due_ms) < 0:
                i += 1
                continue
            if p.attempts > self.max_retries:
                self.given_up += 1
                items.pop(i)
                continue
            if p.attempts:
                self.retransmissions += 1
            shift = p.attempts if p.attempts < _MAX_BACKOFF_SHIFT else _MAX_BACKOFF_SHIFT
            p.attempts += 1
            p.due_ms = time.ticks_add(now_ms, self.ack_timeout_ms << shift)
            return p
        return None

    def next_due_ms(self, now_ms):
        """Milliseconds until the earliest retry, or None when nothing waits."""
        if not self.items:
            return None
        soonest = time.ticks_diff(self.items[0].due_ms, now_ms)
        for p in self.items:  # a loop, not min() over a generator: this runs every pass
            wait = time.ticks_diff(p.due_ms, now_ms)
            if wait < soonest:
                soonest = wait
        return max(0, soonest)
