"""docs/reference/config.md, the gateway configuration reference, against the loader and the
shipped examples: the page is generated from the tables the loader reads keys by
(scripts/config_reference.py), so these check that it is current, that it names every key the
examples use, and that every table it lists is one the loader reads and guards."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway import config
from gateway.errors import ConfigError

from .command import ROOT

REFERENCE = ROOT / "docs" / "reference" / "config.md"
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


def reference() -> dict[str, tuple[bool, dict[str, str]]]:
    """The page's tables: dotted path -> (an array of tables?, key -> its default cell)."""
    tables: dict[str, tuple[bool, dict[str, str]]] = {}
    keys: dict[str, str] = {}
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        if heading := re.fullmatch(r"#+ `(\[\[?)([\w.]+)\]\]?`", line):
            keys = {}
            tables[heading[2]] = (heading[1] == "[[", keys)
        elif row := re.match(r"\| `(\w+)` \| [^|]+ \| ([^|]*) \|", line):
            keys[row[1]] = row[2]
    return tables


def test_the_configuration_reference_is_current() -> None:
    """The page is generated from gateway/config.py: a changed key, default or doc string
    without the regenerated page fails here (run scripts/config_reference.py)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config_reference.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _switched_on(text: str) -> str:
    """An example with its commented-out tables and keys (`# cert_file = ...`) switched on."""
    return re.sub(r"(?m)^# (\[\[?[\w.]+\]\]?|\w+ = .*)$", r"\1", text)


def _walk(
    table: dict[str, Any], path: str = "", array: bool = False
) -> list[tuple[str, bool, str]]:
    """(table path, an array of tables?, key) for every key of a parsed document, "" for the
    key of a table itself; a sub-table is a key of its parent too (usb in [[serial]])."""
    out = [(path, array, "")] if path else []
    for name, value in table.items():
        dotted = f"{path}.{name}" if path else name
        if path:
            out.append((path, array, name))
        if isinstance(value, dict):
            out += _walk(value, dotted)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                out += _walk(item, dotted, array=True)
        elif not path:
            out.append(("", False, name))  # a key outside any table
    return out


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_key_of_a_shipped_example_is_in_the_reference(example: Path) -> None:
    text = _switched_on(example.read_text(encoding="utf-8"))
    document = tomllib.loads(text)
    config.parse(copy.deepcopy(document), str(example))  # and the loader takes all of it
    tables = reference()
    used = _walk(document)
    assert used, example
    for path, array, key in used:
        assert path in tables, f"{example.name}: [{path}] is not in {REFERENCE.name}"
        assert tables[path][0] == array, f"{example.name}: [{path}] as an array of tables?"
        assert not key or key in tables[path][1], f"{example.name}: {path}.{key} is not there"


# what each table needs, so that the loader gets as far as the table's other keys
_USB = {"vid": "10c4", "pid": "ea60"}
REQUIRED: dict[str, dict[str, Any]] = {
    "serial": {"usb": _USB},
    "serial.usb": _USB,
    "lora.packet_forwarder": {"listen": "127.0.0.1:1700", "gateways": ["AA555A0000000000"]},
    "lora.spi": {"freq_khz": 868100},
}


def _document(
    path: str, tables: dict[str, tuple[bool, dict[str, str]]], **keys: Any
) -> tuple[dict[str, Any], str]:
    """A configuration holding the table at `path` (and its parents) with `keys` in it, and
    where that table is in it ("lora.spi[0].pins")."""
    document: dict[str, Any] = {}
    table, where = document, []
    parts = path.split(".")
    for i, part in enumerate(parts):
        dotted = ".".join(parts[: i + 1])
        inner = copy.deepcopy(REQUIRED.get(dotted, {}))
        array = tables[dotted][0]
        table[part] = [inner] if array else inner
        where.append(f"{part}[0]" if array else part)
        table = inner
    table.update(keys)
    return document, ".".join(where)


def test_every_table_of_the_reference_is_one_the_loader_reads() -> None:
    """Each table the page lists is read by the loader: filled with its required keys it is
    accepted, with each key at the default the page shows too, and a key the page does not
    list is refused by name, there."""
    tables = reference()
    assert set(tables) == {s.path for s in config.sections()[1:]}
    for path, (_array, keys) in tables.items():
        document, where = _document(path, tables)
        config.parse(document, "gateway.toml")
        for key, cell in keys.items():
            literal = re.fullmatch(r"`([^`]+)`", cell)
            if literal is not None:  # one default, as written in the file
                value = tomllib.loads(f"v = {literal[1]}")["v"]
                config.parse(_document(path, tables, **{key: value})[0], "gateway.toml")
        with pytest.raises(ConfigError) as refused:
            config.parse(_document(path, tables, colour="red")[0], "gateway.toml")
        assert refused.value.key == f"{where}.colour", path
        assert "unknown key" in refused.value.problem


def test_the_documented_defaults_are_the_defaults_in_code() -> None:
    """No file (GatewayConfig() in load(None)) and an empty one mean the same; so do the
    tables built in code and the same tables read from a file."""
    assert config.parse({}) == config.GatewayConfig()
    read = config.parse({"mqtt": {}, "serial": [{"url": "/dev/null"}]})
    assert read.mqtt == config.MqttConfig()
    assert read.serial == (config.SerialPortConfig(name="port1", url="/dev/null"),)
