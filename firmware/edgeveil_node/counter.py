# The frame counter: the COSE Partial IV of every frame this node seals. A counter value must
# never be used twice with the same key, not even after a power cut at any instant, or AES-CCM
# loses its confidentiality. And it must spare the flash.
#
# Skip-ahead (the scheme of OSCORE, RFC 8613 appendix B.1.1): the flash holds a *limit* L,
# "no counter below L has been promised to be unused". Counters below L may be handed out only
# after L was written; when the next counter reaches L, L + STEP is written first. After a
# reboot the node resumes at the stored L, so it skips at most STEP - 1 unused values, which the
# gateway's replay window accepts (a jump forwards is always NEW).
#
# Two slots, written alternately, each with a sequence number and a CRC-32, so a write torn by a
# power cut damages only the slot being written; the other still holds the previous limit, which
# is at least every counter used so far (counters beyond it need the new write to finish first).
# If slot files exist but neither is valid, the node refuses to send: it cannot know where it was.
#
# Each slot also holds the key epoch the counter belongs to (protocol v1.1, SPEC.md section 9):
# new keys start their counter at 0, so the epoch and its counter are written in one slot, in
# one write. A slot of the first firmware (12 bytes, no epoch) reads as epoch 0.

import binascii
import os
import struct

# No const(): it saves RAM only for private names, and without `micropython` imported the
# module runs on CPython too (deploy reads and writes counter state with it).

STEP = 32  # counters reserved per flash write: 1 write per 32 frames
MAX_COUNTER = 0xFFFFFFFF
# The stored limit is 4 bytes, so it can promise at most "nothing at or above 2^32 - 1 was
# used": the node's last counter is 2^32 - 2 (a limit of 2^32 would not fit, and truncated to
# 0 it would start the counter again under the same keys: the reuse this module prevents).
LAST = 0xFFFFFFFE
# fewer left than this: the node says so with every status (event counter_low, SPEC.md 7.4),
# weeks ahead even at a frame a second, so that it is replaced before it must fall silent
LOW_WATER = 1 << 20
EXHAUSTED = (
    "frame counter exhausted: this node has used every nonce of its keys and seals nothing "
    "more; give the board a new identity (edgeveil node provision --replace NODE, then deploy)"
)
SLOTS = ("counter.a", "counter.b")
_FORMAT = ">III"  # sequence, limit, key epoch; then the CRC-32 of these 12 bytes


class CounterError(Exception):
    """The persisted counter is unreadable or exhausted: the node must not send."""


def slot_bytes(seq, limit, epoch):
    """One slot file's content (deploy writes the first one, gateway/node/deploy.py)."""
    head = struct.pack(_FORMAT, seq, limit, epoch)
    return head + struct.pack(">I", binascii.crc32(head))


def _read_slot(path):
    """(sequence, limit, epoch), None when there is no file, False when it is damaged."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return parse_slot(data)


def parse_slot(data):
    """A slot file's (sequence, limit, epoch), or False when it is damaged."""
    n = len(data) - 4
    if n not in (8, 12) or binascii.crc32(data[:n]) != struct.unpack(">I", data[n:])[0]:
        return False
    if n == 8:  # the first firmware's slot: no epoch
        return struct.unpack(">II", data[:8]) + (0,)
    return struct.unpack(_FORMAT, data[:n])


class FrameCounter:
    def __init__(self, directory="", step=STEP, epoch=0):
        """`epoch`: the key epoch to start at when there is no counter state at all."""
        self._paths = [directory + name for name in SLOTS]
        self._step = step
        found = [_read_slot(p) for p in self._paths]
        valid = [s for s in found if s]
        if not valid and any(s is False for s in found):
            raise CounterError(
                "counter files are corrupt: the node cannot know which counters it used. "
                "Deploy it again (edgeveil node deploy gives it fresh keys)."
            )
        self.found = bool(valid)  # False: no counter state on this flash at all
        if valid:
            best = max(valid)  # highest sequence number wins
            self._seq, self._limit, self.epoch = best
            self._slot = found.index(best)
        else:  # a freshly provisioned node
            self._seq, self._limit, self._slot, self.epoch = 0, 0, 1, epoch
        self.next_value = self._limit
        self.writes = 0
        if self.next_value > LAST:  # never wraps: a wrapped counter reuses nonces
            raise CounterError(EXHAUSTED)

    def remaining(self):
        """Counters left before the node must stop sealing."""
        return max(0, LAST + 1 - self.next_value)

    def persist(self, limit, epoch):
        self._seq += 1
        self._slot ^= 1  # never overwrite the slot that holds the newest valid limit
        with open(self._paths[self._slot], "wb") as f:
            f.write(slot_bytes(self._seq, limit, epoch))
        if hasattr(os, "sync"):
            os.sync()
        self._limit = limit
        self.writes += 1

    def take(self):
        """The next unused counter value, persisting a new limit first when needed."""
        value = self.next_value
        if value > LAST:
            raise CounterError(EXHAUSTED)
        if value >= self._limit:
            self.persist(min(value + self._step, LAST + 1), self.epoch)
        self.next_value = value + 1
        return value
