"""`edgeveil gateway nodes`: what the gateway knows of each node's health (gateway/node_health.py),
kept by ingest, saved in the registry's file, read by the command line whether the gateway runs
or not. Presence frames leave no trace; forged frames never make a node "heard"."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway import config as config_mod
from gateway import service as service_mod
from gateway.lora.radio import DataRate, RadioMeta
from gateway.node_health import SILENT_DEFAULT_S, SILENT_FACTOR, HealthBook, NodeHealth, summary
from gateway.registry import NodeRegistry

from .command import edgeveil
from .gateway_harness import deadline, running_gateway
from .test_gateway_e2e import serial_site
from .waiting import until

SECRET = bytes(range(16))


def test_health_is_kept_saved_and_read_back(tmp_path: Path) -> None:
    with NodeRegistry.open(tmp_path / "registry.db") as registry:
        registry.add(3, SECRET, "hal")
        book = HealthBook(registry)
        radio = RadioMeta(
            "AA555A0000000001", -97.0, 7.5, 868_100_000, DataRate(9, 125), "4/5", 1, 0
        )
        for at in (100.0, 160.0, 220.0, 280.0):
            book.heard(3, "lora", radio, at)
            book.reading(3, at)
            book.counted(3, "accepted")
        book.counted(3, "auth_failed")
        book.status(3, {"battery_mv": 3710, "clock_synced": True, "reset_cause": 3}, 281.0)
        book.boot(3, 1)
        book.save()
        assert book.changed() == {}  # nothing new since
    with NodeRegistry.open(tmp_path / "registry.db") as registry:
        (doc,) = registry.health_docs().values()
    health = NodeHealth.from_doc(3, doc)
    got = summary(health, now=300.0)
    assert got["link"] == "lora" and got["lora"] == {"rssi_dbm": -97.0, "snr_db": 7.5, "sf": 9}
    assert (got["first_heard"], got["last_heard"]) == (100.0, 280.0)
    assert got["frames_accepted"] == 4 and got["frames_rejected"] == {"auth_failed": 1}
    assert got["reading_interval_s"] == 60.0 and not got["silent"]
    assert got["status"]["battery_mv"] == 3710 and (got["boots"], got["reset_cause"]) == (1, 1)
    # silent after three reading intervals; before it has an interval, after an hour
    assert summary(health, now=280.0 + SILENT_FACTOR * 60 + 1)["silent"]
    fresh = NodeHealth(4, last_heard=0.0)
    assert not fresh.silent(SILENT_DEFAULT_S) and fresh.silent(SILENT_DEFAULT_S + 1)


@pytest.mark.slow  # end to end: emulated boards, one falls silent
@pytest.mark.asyncio
@deadline(90)
async def test_nodes_lists_live_fields_and_marks_a_silent_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_mod, "HEALTH_SAVE_S", 0.5)
    with serial_site(tmp_path, 2, seed=11) as (_broker, fleet, config_file):
        ids = [node.node_id for node in fleet.nodes]

        async def listed() -> dict[int, dict[str, Any]]:
            # in a thread: the gateway runs on this event loop, and must go on meanwhile
            result = await asyncio.to_thread(
                edgeveil, "gateway", "nodes", "list", "--json", "--config", str(config_file)
            )
            assert result.returncode == 0, result.stderr
            return {n["node"]: n for n in json.loads(result.stdout)["nodes"]}

        async def wait_listed(
            what: str, condition: Callable[[dict[int, dict[str, Any]]], bool]
        ) -> dict[int, dict[str, Any]]:
            seen: dict[int, dict[str, Any]] = {}  # the latest listing

            async def listed_so() -> dict[int, dict[str, Any]] | None:
                seen.clear()
                seen.update(await listed())
                return dict(seen) if condition(seen) else None

            found = await until(listed_so, f"listed: {what}", 15, lambda: seen, interval=0.2)
            assert found is not None
            return found

        async with running_gateway(config_mod.load(config_file)):
            nodes = await wait_listed(
                "both nodes with frames, a status and an interval, while the gateway runs",
                lambda nodes: all(
                    n["frames_accepted"] >= 4 and n["status"] and n["reading_interval_s"]
                    for n in nodes.values()
                ),
            )
            for node_id, port in zip(ids, ("node1", "node2"), strict=True):
                node = nodes[node_id]
                assert node["link"] == port and node["silent"] is False
                assert node["boots"] == 1 and node["reset_cause"] == 1  # power_on
                assert "battery_mv" in node["status"] and "lora" not in node
            fleet.power_cut(0, off_s=None)  # the first node falls silent, the second goes on
            await wait_listed(
                "the first node marked silent, the second not",
                lambda nodes: nodes[ids[0]]["silent"] and not nodes[ids[1]]["silent"],
            )
        table = edgeveil("gateway", "nodes", "list", "--config", str(config_file))
        assert table.returncode == 0, table.stderr
        rows = {line.split()[0]: line for line in table.stdout.splitlines()[2:]}
        assert "SILENT" in rows[str(ids[0])] and "SILENT" not in rows[str(ids[1])]
        assert "mV" in rows[str(ids[1])] and "node2" in rows[str(ids[1])]
        shown = edgeveil("gateway", "nodes", "show", str(ids[0]), "--config", str(config_file))
        assert "(SILENT)" in shown.stdout and "accepted," in shown.stdout
