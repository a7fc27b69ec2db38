"""`edgeveil node monitor`: a node's console and its frames, decoded and verified live.

The node's USB line carries both its console text (start-up lines, errors, tracebacks) and
its sealed frames (0x00 COBS(frame + CRC) 0x00, protocol/framing.py). The monitor splits the
byte stream at the 0x00 delimiters: a chunk that decodes as a frame is parsed, verified and
decrypted with the node's key from the registry; a chunk that is printable text is console
output. Console lines are shown as soon as their newline arrives (a frame's bytes never form
a printable line ending in a newline of four or more characters, so nothing of a frame is
taken for text). Each line carries a timestamp; a summary of the counters ends the run.

Duplicates (a node retransmitting a frame the gateway did not acknowledge) are recognised
with a replay window in memory; the monitor never writes to the registry. A frame under a
counter seen before (here, or accepted by the gateway whose registry this is) with other bytes
is no duplicate: two boards or a restored backup share the identity, and the monitor says so.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from protocol import (
    DUPLICATE,
    RemoteProtocolError,
    ReplayWindow,
    StreamDecoder,
    open_frame,
    parse_header,
)
from protocol.messages import MESSAGE_CLASSES, Observations

from ..errors import RegistryError
from ..registry import EVIDENCE_SPAN, REUSE_HINT, NodeEntry, NodeRegistry, frame_digest
from .errors import NodeCommandError

__all__ = ["Event", "Judge", "StreamSplitter", "monitor", "open_registry"]

MIN_TEXT_LINE = 4  # shorter "lines" might be a frame's bytes; they wait for the delimiter
_PRINTABLE = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}


@dataclass(frozen=True)
class Event:
    kind: str  # "console", "frame" or "noise"
    text: str = ""
    frame: bytes = b""


def _is_text(data: bytes) -> bool:
    if all(b in _PRINTABLE or b >= 0x80 for b in data):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True
    return False


class StreamSplitter:
    """Bytes from the line in; console lines, frames and noise out (sans-IO)."""

    def __init__(self) -> None:
        self._pending = bytearray()  # the chunk since the last 0x00

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        *complete, rest = data.split(b"\x00")
        for part in complete:
            self._pending += part
            events.extend(self._chunk(bytes(self._pending)))
            self._pending.clear()
        self._pending += rest
        events.extend(self._early_lines())
        return events

    def _early_lines(self) -> Iterator[Event]:
        """Console lines of the unfinished chunk that are complete already."""
        while True:
            end = self._pending.find(b"\n")
            line = bytes(self._pending[: end + 1])
            if end < 0 or len(line.strip()) < MIN_TEXT_LINE or not _is_text(line):
                return
            del self._pending[: end + 1]
            yield Event("console", line.decode("utf-8").rstrip())

    def _chunk(self, chunk: bytes) -> Iterator[Event]:
        if not chunk:
            return
        decoder = StreamDecoder()
        decoder.feed(b"\x00" + chunk + b"\x00")
        try:
            frame = decoder.next_event()
        except RemoteProtocolError as exc:
            if _is_text(chunk):
                for line in chunk.decode("utf-8").splitlines():
                    if line.strip():
                        yield Event("console", line.rstrip())
            else:
                yield Event("noise", f"{exc.reason_name}: {len(chunk)} bytes of line noise")
            return
        if isinstance(frame, bytes):
            yield Event("frame", frame=frame)


@dataclass
class Judge:
    """Verifies frames with the registry's keys and counts what it saw."""

    registry: NodeRegistry
    # (node, key epoch) -> the replay window of what this monitor saw
    windows: dict[tuple[int, int], ReplayWindow] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    # (node, epoch, counter) -> digest of the first frame seen under it, the latest
    # EVIDENCE_SPAN
    seen: OrderedDict[tuple[int, int, int], bytes] = field(default_factory=OrderedDict)

    def judge(self, frame: bytes) -> tuple[bool, str]:
        """(verified, the line to show)."""
        try:
            header = parse_header(frame)
        except RemoteProtocolError as exc:
            return self._reject(f"{exc.reason_name}: {exc.detail}", exc.reason_name)
        kind = MESSAGE_CLASSES[header.msg_type]
        epoch = f" key epoch {header.epoch}" if header.epoch else ""
        who = f"node {header.node_id} #{header.counter}{epoch} {kind.NAME}"
        entry = self.registry.get(header.node_id)
        refusal = _refusal(entry, header.epoch)
        if entry is None or refusal is not None:
            reason, why = refusal or ("unknown_node", "")
            return self._reject(f"{who}: {reason}: {why}", reason)
        try:
            keys = self.registry.keys_for(header.node_id, header.epoch)
            message = open_frame(frame, keys, uplink=kind.UPLINK, header=header)
        except RemoteProtocolError as exc:
            hint = (
                " (the node's secret differs from the registry's: provision and deploy it again)"
                if exc.reason_name == "auth_failed"
                else ""
            )
            return self._reject(f"{who}: {exc.reason_name}: {exc.detail}{hint}", exc.reason_name)
        key, digest = (header.node_id, header.epoch, header.counter), frame_digest(frame)
        recorded = self.seen.get(key)
        if recorded is None and header.epoch == entry.epoch:
            recorded = self.registry.digest(header.node_id, header.counter)
        if recorded is not None and recorded != digest:
            return self._reject(
                f"{who}: counter_reuse: counter reused: {REUSE_HINT}", "counter_reuse"
            )
        self.seen.setdefault(key, digest)
        while len(self.seen) > EVIDENCE_SPAN:
            self.seen.popitem(last=False)
        window = self.windows.setdefault(key[:2], ReplayWindow())
        try:
            duplicate = window.check(header.counter) == DUPLICATE
        except RemoteProtocolError:
            duplicate = True
        if duplicate:
            self.counts["duplicate"] += 1
            return True, f"{who}: duplicate, a retransmission (no gateway acknowledged it yet)"
        window.accept(header.counter)
        self.counts["verified"] += 1
        # an observation's device list is personal data: its size only
        content = repr(message) if isinstance(message, Observations) else message.to_dict()
        return True, f"{who} {content}"

    def _reject(self, line: str, reason: str) -> tuple[bool, str]:
        self.counts[f"rejected {reason}"] += 1
        return False, line

    def summary(self, console: int, noise: int) -> str:
        rejected = {k[len("rejected ") :]: v for k, v in self.counts.items() if "rejected" in k}
        why = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items()))
        return (
            f"frames: {self.counts['verified']} verified, {self.counts['duplicate']} duplicate, "
            f"{sum(rejected.values())} rejected{f' ({why})' if why else ''}; "
            f"console lines: {console}; noise: {noise} chunks"
        )


