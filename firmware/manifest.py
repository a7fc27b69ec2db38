# Freezes the node application into a MicroPython firmware image (see docs/firmware/ram.md,
# which says why): `make BOARD=... FROZEN_MANIFEST=/path/to/firmware/manifest.py`.
include("$(PORT_DIR)/boards/manifest.py")
# The LoRa link (docs/firmware/lora.md): micropython-lib's modem drivers with the
# synchronous API. Both chips are frozen so that one image serves every board; a serial-only
# image may drop these three lines (hardware.py imports `lora` only for a LoRa link).
require("lora-sync")
require("lora-sx127x")
require("lora-sx126x")
package("edgeveil_node")
package("protocol", base_path="..")
module("main.py")
