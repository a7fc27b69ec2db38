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

import binascii
import os
import struct

from micropython import const

STEP = const(32)  # counters reserved per flash write: 1 write per 32 frames
MAX_COUNTER = const(0xFFFFFFFF)
# The stored limit is 4 bytes, so it can promise at most "nothing at or above 2^32 - 1 was
# used": the node's last counter is 2^32 - 2 (a limit of 2^32 would not fit, and truncated to
# 0 it would start the counter again under the same keys: the reuse this module prevents).
LAST = const(0xFFFFFFFE)
# fewer left than this: the node says so with every status (event counter_low, SPEC.md 7.4),
# weeks ahead even at a frame a second, so that it is replaced before it must fall silent
LOW_WATER = const(1 << 20)
EXHAUSTED = (
    "frame counter exhausted: this node has used every nonce of its keys and seals nothing "
    "more; give the board a new identity (edgeveil node provision --replace NODE, then deploy)"
)
_SLOTS = ("counter.a", "counter.b")
_FORMAT = ">II"  # sequence, limit


class CounterError(Exception):
    """The persisted counter is unreadable or exhausted: the node must not send."""


def _read_slot(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if len(data) != 12:
        return False
    if binascii.crc32(data[:8]) != struct.unpack(">I", data[8:])[0]:
        return False
    return struct.unpack(_FORMAT, data[:8])


class FrameCounter:
    def __init__(self, directory="", step=STEP):
        self._paths = [directory + name for name in _SLOTS]
        self._step = step
        found = [_read_slot(p) for p in self._paths]
        valid = [s for s in found if s]
        if not valid and any(s is False for s in found):
            raise CounterError(
                "counter files are corrupt: the node cannot know which counters it used. "
                "Provision it with a new secret."
            )
        if valid:
            best = max(valid)  # highest sequence number wins
            self._seq, self._limit = best
            self._slot = found.index(best)
        else:  # a freshly provisioned node
            self._seq, self._limit, self._slot = 0, 0, 1
        self.next_value = self._limit
        self.writes = 0
        if self.next_value > LAST:  # never wraps: a wrapped counter reuses nonces
            raise CounterError(EXHAUSTED)

    def remaining(self):
        """Counters left before the node must stop sealing."""
        return max(0, LAST + 1 - self.next_value)

    def _persist(self, limit):
        self._seq += 1
        self._slot ^= 1  # never overwrite the slot that holds the newest valid limit
        head = struct.pack(_FORMAT, self._seq, limit)
        data = head + struct.pack(">I", binascii.crc32(head))
        with open(self._paths[self._slot], "wb") as f:
            f.write(data)
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
            self._persist(min(value + self._step, LAST + 1))
        self.next_value = value + 1
        return value
