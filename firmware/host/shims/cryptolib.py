"""MicroPython's `cryptolib` for an emulated node: aes(key, mode) with ECB (mode 1) and CBC
(mode 2), on the `cryptography` package.

protocol/ uses cryptolib.aes(key, 1).encrypt as the block cipher of its own AES-CCM when it
runs on its MicroPython backend (the emulated node's default, see node.py), so this must be
exactly AES: tests compare it with cryptography's AES.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MODE_ECB = 1
MODE_CBC = 2
MODE_CTR = 6

__all__ = ["MODE_CBC", "MODE_ECB", "aes"]


class aes:  # MicroPython's name
    def __init__(self, key: Any, mode: int, IV: Any = None) -> None:
        key = bytes(key)
        if len(key) not in (16, 32):
            raise ValueError("key")  # MicroPython accepts AES-128 and AES-256 keys
        if mode == MODE_ECB:
            cipher_mode: Any = modes.ECB()  # noqa: S305 - one block at a time, for CCM
        elif mode == MODE_CBC:
            iv = bytes(IV) if IV is not None else bytes(16)
            if len(iv) != 16:
                raise ValueError("IV")
            cipher_mode = modes.CBC(iv)
        else:
            raise ValueError("mode")
        cipher = Cipher(algorithms.AES(key), cipher_mode)
        self._enc = cipher.encryptor()
        self._dec = cipher.decryptor()
        self._used: str | None = None

    def _run(self, ctx: Any, data: Any, out: Any, which: str) -> Any:
        if self._used not in (None, which):
            raise TypeError("can't " + which + " after " + self._used)  # one direction per object
        self._used = which
        data = bytes(data)
        if len(data) % 16:
            raise ValueError("blksize % 16")
        result = ctx.update(data)
        if out is None:
            return result
        if len(out) < len(result):
            raise ValueError("output too small")
        out[: len(result)] = result
        return None

    def encrypt(self, in_buf: Any, out_buf: Any = None) -> Any:
        return self._run(self._enc, in_buf, out_buf, "encrypt")

    def decrypt(self, in_buf: Any, out_buf: Any = None) -> Any:
        return self._run(self._dec, in_buf, out_buf, "decrypt")
