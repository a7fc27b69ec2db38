# Per-node keys, derived from the node's secret with HKDF-SHA256 (RFC 5869).
#
# One secret per node, written by provisioning, known only to the node and its gateway's
# registry. From it come three values, each with its own HKDF info:
#   uplink key   (16 bytes)  seals node -> gateway frames
#   downlink key (16 bytes)  seals gateway -> node frames
#   base IV      (13 bytes)  XORed with the frame counter to make the nonce (COSE "Partial IV")
# Separate keys per direction mean the node's and the gateway's counters can never produce the
# same (key, nonce) pair, although both start at zero.
#
# info = CBOR ["edgeveil", 1, kid, label, length]: binding the node id means a secret copied to
# a second node id yields unrelated keys.
#
# Key epochs (protocol v1.1): epoch e >= 1 appends e to the info, CBOR ["edgeveil", 1, kid,
# label, length, e], so a node whose counter state was lost (an erased flash, a re-key) seals
# under fresh keys from counter 0 without a new secret. Epoch 0 is v1's derivation unchanged.
# The idea is OSCORE's ID Context (RFC 8613 section 3.3, appendix B.2).

from ._backend import cbor_dumps, hkdf_sha256, new_aead
from .errors import LocalProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PROTOCOL_VERSION = 1
KEY_LENGTH = 16
NONCE_LENGTH = 13
MIN_SECRET = 16
MAX_SECRET = 64
MAX_NODE_ID = 2**32 - 1
MAX_EPOCH = 255  # one byte on the wire (SPEC.md section 4)


def uint_bytes(value: int) -> bytes:
    """Shortest big-endian encoding of an unsigned int, at least one byte (0 -> b"\\x00").
    Used for the node id (COSE kid) and the frame counter (COSE Partial IV)."""
    n = 1
    while value >> (8 * n):
        n += 1
    return value.to_bytes(n, "big")


def _derive(secret: bytes, kid: bytes, label: str, length: int, epoch: int) -> bytes:
    items: "list[Any]" = ["edgeveil", PROTOCOL_VERSION, kid, label, length]
    if epoch:
        items.append(epoch)
    return hkdf_sha256(secret, b"", cbor_dumps(items), length)


def check_key_inputs(node_id: int, secret: bytes, epoch: int = 0) -> None:
    """Raise LocalProtocolError unless NodeKeys can derive keys from these; the message never
    shows the secret. For those who keep a secret to derive from later (the gateway's
    registry)."""
    if type(node_id) is not int or not 0 <= node_id <= MAX_NODE_ID:
        raise LocalProtocolError("node id must be an integer 0.." + str(MAX_NODE_ID))
    if not isinstance(secret, (bytes, bytearray)) or not MIN_SECRET <= len(secret) <= MAX_SECRET:
        raise LocalProtocolError(
            "node secret must be " + str(MIN_SECRET) + ".." + str(MAX_SECRET) + " bytes"
        )
    if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
        raise LocalProtocolError("key epoch must be an integer 0.." + str(MAX_EPOCH))


class NodeKeys:
    """Everything needed to seal and open one node's frames. Never log or print the fields."""

    def __init__(
        self, node_id: int, secret: bytes, aead_factory: "Any" = None, epoch: int = 0
    ) -> None:
        check_key_inputs(node_id, secret, epoch)
        factory = aead_factory or new_aead
        self.node_id = node_id
        self.epoch = epoch
        self.kid = uint_bytes(node_id)
        secret = bytes(secret)
        self.uplink_key = _derive(secret, self.kid, "uplink key", KEY_LENGTH, epoch)
        self.downlink_key = _derive(secret, self.kid, "downlink key", KEY_LENGTH, epoch)
        self.base_iv = _derive(secret, self.kid, "base iv", NONCE_LENGTH, epoch)
        self.uplink = factory(self.uplink_key)
        self.downlink = factory(self.downlink_key)
        self._iv_int = int.from_bytes(self.base_iv, "big")

    def nonce(self, counter: int) -> bytes:
        """COSE Partial IV rule (RFC 9052 section 3.1): left-pad the counter to 13 bytes, XOR
        with the base IV."""
        return (self._iv_int ^ counter).to_bytes(NONCE_LENGTH, "big")

    def __repr__(self) -> str:
        return "NodeKeys(node_id=" + str(self.node_id) + ", epoch=" + str(self.epoch) + ")"
