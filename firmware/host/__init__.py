"""The node firmware on a PC: emulated boards for CPython (never deployed to a board).

- shims/: MicroPython's machine, bluetooth, cryptolib and micropython modules; the directory is
  put first on sys.path of an emulated node's process, so the unchanged firmware imports them.
- sim/: register- and command-level models of the sensor chips, used by the driver tests and by
  the emulated board.
- board.py: the emulated board behind the shims (pty link, I2C buses with the chip models, pins,
  ADC, BLE radio, clock, scheduler, watchdog), built from the node's edgeveil.json.
- scenario.py: the seeded world around a node (environment, BLE crowd, faults).
- node.py: one emulated node process (`python -m firmware.host.node --flash DIR`).
- fleet.py: N supervised nodes with fresh identities and a gateway registry (`edgeveil emulate`).
- radio.py: the LoRa channel simulator (path loss, SNR floors, collisions with capture).
- sim/lora_modem.py: a modem with micropython-lib's `lora` API that transmits into the channel.
- forwarder.py: an emulated Semtech UDP packet forwarder (the concentrator gateway's side).
- lora_fleet.py: N emulated LoRa nodes and G forwarders on one channel, in simulated or real
  time (`edgeveil emulate --link lora`).
"""
