"""The technician commands, `edgeveil node ...`: from a fresh board to a registered,
reporting node, and on-the-spot diagnosis of one that is not reporting.

One module per command (provision, flash, deploy, monitor, doctor), one for the connection to
a board's MicroPython REPL (board, wrapping mpremote), and `cli` with the argument parsers
(imported by gateway.cli; it imports nothing heavy so `edgeveil --help` stays fast).
"""
