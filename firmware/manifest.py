# Freezes the node application into a MicroPython firmware image (see "Building a firmware
# image" in the README): `make BOARD=... FROZEN_MANIFEST=/path/to/firmware/manifest.py`.
include("$(PORT_DIR)/boards/manifest.py")
package("edgeveil_node")
package("protocol", base_path="..")
module("main.py")