def _refusal(entry: NodeEntry | None, epoch: int) -> tuple[str, str] | None:
    """(reason, what to do) for a node the registry does not know or has revoked, or for a
    frame under keys the registry has retired; None when the frame can be opened."""
    if entry is None:
        return "unknown_node", (
            "this node id is not in the registry (give the registry it was provisioned into "
            "with --registry)"
        )
    if entry.revoked:
        return "revoked", (
            "this identity is revoked at the gateway (edgeveil gateway nodes revoke); give the "
            "board a new one: edgeveil node provision, then deploy"
        )
    if epoch < entry.epoch:
        return "retired_key", (
            f"the registry already heard this node under key epoch {entry.epoch}, so these "
            "keys are retired (a copy of the node still on its old keys?)"
        )
    return None


def open_registry(path: Path, scratch: Path) -> NodeRegistry:
    """A registry to read keys from: the gateway's registry database, or a JSON registry
    file (edgeveil emulate, provision --export) loaded into a scratch database."""
    try:
        head = path.read_bytes()[:16]
    except OSError as exc:
        raise NodeCommandError(f"cannot read the registry {path}: {exc.strerror}") from None
    try:
        if head.startswith(b"SQLite format 3"):
            return NodeRegistry.open(path)
        registry = NodeRegistry.open(scratch / "registry.db")
        registry.import_file(path)
        return registry
    except RegistryError as exc:
        raise NodeCommandError(str(exc)) from None


def monitor(
    port: str,
    registry_path: Path,
    *,
    duration: float | None = None,
    once: bool = False,
    baudrate: int = 115200,
    out: Callable[[str], None] = print,
) -> int:
    """Show the line until Ctrl-C, `duration` seconds, or (once) the first frame. Exit
    status: 0 when frames came and every one verified; 1 when one was rejected, none came,
    or the board went away."""
    import serial  # noqa: PLC0415 - pyserial only for the commands that open ports

    from .board import port_error  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as scratch:
        registry = open_registry(registry_path, Path(scratch))
        try:
            line = serial.serial_for_url(port, baudrate=baudrate, timeout=0.1, exclusive=True)
        except serial.SerialException as exc:
            registry.close()
            raise port_error(port, exc) from None
        splitter = StreamSplitter()
        judge = Judge(registry)
        console = noise = 0
        status = 0
        deadline = None if duration is None else time.monotonic() + duration
        out(f"monitoring {port} ({baudrate} baud); Ctrl-C stops")
        try:
            while deadline is None or time.monotonic() < deadline:
                try:
                    data = line.read(max(1, line.in_waiting))
                except (serial.SerialException, OSError) as exc:
                    out(f"{_now()}  the board on {port} went away ({exc}): check the cable")
                    status = 1
                    break
                stop = False
                for event in splitter.feed(data):
                    if event.kind == "console":
                        console += 1
                        out(f"{_now()}  console  {event.text}")
                    elif event.kind == "noise":
                        noise += 1
                        out(f"{_now()}  noise    {event.text}")
                    else:
                        verified, text = judge.judge(event.frame)
                        status |= 0 if verified else 1
                        out(f"{_now()}  {'frame ' if verified else 'REJECT'}   {text}")
                        if once:  # the first frame, even when more came in the same read
                            stop = True
                            break
                if stop:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            line.close()
            registry.close()
        out(judge.summary(console, noise))
        if not sum(judge.counts.values()):
            out(
                "no frames: a node with a uart link sends them on its own pins, not on USB; "
                "else check that it runs (console lines above, or edgeveil node doctor)"
            )
            status = 1
    return status


def _now() -> str:
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
