# `cryptolib` of the emulated board: the C module of ESP32/RP2040 builds, with its call shape
# (cryptolib.aes(key, mode[, iv]), .encrypt(in[, out]), .decrypt(in[, out])). The block cipher
# runs in the emulator process (the `cryptography` package), as the C module runs in the board's
# firmware rather than in Python bytecode.
from binascii import hexlify, unhexlify

from _host import call as _call

MODE_ECB = 1
MODE_CBC = 2


class aes:  # noqa: N801 - the name of the C type
    def __init__(self, key, mode, iv=None):
        if len(key) not in (16, 24, 32):
            raise ValueError("key")
        if mode != MODE_ECB:
            raise ValueError("mode")  # the firmware only needs ECB (CCM runs on top of it)
        self._key = hexlify(key).decode()

    def _run(self, name, data, out):
        if len(data) % 16:
            raise ValueError("blksize")
        result = unhexlify(_call(name, self._key, hexlify(data).decode()))
        if out is None:
            return result
        out[: len(result)] = result
        return None

    def encrypt(self, data, out=None):
        return self._run("aes_encrypt", data, out)

    def decrypt(self, data, out=None):
        return self._run("aes_decrypt", data, out)
