"""Power cuts at line rate: SIGKILL the gateway while every link sends at full speed, start it
again on the same state directory, and check that every reading it acknowledged was published.

    .venv/bin/python benchmarks/bench_crash.py [--links 20] [--rate 1.0] [--seconds 30]
        [--kills 3] [--seed N] [--cpu-quota FRACTION]

The setup is benchmarks/bench_gateway.py's (its parts are imported): a real Mosquitto, 1,000
registered nodes, one pseudo-terminal per link, the gateway as its own process, a subscriber
noting every message id. The replayer here also opens the gateway's acks (the downlink frames
on each pty, with the node's keys), so it knows which readings the gateway acknowledged: the
gateway acknowledges a frame only once the spool holds it on disk (or the broker has it), so
every acknowledged reading must reach the subscriber, whatever the moment of the kill.

The replayer is no node: it never sends a frame again, so frames in flight at a kill (or
refused as overloaded, with --cpu-quota) that were not acknowledged may be missing (a real
node keeps and retransmits them; tests/test_gateway_e2e.py's kill test covers that side).
Those are counted, not a failure. Also printed: duplicates (allowed: consumers drop them by
message id) and, per node, readings that arrived after a newer one (after a restart, the
spool's backlog may follow newer live ones).
Exit status 1 if an acknowledged reading is missing. Nothing here is timed against a target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import bench_gateway as bench

from protocol import NEED_DATA, Ack, NodeKeys, StreamDecoder, open_frame, parse_header


class AckReader(bench.Replayer):
    """The replayer, reading what each link receives: the gateway's acks, opened."""

    def __init__(self, links: list[bench.Link], rate: float, secrets: dict[int, bytes]) -> None:
        super().__init__(links, rate)
        self.keys = {link.master: NodeKeys(link.node_id, secrets[link.node_id]) for link in links}
        self.decoders = {link.master: StreamDecoder() for link in links}
        self.acked: dict[int, set[int]] = {link.node_id: set() for link in links}
        self.unreadable = 0  # chunks that are no frame or do not open: counted, not expected

    def _received(self, link: bench.Link, data: bytes) -> None:
        decoder, keys = self.decoders[link.master], self.keys[link.master]
        decoder.feed(data)
        while True:
            try:
                frame = decoder.next_event()
                if frame is NEED_DATA:
                    return
                assert isinstance(frame, (bytes, bytearray))
                message = open_frame(bytes(frame), keys, False, parse_header(bytes(frame)))
            except Exception:  # a torn frame at a kill, or no frame: counted
                self.unreadable += 1
                continue
            if isinstance(message, Ack):
                self.acked[link.node_id].update(message.counters)


async def replay_and_kill(
    args: argparse.Namespace,
    links: list[bench.Link],
    reader: AckReader,
    *,
    start_gateway: bench.StartSystem,
    mqtt_port: int,
    sub: bench.SubscriberProcess,
    gateways: list[bench.SystemProcess],
    rng: random.Random,
) -> None:
    """Replay for --seconds; kill the gateway --kills times at random moments and start it
    again at once (as systemd's Restart= would, less its delay)."""
    task = asyncio.create_task(reader.run())
    start = time.monotonic()
    moments = sorted(rng.uniform(2.0, args.seconds - 3.0) for _ in range(args.kills))
    for moment in moments:
        await asyncio.sleep(max(0.0, moment - (time.monotonic() - start)))
        gateway = gateways[-1]
        gateway.proc.kill()  # SIGKILL: no clean-up of any kind, as a power cut
        await asyncio.to_thread(gateway.proc.wait)
        acked = sum(len(a) for a in reader.acked.values())
        print(f"  {moment:5.1f} s: killed pid {gateway.pid} ({acked:,} readings acked so far)")
        restarted = start_gateway(mqtt_port)
        gateways.append(restarted)
        t = time.monotonic()
        await asyncio.to_thread(restarted.wait_ready, len(links), sub)
        print(f"         pid {restarted.pid} ready in {time.monotonic() - t:.1f} s")
    await asyncio.sleep(max(0.0, args.seconds - (time.monotonic() - start)))
    reader.running = False
    await task
    offered = sum(link.next for link in links)
    await bench.wait_delivered(sub, offered, 60.0, 5.0)
    await asyncio.sleep(1.0)  # the last acks


