"""Privacy engine benchmark: what PolicyEngine.process costs per frame, against opening it.

    .venv/bin/python benchmarks/bench_privacy.py [--frames N] [--repeat R]

For each kind of frame a node sends, prints microseconds per frame for the gateway's
parse_header + open_frame of that frame and for the privacy engine's process() of the opened
message under the default policy, measured alternately in the same run, and their ratio (the
target: the privacy stage at most about 25 % of the per-frame cost). Observations cost a keyed
BLAKE2s per sighting (pseudonyms.py). The last row is readings under a policy that passes them
per node, as benchmarks/bench_gateway.py runs the gateway: a record per frame
(passthrough.readings_record). Timings are the best of R runs, so a busy neighbour on a shared
machine inflates them less.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import timeit
from pathlib import Path

from gateway.privacy import PolicyEngine, PrivacyLedger
from gateway.privacy import policy as policy_mod
from protocol import Message, NodeKeys, Observations, Readings, open_frame, parse_header, seal
from protocol.quantities import quantity_id as q

# benchmarks/bench_gateway.py's policy: readings pass per node, a record per frame
READINGS_PASS = {
    "name": "benchmark: readings pass per node",
    "streams": [
        {
            "name": "readings",
            "message": "readings",
            "quantities": ["temperature", "humidity", "pressure", "battery"],
            "action": "pass",
        }
    ],
}


def messages() -> dict[str, Message]:
    def addresses(n: int) -> list[tuple[bytes, int]]:
        return [(bytes([i + 1]) * 6, -60 - i) for i in range(n)]

    four = {"temperature": 215, "humidity": 427, "pressure": 10129, "battery": 4099}
    eight = {**four, "pm1": 4, "pm2_5": 6, "pm10": 12, "motion": 0}
    return {
        "readings, 4 values": Readings({q(k): v for k, v in four.items()}),
        "readings, 8 values": Readings({q(k): v for k, v in eight.items()}),
        "observations, 1 sighting": Observations(0, addresses(1)),
        "observations, 3 sightings": Observations(0, addresses(3)),
        "observations, 12 sightings": Observations(0, addresses(12)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    keys = NodeKeys(node_id=0x1234, secret=bytes(16))  # TEST ONLY secret
    with tempfile.TemporaryDirectory() as tmp:
        ledger = PrivacyLedger.open(Path(tmp) / "privacy.db")
        default = PolicyEngine(policy_mod.default(), "gateway-1", ledger)
        passing = PolicyEngine(policy_mod.parse(READINGS_PASS), "gateway-1", ledger)
        now = time.time()
        print(f"per frame, best of {args.repeat} x {args.frames} (default policy but the last):")
        cases = [(name, message, default) for name, message in messages().items()]
        cases.append(("readings, 4 values, pass", messages()["readings, 4 values"], passing))
        for name, message, engine in cases:
            frame = seal(message, 5, keys)

            def open_it(frame: bytes = frame) -> None:
                open_frame(frame, keys, True, parse_header(frame))

            def process(message: Message = message, engine: PolicyEngine = engine) -> None:
                engine.process(0x1234, "plein", 5, message, now)

            opened, processed = [], []
            for _ in range(args.repeat):  # alternately, so both see the same machine
                opened.append(timeit.timeit(open_it, number=args.frames))
                processed.append(timeit.timeit(process, number=args.frames))
            o = min(opened) / args.frames * 1e6
            p = min(processed) / args.frames * 1e6
            print(
                f"  {name:28} open {o:6.2f} us   privacy {p:5.2f} us   "
                f"privacy / open {p / o:4.0%}   privacy / total {p / (o + p):4.0%}"
            )
        default.close()
        passing.close()
        ledger.close()


if __name__ == "__main__":
    main()
