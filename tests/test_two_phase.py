"""Two-phase acceptance: a frame joins its aggregation windows only once its
outcome is stored. Under `spool.when_full = "refuse_new"` a frame the full spool refuses is
neither acknowledged nor counted in any window; its retransmission, once there is room, is
counted once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.ingest import Arrival, Ingest
from gateway.lora.radio import RadioMeta
from gateway.metrics import Metrics
from gateway.privacy import PolicyEngine, PrivacyLedger
from gateway.privacy import policy as policy_mod
from gateway.records import OutMessage, Topics
from gateway.registry import NodeRegistry
from gateway.spool import Spool
from protocol import Ack, NodeKeys, Readings, open_frame, parse_header, seal
from protocol.quantities import quantity_id

NODE, GW, PORT = 7, "gw-two-phase", "node1"
SECRET = bytes(range(16))  # TEST ONLY
KEYS = NodeKeys(NODE, SECRET)
T0 = 1_800_000_000  # a whole hour
# temperature passes per message (a spool message per frame); noise is aggregated per zone
POLICY = """
name = "mixed"
[[streams]]
name = "environment"
message = "readings"
quantities = ["temperature"]
action = "pass"
[[streams]]
name = "noise"
message = "readings"
quantities = ["noise"]
window_minutes = 15
statistics = ["count", "mean"]
"""


@pytest.mark.asyncio
async def test_a_frame_the_full_spool_refused_is_counted_once_after_its_retransmission(
    tmp_path: Path,
) -> None:
    (tmp_path / "policy.toml").write_text(POLICY)
    policy = policy_mod.load(tmp_path / "policy.toml")
    sent: list[bytes] = []

    async def send(_port: str, frame: bytes, _radio: RadioMeta | None) -> bool:
        sent.append(frame)
        return True

    def acked() -> list[int]:
        out: list[int] = []
        for frame in sent:
            message = open_frame(frame, KEYS, uplink=False, header=parse_header(frame))
            if isinstance(message, Ack):
                out.extend(message.counters)
        return out

    with (
        NodeRegistry.open(tmp_path / "registry.db") as registry,
        PrivacyLedger.open(tmp_path / "privacy.db") as ledger,
        Spool.open(tmp_path / "spool.db", 1, 86_400, "refuse_new") as spool,
    ):
        registry.add(NODE, SECRET, "square")
        engine = PolicyEngine(policy, GW, ledger, lambda: T0 + 1)
        ingest = Ingest(
            registry,
            engine,
            spool,
            Topics("edgeveil", "site", GW),
            "senml-json",
            send,
            None,
            Metrics(),
        )
        spool.put([OutMessage("other:1", "edgeveil/site/gw/other", b"{}")])  # the spool is full
        frame = seal(
            Readings({quantity_id("temperature"): 215, quantity_id("noise"): 550}), 1, KEYS
        )
        await ingest.process([Arrival(PORT, frame, T0 + 10)])
        assert acked() == []  # refused: not acknowledged, so the node sends it again
        spool.delete([seq for seq, _m in spool.peek(10)])  # the broker took the other one
        await ingest.process([Arrival(PORT, frame, T0 + 20)])  # the retransmission
        assert acked() == [1]
        (noise,) = [r for r in engine.release_due(T0 + 900) if r.stream == "noise"]
        released = {m.name: m.value for m in noise.measurements}
        assert released["noise_count"] == 1, released  # once, not once per delivery
        (passed,) = [json.loads(m.payload) for _seq, m in spool.peek(10)]
        assert [r["n"] for r in passed if "v" in r] == ["temperature"]
