# Pick the backend once: cbor2 + cryptography where they exist (the gateway), our own small
# implementations where they do not (MicroPython on the node).
try:
    from ._fast import cbor_dumps, cbor_loads, hkdf_sha256, new_aead
except ImportError:
    from ._small import cbor_dumps, cbor_loads, hkdf_sha256, new_aead

__all__ = ["cbor_dumps", "cbor_loads", "hkdf_sha256", "new_aead"]
