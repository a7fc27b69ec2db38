"""`edgeveil node provision`: identity, configuration the firmware accepts, registration, label."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import segno

from firmware.edgeveil_node import config as node_config  # the firmware's own validation
from gateway.node.provision import label_text, qr_payload
from gateway.registry import NodeRegistry

from .command import edgeveil


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_provision_into_a_registry_writes_a_config_the_firmware_accepts(tmp_path: Path) -> None:
    registry = tmp_path / "state" / "registry.db"
    registry.parent.mkdir()
    out = tmp_path / "node.json"
    result = edgeveil(
        "node", "provision", "--zone", "hal-noord", "--registry", str(registry),
        "--out", str(out), "--sensor", "bme280:i2c=0,scl=22,sda=21", "--sensor", "pir:pin=4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert _mode(out) == 0o600
    config = node_config.Config(data)  # the node's own validation
    assert config.zone == "hal-noord"
    assert [s["type"] for s in config.sensors] == ["bme280", "pir"]
    with NodeRegistry.open(registry) as reg:
        entry = reg.get(data["node_id"])
        assert entry is not None
        assert entry.zone == "hal-noord"
        # the registry holds the secret the node was given: keys derived from both agree
        assert entry.keys.node_id == config.node_id
        assert reg.export_file(tmp_path / "check.json") == 1
    exported = json.loads((tmp_path / "check.json").read_text())["nodes"][0]
    assert exported["secret"] == data["secret"]
    # the label: id and zone, never the secret
    assert f"node {data['node_id']}" in result.stdout
    assert data["secret"] not in result.stdout + result.stderr


def test_replace_provisions_a_new_identity_in_the_old_ones_place(tmp_path: Path) -> None:
    registry = tmp_path / "state" / "registry.db"
    registry.parent.mkdir()
    old = edgeveil(
        "node", "provision", "--zone", "plein-oost", "--registry", str(registry),
        "--out", str(tmp_path / "old.json"),
    )  # fmt: skip
    assert old.returncode == 0, old.stderr
    old_id = json.loads((tmp_path / "old.json").read_text())["node_id"]
    new = edgeveil(
        "node", "provision", "--replace", str(old_id), "--registry", str(registry),
        "--out", str(tmp_path / "new.json"),
    )  # fmt: skip
    assert new.returncode == 0, new.stderr
    data = json.loads((tmp_path / "new.json").read_text())
    assert data["node_id"] != old_id and data["zone"] == "plein-oost"
    assert data["secret"] != json.loads((tmp_path / "old.json").read_text())["secret"]
    assert f"it replaces node {old_id}, which the gateway revokes when it first hears" in (
        new.stdout
    )
    with NodeRegistry.open(registry) as reg:
        assert reg.successors() == {old_id: data["node_id"]}
    assert _mode(registry) == 0o600
    elsewhere = edgeveil(
        "node", "provision", "--replace", str(old_id), "--zone", "markt", "--registry",
        str(registry), "--out", str(tmp_path / "x.json"),
    )  # fmt: skip
    assert elsewhere.returncode == 2
    assert f"node {old_id} hangs in 'plein-oost'" in elsewhere.stderr
    unknown = edgeveil(
        "node", "provision", "--replace", "12345", "--registry", str(registry),
        "--out", str(tmp_path / "y.json"),
    )  # fmt: skip
    assert unknown.returncode == 2 and "node 12345 is not in" in unknown.stderr
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()


def test_export_file_collects_a_box_of_boards_and_the_gateway_imports_it(tmp_path: Path) -> None:
    export = tmp_path / "for-gateway.json"
    ids = []
    for i in range(3):
        out = tmp_path / f"node{i}.json"
        result = edgeveil(
            "node", "provision", "--zone", f"z{i}", "--export", str(export), "--out", str(out)
        )
        assert result.returncode == 0, result.stderr
        ids.append(json.loads(out.read_text())["node_id"])
        assert f"edgeveil gateway import-nodes {export}" in result.stdout
    assert len(set(ids)) == 3
    assert _mode(export) == 0o600
    with NodeRegistry.open(tmp_path / "gw.db") as reg:
        assert reg.import_file(export) == 3
        assert sorted(reg.node_ids()) == sorted(ids)


def test_fixed_node_id_taken_and_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    registry = tmp_path / "registry.db"
    first = edgeveil(
        "node", "provision", "--zone", "a", "--registry", str(registry), "--node-id", "77",
        "--out", str(tmp_path / "a.json"),
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    cases = [
        (["--node-id", "77"], "node 77 is registered"),
        (["--sensor", "bme999"], "unknown type 'bme999'"),
        (["--sensor", "bme280:i2c=0,scl=22"], 'missing "sda"'),
        (["--link", "wifi"], "--link 'wifi'"),
        (["--zone", "x" * 40], "at most 32 bytes"),
    ]
    for extra, expected in cases:
        args = ["node", "provision", "--zone", "b", "--registry", str(registry),
                "--out", str(tmp_path / "b.json"), *extra]  # fmt: skip
        result = edgeveil(*args)
        assert result.returncode == 2, (extra, result.stderr)
        assert expected in result.stderr, (extra, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "b.json").exists()
    with NodeRegistry.open(registry) as reg:
        assert reg.node_ids() == [77]  # nothing registered by the failed attempts


def test_template_supplies_link_and_sensors_but_not_identity(tmp_path: Path) -> None:
    template = tmp_path / "template.json"
    template.write_text(
        json.dumps(
            {
                "link": {"type": "serial", "port": "uart", "uart": 1, "tx": 17, "rx": 16},
                "sensors": [{"type": "sht4x", "i2c": 0, "scl": 22, "sda": 21}],
                "intervals": {"reading_s": 60},
            }
        )
    )
    out = tmp_path / "n.json"
    ok = edgeveil(
        "node", "provision", "--zone", "z", "--export", str(tmp_path / "e.json"),
        "--template", str(template), "--out", str(out),
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    config = node_config.Config(json.loads(out.read_text()))
    assert config.link["port"] == "uart"
    assert config.intervals["reading_s"] == 60
    template.write_text(json.dumps({"secret": "00" * 16}))
    bad = edgeveil(
        "node", "provision", "--zone", "z", "--export", str(tmp_path / "e.json"),
        "--template", str(template),
    )  # fmt: skip
    assert bad.returncode == 2
    assert "has 'secret': remove it" in bad.stderr


def test_label_qr_holds_id_and_zone_only() -> None:
    payload = qr_payload(4660, "plein-noord")
    assert payload == "edgeveil node 4660 zone plein-noord"
    expected = io.StringIO()
    segno.make(payload, error="m").terminal(out=expected, compact=True, border=2)
    assert label_text(4660, "plein-noord").endswith(expected.getvalue())
