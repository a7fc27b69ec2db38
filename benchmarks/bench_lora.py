"""LoRa channel benchmark: delivery ratio versus offered load on one channel and spreading factor,
beside pure ALOHA.

    .venv/bin/python benchmarks/bench_lora.py [--nodes N] [--frames F] [--sf 7] [--seed S]

Many nodes (spread uniformly over a disc around one gateway, all in range) send frames of the
same size at Poisson times, on one frequency and spreading factor, into the channel simulator
(firmware/host/radio.py). For each offered load G (Erlang: the airtime offered per unit of
time, summed over all nodes) it prints the fraction of frames the gateway received, without
capture (every overlap destroys both frames) and with capture (the strongest survives when it
is 6 dB above the sum of the others), beside pure ALOHA's success probability e^(-2G) and
throughput S = G e^(-2G). Without capture the simulator must track ALOHA; capture lifts it
(by how much depends on how spread out the received powers are: the node placement).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware.host.radio import Channel, Radio, airtime_us

LOADS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
PAYLOAD = bytes(24)  # a readings frame of a few quantities (protocol/ frames are <= 51 bytes)


def run(load: float, nodes: int, frames: int, radio: Radio, *, seed: int, capture: bool) -> float:
    """Delivery ratio at offered load `load` (Erlang) over about `frames` frames."""
    rng = random.Random(seed)  # noqa: S311 - a model
    channel = Channel(seed=seed, capture=capture)
    channel.add_gateway("gw", 0, 0)
    radius = 1000.0
    for i in range(nodes):
        r, a = radius * math.sqrt(rng.random()), 2 * math.pi * rng.random()
        channel.add_node(f"n{i}", r * math.cos(a), r * math.sin(a))
    airtime = airtime_us(radio, len(PAYLOAD))
    rate_per_us = load / airtime  # frames per microsecond, all nodes together
    busy_until = [0] * nodes
    t = 0.0
    sent = received = 0
    while sent < frames:
        t += rng.expovariate(rate_per_us)
        node = rng.randrange(nodes)
        start = int(t)
        if busy_until[node] > start:
            continue  # a radio sends one frame at a time (rare with many nodes)
        tx = channel.transmit(f"n{node}", PAYLOAD, radio, start)
        busy_until[node] = tx.end_us
        sent += 1
        if sent % 256 == 0:  # settle as we go: the channel keeps only what can still overlap
            received += sum("gw" in d.receptions for d in channel.settle(start))
    received += sum("gw" in d.receptions for d in channel.settle(int(t) + 10 * airtime))
    return received / sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000, help="nodes (default 1000)")
    parser.add_argument("--frames", type=int, default=4000, help="frames per load (default 4000)")
    parser.add_argument("--sf", type=int, default=7, help="spreading factor (default 7)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    try:
        radio = Radio(868_100_000, sf=args.sf)
    except ValueError as exc:
        parser.error(str(exc))
    if args.nodes < 2 or args.frames < 100:
        parser.error("--nodes must be at least 2 and --frames at least 100")

    airtime = airtime_us(radio, len(PAYLOAD))
    print(
        f"one channel (868.1 MHz, {radio.datr}), {args.nodes} nodes within 1 km of the gateway, "
        f"{len(PAYLOAD)}-byte frames ({airtime / 1000:.1f} ms on air), Poisson traffic, "
        f"{args.frames} frames per load, seed {args.seed}"
    )
    print()
    header = (
        f"{'G':>5}  {'ALOHA e^-2G':>11}  {'no capture':>10}  {'capture':>8}  "
        f"{'ALOHA S':>8}  {'S no capt.':>10}  {'S capture':>9}"
    )
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    for load in LOADS:
        plain = run(load, args.nodes, args.frames, radio, seed=args.seed, capture=False)
        captured = run(load, args.nodes, args.frames, radio, seed=args.seed, capture=True)
        aloha = math.exp(-2 * load)
        print(
            f"{load:5.2f}  {aloha:11.3f}  {plain:10.3f}  {captured:8.3f}  "
            f"{load * aloha:8.3f}  {load * plain:10.3f}  {load * captured:9.3f}"
        )
    print()
    print(
        "delivery ratio = frames the gateway received / frames sent; S = G x delivery ratio "
        f"(Erlang); {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
