# `os` of the emulated board: the interpreter's VfsPosix on the emulated flash directory, plus
# statvfs (the WASI build has none) answered from the board's flash size.
from os import *  # noqa: F403
import os as _os

from _host import call as _call


def statvfs(path):
    return tuple(_call("statvfs", path))


def uname():
    return tuple(_call("uname"))


def ilistdir(path=""):
    # the WASI VfsPosix reports no sizes; a board's VFS does (mpremote ls shows them)
    for entry in _os.ilistdir(path):
        name, kind = entry[0], entry[1]
        size = 0 if kind == 0x4000 else _os.stat((path + "/" if path else "") + name)[6]
        yield (name, kind, 0, size)
