# `micropython` of the emulated board: kbd_intr tells the emulator whether Ctrl-C on the line
# interrupts the program (as on a board) or is plain data for the program (kbd_intr(-1)).
from micropython import *  # noqa: F403

from _host import call as _call


def kbd_intr(char):
    _call("kbd_intr", char)