def report(links: list[bench.Link], reader: AckReader, received: tuple[Any, ...]) -> bool:
    nodes, counters = received[1], received[2]
    first: set[tuple[int, int]] = set()
    duplicates = 0
    last: dict[int, int] = {}
    late: Counter[int] = Counter()
    for node, counter in zip(nodes, counters, strict=True):
        if (node, counter) in first:
            duplicates += 1
            continue
        first.add((node, counter))
        if counter < last.get(node, 0):
            late[node] += 1
        else:
            last[node] = counter
    offered = acked = acked_missing = unacked_missing = 0
    examples: list[tuple[int, int]] = []
    for link in links:
        node_acked = reader.acked[link.node_id]
        offered += link.next
        acked += len(node_acked)
        for counter in range(1, link.next + 1):
            if (link.node_id, counter) in first:
                continue
            if counter in node_acked:
                acked_missing += 1
                if len(examples) < 5:
                    examples.append((link.node_id, counter))
            else:
                unacked_missing += 1
    print("\nfrom the acks and the subscriber (by message id, one per reading):")
    print(f"  readings offered {offered:,}, acknowledged {acked:,}, received {len(first):,}")
    print(
        f"  acknowledged and missing: {acked_missing:,}"
        + (f" (e.g. node, counter: {examples})" if examples else "")
        + f"  {bench.verdict(acked_missing == 0)}"
    )
    print(
        f"  not acknowledged and missing: {unacked_missing:,} (in flight at a kill, or refused "
        "as overloaded; a node sends them again, this replayer does not)"
    )
    print(f"  duplicates: {duplicates:,} (allowed: consumers drop them by message id)")
    print(
        f"  arrived after a newer reading of their node: {sum(late.values()):,} on "
        f"{len(late)} of {len(links)} nodes"
    )
    if reader.unreadable:
        print(f"  unreadable chunks from the gateway: {reader.unreadable:,} (torn at a kill)")
    return acked_missing == 0


def run(args: argparse.Namespace) -> bool:
    from tests.mosquitto import Mosquitto, free_port  # noqa: PLC0415 - after sys.path

    rng = random.Random(args.seed)  # noqa: S311 - when to kill, no secret
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="edgeveil-crash-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        state = tmp / "state"
        secrets = bench.register_nodes(state, args.nodes, args.links)
        frame_args = argparse.Namespace(
            links=args.links, rate=args.rate, frames_per_s=None, warmup=0.0,
            seconds=args.seconds + 5, outage=None,
        )  # fmt: skip
        links = bench.make_links(frame_args, secrets, stack)
        broker = Mosquitto(
            tmp / "mosquitto", extra="max_queued_messages 0\nmax_inflight_messages 0"
        )
        stack.callback(broker.kill)
        broker.start()
        sub = bench.SubscriberProcess(broker.host, broker.port)
        stack.callback(sub.kill)
        sub.start()
        metrics_port = free_port()
        config = tmp / "gateway.toml"
        toml = bench.gateway_toml(state, links, broker.port, metrics_port, "pass", None)
        config.write_text(toml, encoding="utf-8")
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        gateways: list[bench.SystemProcess] = []

        def start_gateway(_port: int) -> bench.SystemProcess:
            log = tmp / f"gateway-{len(gateways) + 1}.log"
            gateway = bench.GatewayProcess(config, log, None, url)
            if args.cpu_quota:
                bench.confine(gateway.pid, args.cpu_quota, stack)
            return gateway

        gateways.append(start_gateway(broker.port))
        stack.callback(lambda: [g.stop() for g in gateways])
        gateways[0].wait_ready(len(links), sub)
        print(
            f"{args.links} links at {args.rate:.0%} of 115200 baud, {args.nodes} nodes "
            f"registered; {args.seconds:g} s, {args.kills} kills (seed {args.seed})"
            + (f"; each gateway on {args.cpu_quota:.0%} of one core" if args.cpu_quota else "")
        )
        reader = AckReader(links, args.rate, secrets)
        asyncio.run(
            replay_and_kill(
                args,
                links,
                reader,
                start_gateway=start_gateway,
                mqtt_port=broker.port,
                sub=sub,
                gateways=gateways,
                rng=rng,
            )
        )
        received = sub.stop()
        ok = report(links, reader, received)
        for gateway in gateways:
            gateway.stop()
            gateway.print_warnings(first=3)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1.0, help="fraction of the line rate")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument(
        "--cpu-quota",
        type=float,
        metavar="FRACTION",
        help="each gateway with at most this fraction of one core (bench_gateway.py's; root)",
    )
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 30))  # noqa: S311
    args = parser.parse_args()
    if args.seconds < 6 or args.kills < 1 or not 1 <= args.links <= args.nodes:
        parser.error("--seconds at least 6, --kills at least 1, --links 1..--nodes")
    if args.cpu_quota is not None and not 0.1 <= args.cpu_quota <= 2:
        parser.error("--cpu-quota must be in 0.1..2 (a fraction of one core)")
    raise SystemExit(0 if run(args) else 1)


if __name__ == "__main__":
    main()
