# `vfs` of an emulated board whose build has a ROM filesystem (MICROPY_VFS_ROM, as ports/rp2
# with MICROPY_HW_ROMFS_BYTES or ports/esp32 with a romfs partition): the interpreter's own vfs
# plus rom_ioctl(), the interface mpremote's `romfs deploy` and VfsRom use (extmod/vfs.h
# MP_VFS_ROM_IOCTL_*). The partition is a host file, read at power-on and written back when a
# write completes; the segment is a memoryview of it, as a port hands out its flash.
from vfs import *  # noqa: F403
import vfs as _vfs

_PARTITION = "/.emulator-romfs/partition"
_BLOCK = 4096  # erase granularity, as the rp2 and esp32 flash
_MIN_WRITE = 4
_EINVAL = 22

with open(_PARTITION, "rb") as _f:
    _rom = bytearray(_f.read())
del _f


def rom_ioctl(op, rom_id=0, *args):
    if op == 1:  # number of segments
        return 1
    if rom_id != 0:
        return -_EINVAL
    if op == 2:  # the segment
        return memoryview(_rom)
    if op == 3:  # prepare to write: erase (offset, length) or the first length bytes
        offset, length = args if len(args) == 2 else (0, args[0])
        if offset < 0 or offset + length > len(_rom):
            return -_EINVAL
        for i in range(offset, offset + length):
            _rom[i] = 0xFF
        return _MIN_WRITE
    if op == 4:  # write
        offset, buf = args
        if offset < 0 or offset + len(buf) > len(_rom):
            return -_EINVAL
        _rom[offset : offset + len(buf)] = buf
        return 0
    if op == 5:  # write complete
        with open(_PARTITION, "wb") as f:
            f.write(_rom)
        return 0
    if op == 6:  # block size
        return _BLOCK
    return -_EINVAL


def mount_at_boot():
    """What mp_vfs_mount_romfs_protected() does at start-up: mount a valid image at /rom.
    True when mounted."""
    try:
        _vfs.mount(_vfs.VfsRom(memoryview(_rom)), "/rom")
    except OSError:
        return False  # no image (an erased partition) or not a valid one
    return True
