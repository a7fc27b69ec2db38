"""LoRa links of the gateway: concentrators through the Semtech UDP packet forwarder
(`forwarder`, protocol in `semtech`) and single-channel SPI HATs (`spi`). Both deliver each
frame with its radio metadata (`radio.RadioMeta`) to the same ingest path as serial links.

Import the submodules themselves: this package imports nothing, so that ingest can use
`radio` without pulling in the transports (which use ingest's helpers).
"""
