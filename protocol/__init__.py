"""edgeveil wire protocol v1: sealed CBOR frames between sensor nodes and their gateway.

Sans-IO (in the style of h11): bytes in, messages out; messages in, bytes out. The same source
runs on MicroPython (the node) and CPython (the gateway). SPEC.md is the normative description.

Every public name is importable from here (`from protocol import seal`), and each is loaded from
its module on first use, the way micropython-lib's asyncio package does it: code costs heap on a
node, so a node loads only the modules it uses (no COSE mapping, no quantity names;
docs/firmware/ram.md). Importing a name loads its module and what that module imports, nothing else.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .cose import from_cose, to_cose
    from .envelope import (
        LORA_MAX_FRAME,
        MAX_FRAME,
        TAG_LENGTH,
        Header,
        enc_structure,
        external_aad,
        open_frame,
        parse_header,
        seal,
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

# public name -> its module, for __getattr__ (one module renames: framing's `encode`)
_MODULES = {
    "from_cose": "cose",
    "to_cose": "cose",
    "LORA_MAX_FRAME": "envelope",
    "MAX_FRAME": "envelope",
    "TAG_LENGTH": "envelope",
    "Header": "envelope",
    "enc_structure": "envelope",
    "external_aad": "envelope",
    "open_frame": "envelope",
    "parse_header": "envelope",
    "seal": "envelope",
    "LocalProtocolError": "errors",
    "ProtocolError": "errors",
    "Reason": "errors",
    "RemoteProtocolError": "errors",
    "NEED_DATA": "framing",
    "StreamDecoder": "framing",
    "encode_serial": "framing",
    "PROTOCOL_VERSION": "keys",
    "NodeKeys": "keys",
    "Ack": "messages",
    "ConfigUpdate": "messages",
    "Event": "messages",
    "Message": "messages",
    "Observations": "messages",
    "Readings": "messages",
    "Status": "messages",
    "TimeSync": "messages",
    "DUPLICATE": "replay",
    "NEW": "replay",
    "ReplayWindow": "replay",
}


def __getattr__(name: str) -> object:
    module = _MODULES.get(name)
    if module is None:
        # `from protocol import envelope`: MicroPython asks here before it looks for a submodule
        if name[:2] != "__":
            try:
                return __import__("protocol." + name, None, None, ("__name__",))
            except ImportError:
                pass
        raise AttributeError("module 'protocol' has no attribute '" + name + "'")
    attr = "encode" if name == "encode_serial" else name
    value = getattr(__import__("protocol." + module, None, None, (attr,)), attr)
    globals()[name] = value  # found directly from now on
    return value
