"""edgeveil wire protocol v1: sealed CBOR frames between sensor nodes and their gateway.

Sans-IO (in the style of h11): bytes in, messages out; messages in, bytes out. The same source
runs on MicroPython (the node) and CPython (the gateway). SPEC.md is the normative description.
"""

from .envelope import (
    LORA_MAX_FRAME,
    MAX_FRAME,
    TAG_LENGTH,
    Header,
    enc_structure,
    external_aad,
    from_cose,
    open_frame,
    parse_header,
    seal,
    to_cose,
)
from .errors import LocalProtocolError, ProtocolError, Reason, RemoteProtocolError
from .framing import NEED_DATA, StreamDecoder
from .framing import encode as encode_serial
from .keys import PROTOCOL_VERSION, NodeKeys
from .messages import (
    Ack,
    ConfigUpdate,
    Event,
    Message,
    Observations,
    Readings,
    Status,
    TimeSync,
)
from .replay import DUPLICATE, NEW, ReplayWindow

__all__ = [
    "DUPLICATE",
    "LORA_MAX_FRAME",
    "MAX_FRAME",
    "NEED_DATA",
    "NEW",
    "PROTOCOL_VERSION",
    "TAG_LENGTH",
    "Ack",
    "ConfigUpdate",
    "Event",
    "Header",
    "LocalProtocolError",
    "Message",
    "NodeKeys",
    "Observations",
    "ProtocolError",
    "Readings",
    "Reason",
    "RemoteProtocolError",
    "ReplayWindow",
    "Status",
    "StreamDecoder",
    "TimeSync",
    "enc_structure",
    "encode_serial",
    "external_aad",
    "from_cose",
    "open_frame",
    "parse_header",
    "seal",
    "to_cose",
]
