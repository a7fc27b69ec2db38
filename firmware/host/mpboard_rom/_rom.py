# The emulated board's main loop, inside its interpreter. The emulator (firmware/host/mpboard.py)
# owns the REPL protocol on the serial line; this loop asks it what to run next and reports the
# result: "raw" code (raw REPL: output, then the error text separately), a "line" typed at the
# friendly REPL, or a "file" run at boot (boot.py, main.py).
import sys

import gc

import _host
import emu_gc
import emu_micropython
import emu_os
import emu_time

sys.modules["time"] = emu_time
sys.modules["utime"] = emu_time
sys.modules["os"] = emu_os
sys.modules["uos"] = emu_os
sys.modules["micropython"] = emu_micropython
sys.modules["gc"] = emu_gc
gc.disable()  # see emu_gc.py

import emu_machine  # noqa: E402 - after `time`: the chip models import it

sys.modules["machine"] = emu_machine
if _host.call("board")["aes"]:
    import cryptolib  # noqa: F401 - kept in sys.modules; the ROM path goes below

import io  # noqa: E402
from binascii import hexlify  # noqa: E402
import select  # noqa: E402

_romfs = None
if _host.call("board")["romfs"]:
    import emu_vfs as _romfs  # noqa: E402

    sys.modules["vfs"] = _romfs

sys.path[:] = ["", ".frozen", "/lib"]  # the board's own path: the ROM is not importable
if _romfs is not None and _romfs.mount_at_boot():
    sys.path[2:2] = ["/rom", "/rom/lib"]  # as ports do in mp_init(): after ".frozen"
_stdin = sys.stdin.buffer
_poll = select.poll()
_poll.register(_stdin, select.POLLIN)


def _leftover():
    """Bytes the program left unread on the line: they go back to the REPL, as on a board.
    The emulator holds new input from here on; what it already passed on is read until the
    line has been quiet for 20 ms (a pty hands bytes over asynchronously)."""
    _host.call("finishing")
    data = bytearray()
    while _poll.poll(20) and len(data) < 4096:
        data += _stdin.read(1)
    return hexlify(data).decode()


def _traceback(exc):
    text = io.StringIO()
    sys.print_exception(exc, text)
    # the ROM's own frames are not part of the program's traceback on a board
    return "".join(line + "\n" for line in text.getvalue().split("\n") if line and "/.emulator/" not in line)


def _run(request, scope):
    kind = request["kind"]
    if kind == "file":
        with open(request["path"]) as f:
            code = compile(f.read(), request["path"], "exec")
    elif kind == "line":
        code = compile(request["code"], "<stdin>", "single")
    else:
        code = compile(request["code"], "<stdin>", "exec")
    exec(code, scope)


def _serve():
    scope = {"__name__": "__main__"}
    while True:
        request = _host.call("next")
        error = ""
        reset = False
        try:
            _run(request, scope)
        except SystemExit:
            reset = request["kind"] == "file"  # sys.exit() in main.py: soft reset
        except BaseException as exc:  # noqa: BLE001 - a board prints every error and goes on
            error = _traceback(exc)
        _host.call("done", error, _leftover(), reset)


_serve()
