"""micropython-lib's `lora` package for an emulated board, so that the unchanged firmware's
`from lora import SX1276` (firmware/edgeveil_node/hardware.py) gets a modem with the same API.

The chip classes take the constructor arguments of micropython-lib's (lora-sx127x, lora-sx126x
with lora-sync) and return a modem on the radio medium of the fleet that started this board
(firmware/host/medium.py: MediumModem, found through EDGEVEIL_RADIO_MEDIUM): transmissions go
on the air of the fleet's channel simulator, receive windows hear what the channel delivers.
The SPI bus and pins are taken and not driven: the chip is emulated whole, not its registers.
Without a medium, constructing the chip raises OSError saying so, as a board whose radio does
not answer on SPI fails at start-up.
"""

from __future__ import annotations

from typing import Any

from firmware.host import board as _board
from firmware.host.medium import MediumModem, medium_from_environment
from firmware.host.sim.lora_modem import RxPacket

__all__ = ["SX1262", "SX1276", "ConfigError", "RxPacket"]


class ConfigError(ValueError):
    """micropython-lib's error for a lora_cfg value the chip does not support."""


def _modem(lora_cfg: dict[str, Any] | None) -> MediumModem:
    node_id = int(_board.current().config.get("node_id", 0))
    try:
        return MediumModem(node_id, medium_from_environment(), lora_cfg)
    except ValueError as exc:  # a setting out of range, as the real driver's ConfigError
        raise ConfigError(str(exc)) from exc


def SX1276(  # noqa: PLR0917 - micropython-lib's class name and signature
    spi: Any,
    cs: Any,
    dio0: Any = None,
    dio1: Any = None,
    reset: Any = None,
    lora_cfg: dict[str, Any] | None = None,
    ant_sw: Any = None,
) -> MediumModem:
    return _modem(lora_cfg)


def SX1262(  # noqa: PLR0917 - micropython-lib's class name and signature
    spi: Any,
    cs: Any,
    busy: Any,
    dio1: Any = None,
    dio2_rf_sw: bool = True,
    dio3_tcxo_millivolts: int | None = None,
    dio3_tcxo_start_time_us: int = 1000,
    reset: Any = None,
    lora_cfg: dict[str, Any] | None = None,
    ant_sw: Any = None,
) -> MediumModem:
    return _modem(lora_cfg)


SX1277 = SX1278 = SX1279 = SX1276
SX1261 = SX1262
