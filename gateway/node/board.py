"""A connection to a MicroPython board's raw REPL over USB serial, for deploy and doctor.

mpremote's SerialTransport does the REPL protocol (raw REPL, raw-paste flow control); this
module adds what a technician needs on top: the port's problems as one-line errors with the
fix (busy, permission denied, absent, not MicroPython, unplugged), and the few file operations
deploy needs, each one round trip: hash many files at once, write a file in base64 chunks,
rename a set of files.

Everything that can go wrong on the wire raises NodeCommandError (or its subclass
BoardDisconnected); nothing here prints.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import io
import json
import os
import tempfile
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import serial
from mpremote.transport import TransportError, TransportExecError
from mpremote.transport_serial import SerialTransport

from .errors import NodeCommandError

__all__ = ["Board", "BoardDisconnected", "open_board", "port_error"]

RAW_REPL_TIMEOUT_S = 2  # a board running the application answers Ctrl-C within milliseconds
RAW_REPL_ATTEMPTS = 3  # a board still starting up (just reset) may miss the first Ctrl-C
READ_TIMEOUT_S = 0.5
WRITE_CHUNK = 1024  # raw bytes per round trip: small enough for a board's compiler heap


class BoardDisconnected(NodeCommandError):
    """The board stopped answering or vanished in the middle of a command."""


def port_error(port: str, exc: OSError) -> NodeCommandError:
    """The one-line explanation and fix for an error opening `port`."""
    code = exc.errno
    if code in (errno.EBUSY, errno.EAGAIN):
        return NodeCommandError(
            f"port {port} busy: another program (mpremote, a serial monitor, a running "
            "gateway?) has it open: close it and try again"
        )
    if code == errno.EACCES:
        return NodeCommandError(
            f"permission denied on {port}: add yourself to the dialout group "
            "(sudo usermod -aG dialout $USER) and log in again"
        )
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return NodeCommandError(
            f"no serial port {port}: plug the board in (and use a data cable, not a "
            "charge-only one); edgeveil node list-ports shows what is connected"
        )
    return NodeCommandError(f"cannot open {port}: {exc.strerror or exc}")


def _probe(port: str) -> None:
    """Open and close the port once: mpremote swallows the reason an open fails."""
    try:
        with serial.Serial(port, 115200, exclusive=True):
            pass
    except serial.SerialException as exc:
        raise port_error(port, exc) from None
    except OSError as exc:
        raise port_error(port, exc) from None


class Board:
    """A board in its raw REPL. Create it with open_board()."""

    def __init__(self, port: str, transport: SerialTransport) -> None:
        self.port = port
        self._transport = transport

    def exec(self, code: str, timeout: float = 10) -> bytes:
        """Run `code` on the board; its printed output. A Python exception on the board
        raises NodeCommandError with the exception's last line."""
        try:
            out, err = self._transport.exec_raw(code, timeout=timeout)
        except TransportError as exc:
            raise self._lost(exc) from None
        except (serial.SerialException, OSError) as exc:
            raise self._lost(exc) from None
        if err:
            last = err.decode("utf-8", "replace").strip().splitlines()[-1:]
            raise NodeCommandError(
                f"the board reported an error: {last[0] if last else 'no detail'}"
            )
        return bytes(out)

    def exec_json(self, code: str, timeout: float = 10) -> Any:
        """Run `code`, which prints one JSON document as its last line; that document."""
        out = self.exec(code, timeout).decode("utf-8", "replace").strip().splitlines()
        try:
            return json.loads(out[-1])
        except (IndexError, ValueError):
            raise NodeCommandError(
                f"unexpected answer from the board on {self.port}: {' '.join(out)[:120]!r}"
            ) from None

    def _lost(self, exc: Exception) -> BoardDisconnected:
        return BoardDisconnected(
            f"the board on {self.port} stopped answering ({exc}): check the cable"
        )

    # -- files ------------------------------------------------------------------------------

    def sha256(self, paths: Sequence[str]) -> dict[str, str | None]:
        """The SHA-256 (hex) of each file on the board; None for a file that is absent."""
        code = _HASH_SCRIPT + f"print(json.dumps({{p: _h(p) for p in {list(paths)!r}}}))\n"
        result = self.exec_json(code, timeout=30)
        if not isinstance(result, dict):
            raise NodeCommandError(f"unexpected answer from the board on {self.port}")
        return {str(k): (None if v is None else str(v)) for k, v in result.items()}

    def makedirs(self, directories: Sequence[str]) -> None:
        """Create the directories (parents first) that do not exist yet."""
        if directories:
            self.exec(_MKDIRS_SCRIPT + f"for d in {sorted(set(directories))!r}:\n _mk(d)\n")

    def write_file(
        self, path: str, data: bytes, progress: Callable[[int], None] | None = None
    ) -> None:
        """Write `data` to `path`, in chunks of WRITE_CHUNK bytes (one round trip each)."""
        self.exec(f"import binascii\n_f = open({path!r}, 'wb')\n_a = binascii.a2b_base64\n")
        for start in range(0, len(data), WRITE_CHUNK):
            chunk = data[start : start + WRITE_CHUNK]
            self.exec(f"_f.write(_a({base64.b64encode(chunk)!r}))\n")
            if progress is not None:
                progress(len(chunk))
        self.exec("_f.close()\ndel _f\n")

    def rename(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Rename each (old, new) in order, replacing `new`; all in one round trip."""
        if pairs:
            self.exec(_RENAME_SCRIPT + f"for a, b in {list(pairs)!r}:\n _mv(a, b)\n")

    def remove(self, paths: Sequence[str]) -> None:
        """Delete the files that exist among `paths`."""
        if paths:
            self.exec(
                f"import os\nfor p in {list(paths)!r}:\n try:\n  os.remove(p)\n"
                " except OSError:\n  pass\n"
            )

    def remove_empty_dirs(self, directories: Sequence[str]) -> None:
        """Delete those of the directories (deepest first) that are empty; all in one round
        trip. An empty package directory left on the flash would shadow the same package on
        the ROM filesystem (a directory on the path is taken as a namespace package)."""
        if directories:
            ordered = sorted(set(directories), key=lambda d: (-d.count("/"), d))
            self.exec(
                f"import os\nfor d in {ordered!r}:\n try:\n  os.rmdir(d)\n"
                " except OSError:\n  pass\n"
            )

    # -- the ROM filesystem ------------------------------------------------------------------

    def romfs_sha256(self, length: int) -> str:
        """The SHA-256 (hex) of the first `length` bytes of ROM filesystem partition 0."""
        digest = self.exec_json(
            "import vfs, hashlib, binascii, json\n"
            f"_d = hashlib.sha256(memoryview(vfs.rom_ioctl(2, 0))[:{length}]).digest()\n"
            "print(json.dumps(binascii.hexlify(_d).decode()))\n",
            timeout=30,
        )
        return str(digest)

    def write_romfs(self, image: bytes) -> None:
        """Write a ROM filesystem image into partition 0 (umounting /rom first).

        Through mpremote's own `romfs deploy`, which knows how each port erases and writes
        its partition (a flash object on rp2 and esp32, a memory segment elsewhere) and how to
        send the image fast; its progress text is not shown."""
        from mpremote.commands import CommandError, _do_romfs_deploy  # noqa: PLC0415
        from mpremote.main import State  # noqa: PLC0415

        state = State()
        state.transport = self._transport
        state._auto_soft_reset = False  # stay in this raw REPL session: no soft reset
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "node.romfs"
            path.write_bytes(image)
            args = types.SimpleNamespace(path=str(path), partition=0, mpy=False)
            try:
                with contextlib.redirect_stdout(io.StringIO()) as said:
                    _do_romfs_deploy(state, args)
            except (CommandError, SystemExit, TransportExecError) as exc:
                last = said.getvalue().strip().splitlines()[-1:]
                raise NodeCommandError(
                    f"writing the ROM filesystem failed: {last[0] if last else exc}"
                ) from None
            except (TransportError, serial.SerialException, OSError) as exc:
                raise self._lost(exc) from None

    def hard_reset(self) -> None:
        """machine.reset(): the board restarts and runs boot.py, then main.py."""
        with contextlib.suppress(TransportError, serial.SerialException, OSError):
            self._transport.exec_raw_no_follow("import machine\nmachine.reset()\n")

    def restart_application(self) -> None:
        """Leave the REPL with a soft reboot (Ctrl-D at the friendly prompt): boot.py and
        main.py run again, so a node interrupted for a check goes back to reporting."""
        with contextlib.suppress(TransportError, serial.SerialException, OSError):
            self._transport.exit_raw_repl()
            self._transport.serial.write(b"\x04")

    def close(self) -> None:
        with contextlib.suppress(TransportError, serial.SerialException, OSError):
            if self._transport.in_raw_repl:
                self._transport.exit_raw_repl()
        with contextlib.suppress(serial.SerialException, OSError):
            self._transport.close()


@contextlib.contextmanager
def open_board(port: str) -> Iterator[Board]:
    """The board on `port`, interrupted (Ctrl-C) and in its raw REPL; closed on exit.

    NodeCommandError (one line with the fix) when the port cannot be opened or what answers
    is not MicroPython."""
    if not os.path.exists(port) and "://" not in port:
        raise port_error(port, FileNotFoundError(errno.ENOENT, "not found"))
    _probe(port)
    try:
        # mpremote prints what it received when the raw REPL does not answer: keep it quiet
        with contextlib.redirect_stdout(io.StringIO()):
            # a read timeout: on a pty mpremote reads without checking for data first
            transport = SerialTransport(port, baudrate=115200, timeout=READ_TIMEOUT_S)
    except TransportError as exc:
        raise NodeCommandError(f"cannot open {port}: {exc}") from None
    board = Board(port, transport)
    try:
        _enter_raw_repl(port, transport)
        yield board
    finally:
        board.close()


def _enter_raw_repl(port: str, transport: SerialTransport) -> None:
    for _ in range(RAW_REPL_ATTEMPTS):
        try:
            # mpremote prints what it received when the raw REPL does not answer
            with contextlib.redirect_stdout(io.StringIO()):
                transport.enter_raw_repl(soft_reset=False, timeout_overall=RAW_REPL_TIMEOUT_S)
        except TransportError:
            continue
        except (serial.SerialException, OSError) as exc:
            raise BoardDisconnected(
                f"the board on {port} went away ({exc}): check the cable"
            ) from None
        return
    raise NodeCommandError(
        f"the board on {port} does not answer as MicroPython: flash MicroPython first "
        "(edgeveil node flash --port ... --firmware ...), or press its reset button and try "
        "again"
    )


_HASH_SCRIPT = """\
import hashlib, binascii, json
def _h(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    h = hashlib.sha256()
    b = bytearray(512)
    m = memoryview(b)
    while True:
        n = f.readinto(b)
        if not n:
            break
        h.update(m[:n])
    f.close()
    return binascii.hexlify(h.digest()).decode()
"""

_MKDIRS_SCRIPT = """\
import os
def _mk(d):
    try:
        os.mkdir(d)
    except OSError:
        pass
"""

# FAT (ESP32's default until 1.22) refuses to rename onto an existing name; littlefs does not
_RENAME_SCRIPT = """\
import os
def _mv(a, b):
    try:
        os.rename(a, b)
    except OSError:
        os.remove(b)
        os.rename(a, b)
"""
