# Runs after boot.py on every start. All the work is in the edgeveil_node package (frozen into
# the firmware image, or copied as .mpy files by `edgeveil node deploy`).
from edgeveil_node.app import main

main()
