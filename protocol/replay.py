# The replay rule a receiver applies to one node's frame counters (SPEC.md "Replay window").
#
# A sliding window of WINDOW counters below the highest counter accepted so far, like IPsec's
# (RFC 4303 section 3.4.3) and OSCORE's (RFC 8613 section 7.4):
#   counter > highest                      -> NEW (the window slides up)
#   highest - WINDOW < counter <= highest  -> NEW if not seen yet, else DUPLICATE
#   counter <= highest - WINDOW            -> rejected: REPLAY (too old to tell)
# A DUPLICATE is a retransmission whose acknowledgement was lost: acknowledge it again, forward
# nothing. check() is pure; accept() records a counter and must be called only after the frame
# authenticated and what it produced was durably stored, so forged frames cannot move the window
# and a crash before storing leaves the counter acceptable.

from .errors import LocalProtocolError, Reason, RemoteProtocolError

WINDOW = 64
NEW = 1
DUPLICATE = 2


class ReplayWindow:
    """Replay state of one node: the highest accepted counter and a bitmap of the WINDOW below.

    Persist (highest, bitmap) with the node's registry entry so replays stay rejected across
    restarts; bit i of bitmap set means counter highest - i was accepted.
    """

    def __init__(self, highest: int = -1, bitmap: int = 0) -> None:
        self.highest = highest
        self.bitmap = bitmap

    def check(self, counter: int) -> int:
        """NEW or DUPLICATE; raises RemoteProtocolError(REPLAY) for a counter below the window."""
        if counter > self.highest:
            return NEW
        offset = self.highest - counter
        if offset >= WINDOW:
            raise RemoteProtocolError(
                Reason.REPLAY,
                "counter "
                + str(counter)
                + " is "
                + str(offset)
                + " below the highest accepted ("
                + str(self.highest)
                + "), outside the window of "
                + str(WINDOW),
            )
        return DUPLICATE if self.bitmap >> offset & 1 else NEW

    def accept(self, counter: int) -> None:
        """Record an authenticated, stored frame's counter."""
        if counter > self.highest:
            shift = counter - self.highest
            self.bitmap = (
                ((self.bitmap << shift) | 1) & ((1 << WINDOW) - 1) if shift < WINDOW else 1
            )
            self.highest = counter
            return
        offset = self.highest - counter
        if offset >= WINDOW:
            raise LocalProtocolError("accept() of a counter that check() rejects")
        self.bitmap |= 1 << offset
