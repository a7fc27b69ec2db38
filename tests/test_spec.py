"""protocol/SPEC.md: its generated tables match protocol/quantities.py and the golden vectors;
its reason and settings tables, key-derivation examples and worked examples match the code."""

from __future__ import annotations

import re
import subprocess
import sys

from protocol import NodeKeys, Reason
from protocol._backend import cbor_dumps
from protocol.messages import CONFIG_FIELDS

from .conftest import ROOT, VECTORS


def test_spec_tables_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "spec_tables.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


SPEC = (ROOT / "protocol" / "SPEC.md").read_text(encoding="utf-8")


def section(number: str) -> str:
    """The text of one top-level section ("12") or subsection ("6.2") of SPEC.md."""
    level = "###" if "." in number else "##"
    start = SPEC.index(f"\n{level} {number}. " if level == "##" else f"\n{level} {number} ")
    end = SPEC.find("\n## ", start + 1)
    following = SPEC.find("\n### ", start + 1) if level == "###" else -1
    ends = [e for e in (end, following) if e != -1]
    return SPEC[start : min(ends) if ends else len(SPEC)]


def table_rows(text: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|") and not line.startswith("|-")
    ]


def test_title_names_the_revision() -> None:
    assert SPEC.startswith("# edgeveil wire protocol, version 1.1\n")


def test_reason_table_matches_the_code() -> None:
    rows = [r for r in table_rows(section("12")) if r[0].isdigit()]
    table = {int(r[0]): r[1].strip("`") for r in rows}
    known = {code: Reason.name(code) for code in range(256) if Reason.name(code) != "unknown"}
    assert table == known
    assert table[Reason.RETIRED_KEY] == "retired_key"


def test_config_settings_table_matches_the_code() -> None:
    rows = [r for r in table_rows(section("7.7")) if r[0].isdigit()]
    assert [(int(r[0]), r[1].strip("`")) for r in rows] == [(k, n) for k, n, _ in CONFIG_FIELDS]
    assert "? 6 => 1..255," in section("7.7")


def hex_after(text: str, marker: str) -> str:
    """The bytes of the annotated hex dump after `marker`: its first 36 columns (the annotations
    start after them), up to the end of its code block."""
    block = text[text.index(marker) :].split("```", 2)[1]
    return "".join("".join(line[:36].split()) for line in block.splitlines())


def test_key_derivation_examples() -> None:
    text = section("3")
    v1_info = ["edgeveil", 1, b"\x12\x34", "uplink key", 16]
    assert hex_after(text, "Example, node id 4660") == cbor_dumps(v1_info).hex()
    assert hex_after(text, "The same node at key epoch 16") == cbor_dumps([*v1_info, 16]).hex()
    inline = cbor_dumps([*v1_info, 16]).hex(" ")
    assert f"`{inline}`" in text.replace("\n", " ")
    keys = {
        e: NodeKeys(4660, bytes.fromhex("c91504b7c70940e86ed6cacb93e60655"), epoch=e)
        for e in (0, 16)
    }
    for e in (0, 16):
        assert keys[e].uplink_key.hex() in text
        assert keys[e].base_iv.hex() in text
    assert cbor_dumps([*v1_info, 255]).hex().endswith("18ff")


def test_worked_examples_are_the_vectors() -> None:
    by_name = {v["name"]: v for v in VECTORS["valid"]}
    for number, name in (("6.1", "readings-climate"), ("6.2", "readings-epoch-1")):
        text = section(number)
        v = by_name[name]
        assert f"`{name}`" in text
        for field in ("secret", "uplink_key", "base_iv", "nonce", "frame", "cose_encrypt0"):
            assert v[field] in text.replace(" ", ""), (name, field)
        frame = bytes.fromhex(v["frame"])
        assert f"The frame, {len(frame)} bytes" in text
        cose = bytes.fromhex(v["cose_encrypt0"])
        assert f"COSE_Encrypt0, {len(cose)} bytes" in text
    assert "`epoch-altered`" in section("6.2")


def test_every_vector_the_spec_names_exists() -> None:
    names = {v["name"] for v in VECTORS["valid"]} | {v["name"] for v in VECTORS["invalid"]}
    named = set(re.findall(r"`([a-z0-9]+(?:-[a-z0-9]+)+)`", SPEC))
    vector_like = {
        n
        for n in named
        if any(n.startswith(p) for p in ("readings-", "event-", "config-", "ack-", "key-epoch-"))
        or n in {"epoch-missing", "epoch-altered", "truncated-with-epoch", "wrong-version"}
    }
    assert vector_like <= names, vector_like - names
