"""The node registry: file safety, keys, replay state and downlink counters across restarts,
the JSON exchange format, and that no secret or key ever shows."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import RegistryError
from gateway.registry import DOWNLINK_STEP, NodeRegistry
from protocol import DUPLICATE, NEW, LocalProtocolError, NodeKeys, Reason, RemoteProtocolError

from .command import edgeveil

ROOT = Path(__file__).resolve().parent.parent
SECRET = bytes(range(0xA0, 0xB0))  # TEST ONLY
SECRET2 = bytes(range(0x40, 0x60))  # TEST ONLY


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "registry.sqlite"


@pytest.fixture
def reg(path: Path) -> Iterator[NodeRegistry]:
    with NodeRegistry.open(path) as registry:
        yield registry


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def outcome(registry: NodeRegistry, node_id: int, counter: int) -> str:
    entry = registry.get(node_id)
    assert entry is not None
    try:
        return {NEW: "new", DUPLICATE: "duplicate"}[entry.window.check(counter)]
    except RemoteProtocolError as exc:
        return Reason.name(exc.reason)


# -- the file -----------------------------------------------------------------------------------


def test_created_with_mode_0600_whatever_the_umask(path: Path) -> None:
    old = os.umask(0)
    try:
        with NodeRegistry.open(path) as registry:
            registry.add(1, SECRET)
            assert mode(path) == 0o600
            for extra in (Path(f"{path}-wal"), Path(f"{path}-shm")):
                assert mode(extra) == 0o600
    finally:
        os.umask(old)


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o660])
def test_refuses_a_file_others_may_read(path: Path, bad_mode: int) -> None:
    NodeRegistry.open(path).close()
    path.chmod(bad_mode)
    with pytest.raises(RegistryError, match=f"chmod 600 {path}"):
        NodeRegistry.open(path)
    path.chmod(0o600)
    NodeRegistry.open(path).close()


def test_refuses_a_file_that_is_not_a_registry(path: Path) -> None:
    path.parent.mkdir()
    path.write_text('{"format": "edgeveil-registry"}' + " " * 200)
    path.chmod(0o600)
    with pytest.raises(RegistryError, match="not an edgeveil registry database"):
        NodeRegistry.open(path)


def test_uses_a_wal_journal(reg: NodeRegistry, path: Path) -> None:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- nodes --------------------------------------------------------------------------------------


def test_add_get_keys(reg: NodeRegistry) -> None:
    reg.add(0x1234, SECRET, "plein-noord")
    entry = reg.get(0x1234)
    assert entry is not None
    expected = NodeKeys(0x1234, SECRET)
    assert entry.node_id == 0x1234
    assert entry.zone == "plein-noord"
    assert entry.keys.uplink_key == expected.uplink_key
    assert entry.keys.downlink_key == expected.downlink_key
    assert entry.keys.base_iv == expected.base_iv
    # derived once: the same objects every time
    again = reg.get(0x1234)
    assert again is entry
    assert again.keys is entry.keys
    assert again.window is entry.window
    assert reg.get(99) is None
    assert reg.get(-1) is None


def test_keys_derived_on_first_use(reg: NodeRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    # the service loads every registered node's entry at start; only the nodes that send
    # need keys (memory on the Raspberry Pi)
    derived: list[int] = []

    def counting(node_id: int, secret: bytes, epoch: int = 0) -> NodeKeys:
        derived.append(node_id)
        return NodeKeys(node_id, secret, epoch=epoch)

    for node_id in (1, 2, 3):
        reg.add(node_id, SECRET, "a")
    monkeypatch.setattr("gateway.registry.NodeKeys", counting)
    entries = [reg.get(node_id) for node_id in reg.node_ids()]
    assert reg.served() == {1: "a", 2: "a", 3: "a"}
    assert derived == []
    entry = entries[1]
    assert entry is not None
    assert entry.keys.uplink_key == NodeKeys(2, SECRET).uplink_key
    assert entry.keys is entry.keys
    assert derived == [2]


def test_an_unusable_stored_secret_is_refused_when_loaded(reg: NodeRegistry, path: Path) -> None:
    """A file changed behind the registry's back: refused by get(), as the service loads
    the nodes at start, not at the node's first frame."""
    reg.add(5, SECRET, "a")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE nodes SET secret = ? WHERE node_id = 5", (b"short",))
    reg.reload_if_changed()
    problem = "node secret must be 16..64 bytes"
    with pytest.raises(RegistryError, match=f"^node 5: stored secret is unusable: {problem}$"):
        reg.get(5)


def test_set_of_nodes(reg: NodeRegistry) -> None:
    assert len(reg) == 0
    reg.add(3, SECRET)
    reg.add(1, SECRET2, "a")
    assert len(reg) == 2
    assert reg.node_ids() == [1, 3]
    assert 3 in reg
    assert 2 not in reg
    assert "3" not in reg
    reg.remove(3)
    assert reg.node_ids() == [1]
    assert reg.get(3) is None
    with pytest.raises(RegistryError, match="node 3 is not registered"):
        reg.remove(3)


def test_add_twice_needs_replace(reg: NodeRegistry) -> None:
    reg.add(7, SECRET, "a")
    with pytest.raises(RegistryError, match="node 7 is registered already"):
        reg.add(7, SECRET2, "b")
    reg.add(7, SECRET2, "b", replace=True)
    entry = reg.get(7)
    assert entry is not None
    assert entry.zone == "b"
    assert entry.keys.uplink_key == NodeKeys(7, SECRET2).uplink_key


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, SECRET), "node_id: must be a whole number"),
        ((2**32, SECRET), "node_id: must be a whole number"),
        ((True, SECRET), "node_id: must be a whole number"),
        ((1, SECRET[:15]), "secret: must be 16..64 bytes"),
        ((1, bytes(65)), "secret: must be 16..64 bytes"),
        ((1, SECRET.hex()), "secret: must be 16..64 bytes"),
        ((1, SECRET, "x" * 33), "zone: must be text of at most 32 bytes"),
    ],
)
def test_add_validates(reg: NodeRegistry, args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        reg.add(*args)
    assert len(reg) == 0


# -- replay windows -----------------------------------------------------------------------------


def test_replay_window_survives_a_restart(path: Path) -> None:
    counters = [0, 1, 2, 5, 63, 64, 100, 101, 120, 163]
    probes = range(0, 200)
    with NodeRegistry.open(path) as reg:
        reg.add(42, SECRET)
        reg.add(43, SECRET2)
        reg.accept(42, 0)
        reg.accept(42, 63)  # bit 63 set: the bitmap's top bit, beyond a signed 64-bit int
        entry = reg.get(42)
        assert entry is not None
        assert entry.window.bitmap >> 63 == 1
        reg.accept(43, 0)
        reg.accept(43, 63)
        for c in counters[2:]:
            if outcome(reg, 43, c) == "new":
                reg.accept(43, c)
        before = {(n, c): outcome(reg, n, c) for n in (42, 43) for c in probes}
        state = (entry.window.highest, entry.window.bitmap)
    with NodeRegistry.open(path) as reg:
        entry = reg.get(42)
        assert entry is not None
        assert (entry.window.highest, entry.window.bitmap) == state
        after = {(n, c): outcome(reg, n, c) for n in (42, 43) for c in probes}
    assert after == before
    assert set(before.values()) == {"new", "duplicate", "replay"}


def test_accept_moves_the_live_window(reg: NodeRegistry) -> None:
    reg.add(1, SECRET)
    entry = reg.get(1)
    assert entry is not None
    reg.accept(1, 100)
    assert entry.window.highest == 100
    assert entry.window.check(100) == DUPLICATE
    with pytest.raises(LocalProtocolError):
        reg.accept(1, 100 - 64)  # check() rejects it: a caller bug
    with pytest.raises(RegistryError, match="counter -1 invalid"):
        reg.accept(1, -1)
    assert (entry.window.highest, entry.window.bitmap) == (100, 1)
    with pytest.raises(RegistryError, match="node 2 is not registered"):
        reg.accept(2, 1)


def test_accept_many_in_any_order(path: Path) -> None:
    with NodeRegistry.open(path) as reg:
        reg.add(1, SECRET)
        reg.add(2, SECRET2)
        # an old and a much newer frame of node 1 in one batch, newest first
        reg.accept_many([(1, 200, b""), (2, 5, b""), (1, 10, b""), (2, 6, b""), (1, 199, b"")])
        one, two = reg.get(1), reg.get(2)
        assert one is not None
        assert two is not None
        assert (one.window.highest, one.window.bitmap) == (200, 0b11)
        assert (two.window.highest, two.window.bitmap) == (6, 0b11)
        # a failing batch changes nothing, neither in memory nor on disk
        with pytest.raises(RegistryError):
            reg.accept_many([(1, 300, b""), (9, 1, b"")])
        assert one.window.highest == 200
        reg.accept_many([])
    with NodeRegistry.open(path) as reg:
        one = reg.get(1)
        assert one is not None
        assert (one.window.highest, one.window.bitmap) == (200, 0b11)


def test_replace_keeps_state_for_the_same_secret_and_resets_it_for_a_new_one(
    reg: NodeRegistry,
) -> None:
    reg.add(5, SECRET, "a")
    reg.accept(5, 100)
    first = reg.next_downlink_counter(5)
    reg.add(5, SECRET, "b", replace=True)  # a new zone only
    assert outcome(reg, 5, 100) == "duplicate"
    assert reg.next_downlink_counter(5) > first
    reg.add(5, SECRET2, "b", replace=True)  # re-provisioned: new keys start from zero
    assert outcome(reg, 5, 0) == "new"
    assert reg.next_downlink_counter(5) == 0


def test_remove_and_add_again_resumes_counter_state(reg: NodeRegistry) -> None:
    reg.add(5, SECRET)
    reg.accept(5, 100)
    taken = {reg.next_downlink_counter(5) for _ in range(3)}
    reg.remove(5)
    reg.add(5, SECRET)
    assert outcome(reg, 5, 100) == "duplicate"
    assert outcome(reg, 5, 30) == "replay"
    assert reg.next_downlink_counter(5) not in taken


# -- downlink counters --------------------------------------------------------------------------


def test_downlink_counters_never_repeat_after_a_crash(path: Path) -> None:
    used: list[int] = []
    reg = NodeRegistry.open(path)
    reg.add(1, SECRET)
    used += [reg.next_downlink_counter(1) for _ in range(300)]
    del reg  # dropped without close: the counters in memory are lost
    for _ in range(3):
        reg = NodeRegistry.open(path)
        used += [reg.next_downlink_counter(1) for _ in range(10)]
        del reg
    assert len(used) == len(set(used))
    assert used == sorted(used)
    # skip-ahead: at most one block is lost per restart
    assert used[-1] < 300 + 4 * DOWNLINK_STEP


def test_downlink_counters_never_repeat_after_kill(path: Path) -> None:
    """A process that takes counters and dies without any cleanup (os._exit)."""
    with NodeRegistry.open(path) as reg:
        reg.add(1, SECRET)
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from gateway.registry import NodeRegistry\n"
        "reg = NodeRegistry.open(Path(sys.argv[1]))\n"
        "print(*[reg.next_downlink_counter(1) for _ in range(int(sys.argv[2]))], flush=True)\n"
        "os._exit(0)\n"
    )
    used: list[int] = []
    for n in (5, 300):
        out = subprocess.run(
            [sys.executable, "-c", code, str(path), str(n)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        used += [int(v) for v in out.split()]
    with NodeRegistry.open(path) as reg:
        used.append(reg.next_downlink_counter(1))
    assert len(used) == len(set(used)) == 306


def test_two_processes_sharing_the_file_never_share_a_counter(path: Path) -> None:
    with NodeRegistry.open(path) as a, NodeRegistry.open(path) as b:
        a.add(1, SECRET)
        used = [a.next_downlink_counter(1) for _ in range(10)]
        used += [b.next_downlink_counter(1) for _ in range(10)]
        used += [a.next_downlink_counter(1) for _ in range(DOWNLINK_STEP)]
        used += [b.next_downlink_counter(1) for _ in range(DOWNLINK_STEP)]
    assert len(used) == len(set(used))


def test_downlink_counters_are_per_node(reg: NodeRegistry) -> None:
    reg.add(1, SECRET)
    reg.add(2, SECRET2)
    assert [reg.next_downlink_counter(1) for _ in range(3)] == [0, 1, 2]
    assert reg.next_downlink_counter(2) == 0
    with pytest.raises(RegistryError, match="node 3 is not registered"):
        reg.next_downlink_counter(3)


def test_downlink_counter_exhaustion(path: Path) -> None:
    with NodeRegistry.open(path) as reg:
        reg.add(1, SECRET)
        reg.next_downlink_counter(1)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE downlink SET counter_limit = ?", (2**32 - 2,))
    with NodeRegistry.open(path) as reg:
        assert reg.next_downlink_counter(1) == 2**32 - 2
        assert reg.next_downlink_counter(1) == 2**32 - 1
        with pytest.raises(RegistryError, match="exhausted; provision it with a new secret"):
            reg.next_downlink_counter(1)


# -- the JSON exchange format -------------------------------------------------------------------


def document(*nodes: Any) -> dict[str, Any]:
    return {"format": "edgeveil-registry", "version": 1, "nodes": list(nodes)}


def write(p: Path, data: Any) -> Path:
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return p


def test_import_export_round_trip(tmp_path: Path, reg: NodeRegistry) -> None:
    source = write(
        tmp_path / "in.json",
        document(
            {"node_id": 1, "secret": SECRET.hex(), "zone": "a", "port": "/dev/pts/3"},
            {"node_id": 4294967295, "secret": SECRET2.hex().upper()},
        ),
    )
    assert reg.import_file(source) == 2
    assert reg.import_file(source) == 0  # the same again changes nothing
    out = tmp_path / "out.json"
    assert reg.export_file(out) == 2
    assert mode(out) == 0o600
    data = json.loads(out.read_text())
    assert data == document(
        {"node_id": 1, "secret": SECRET.hex(), "zone": "a"},
        {"node_id": 4294967295, "secret": SECRET2.hex(), "zone": ""},
    )
    with NodeRegistry.open(tmp_path / "other.sqlite") as other:
        assert other.import_file(out) == 2
        for node_id in (1, 4294967295):
            a, b = reg.get(node_id), other.get(node_id)
            assert a is not None
            assert b is not None
            assert (a.zone, a.keys.uplink_key) == (b.zone, b.keys.uplink_key)
    assert reg.export_file(out, node_ids=[1]) == 1
    assert [n["node_id"] for n in json.loads(out.read_text())["nodes"]] == [1]
    assert mode(out) == 0o600
    with pytest.raises(RegistryError, match="node 2 is not registered"):
        reg.export_file(out, node_ids=[2])


def test_export_over_a_readable_file_leaves_it_0600(tmp_path: Path, reg: NodeRegistry) -> None:
    out = tmp_path / "out.json"
    out.write_text("old")
    out.chmod(0o644)
    reg.add(1, SECRET)
    reg.export_file(out)
    assert mode(out) == 0o600
    assert list(tmp_path.glob(".out.json*")) == []


def test_import_conflicts_need_replace(tmp_path: Path, reg: NodeRegistry) -> None:
    reg.add(1, SECRET, "a")
    changed = write(tmp_path / "in.json", document({"node_id": 1, "secret": SECRET2.hex()}))
    with pytest.raises(RegistryError, match=r"nodes\[0\]: node 1 is registered already"):
        reg.import_file(changed)
    assert reg.import_file(changed, replace=True) == 1
    entry = reg.get(1)
    assert entry is not None
    assert entry.keys.uplink_key == NodeKeys(1, SECRET2).uplink_key


def test_import_is_all_or_nothing(tmp_path: Path, reg: NodeRegistry) -> None:
    bad = write(
        tmp_path / "in.json",
        document({"node_id": 1, "secret": SECRET.hex()}, {"node_id": 2, "secret": "00"}),
    )
    with pytest.raises(RegistryError, match=r"nodes\[1\].secret"):
        reg.import_file(bad)
    assert len(reg) == 0


GOOD = {"node_id": 1, "secret": SECRET.hex(), "zone": "z"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{", "not valid JSON"),
        ([], "must be a JSON object"),
        ({"version": 1, "nodes": []}, 'format: must be "edgeveil-registry"'),
        ({"format": "edgeveil-registry", "version": 2, "nodes": []}, "version: must be 1"),
        ({"format": "edgeveil-registry", "version": True, "nodes": []}, "version: must be 1"),
        ({"format": "edgeveil-registry", "version": 1}, "nodes: must be a list"),
        (document(GOOD, "x"), r"nodes\[1\]: must be an object"),
        (document(GOOD, {"secret": SECRET.hex()}), r"nodes\[1\].node_id: missing"),
        (document(GOOD, {**GOOD, "node_id": "2"}), r"nodes\[1\].node_id: must be a whole"),
        (document(GOOD, {**GOOD, "node_id": True}), r"nodes\[1\].node_id: must be a whole"),
        (document(GOOD, {**GOOD, "node_id": -1}), r"nodes\[1\].node_id: must be a whole"),
        (document(GOOD, {**GOOD, "node_id": 2**32}), r"nodes\[1\].node_id: must be a whole"),
        (document(GOOD, {**GOOD, "node_id": 1.5}), r"nodes\[1\].node_id: must be a whole"),
        (document(GOOD, GOOD), r"nodes\[1\].node_id: 1 appears twice \(also nodes\[0\]\)"),
        (document(GOOD, {"node_id": 2}), r"nodes\[1\].secret: missing"),
        (document(GOOD, {"node_id": 2, "secret": 5}), r"nodes\[1\].secret: must be text"),
        (
            document(GOOD, {"node_id": 2, "secret": "ab" * 15}),
            r"nodes\[1\].secret: must be 32..128 hex digits",
        ),
        (
            document(GOOD, {"node_id": 2, "secret": "ab" * 65}),
            r"nodes\[1\].secret: must be 32..128 hex digits",
        ),
        (
            document(GOOD, {"node_id": 2, "secret": "ab" * 16 + "a"}),
            r"nodes\[1\].secret: must be 32..128 hex digits",
        ),
        (
            document(GOOD, {"node_id": 2, "secret": "ab" * 15 + "xy"}),
            r"nodes\[1\].secret: must contain only hex digits",
        ),
        (document(GOOD, {**GOOD, "node_id": 2, "zone": 3}), r"nodes\[1\].zone: must be text"),
        (
            document(GOOD, {**GOOD, "node_id": 2, "zone": "é" * 17}),
            r"nodes\[1\].zone: must be text of at most 32 bytes",
        ),
    ],
)
def test_import_names_the_problem(
    tmp_path: Path, reg: NodeRegistry, data: Any, message: str
) -> None:
    source = write(tmp_path / "in.json", data)
    with pytest.raises(RegistryError, match=message) as info:
        reg.import_file(source)
    assert str(info.value).startswith(f"{source}: ")
    assert len(reg) == 0


def test_import_of_a_missing_file(tmp_path: Path, reg: NodeRegistry) -> None:
    with pytest.raises(RegistryError, match=r"cannot read .*missing\.json"):
        reg.import_file(tmp_path / "missing.json")


# -- secrets never show -------------------------------------------------------------------------


def test_no_secret_or_key_in_reprs_errors_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []

    def error(action: Any) -> None:
        with pytest.raises(Exception) as info:  # any error: we read its text
            action()
        exc: BaseException | None = info.value
        while exc is not None:  # the chain too, as a traceback would show it
            texts.extend((str(exc), repr(exc)))
            exc = exc.__cause__ or exc.__context__

    path = tmp_path / "registry.sqlite"
    with NodeRegistry.open(path) as reg:
        reg.add(0x1234, SECRET, "zone-a")
        entry = reg.get(0x1234)
        assert entry is not None
        reg.accept(0x1234, 300)
        reg.next_downlink_counter(0x1234)
        texts += [repr(reg), str(reg), repr(entry), str(entry), repr(entry.keys)]
        texts += [repr(entry.window), str(vars(entry.window))]
        error(lambda: reg.add(0x1234, SECRET))
        error(lambda: reg.add(5, SECRET[:-1]))
        error(lambda: reg.accept(0x1234, 300 - 64))
        out = tmp_path / "out.json"
        reg.export_file(out)
        reg.import_file(out)
        # a file whose secret is one character off, and one whose secret is too short
        bad = json.loads(out.read_text())
        bad["nodes"][0]["secret"] = SECRET.hex()[:-1] + "g"
        error(lambda: reg.import_file(write(tmp_path / "bad1.json", bad)))
        bad["nodes"][0]["secret"] = SECRET.hex()[:30]
        error(lambda: reg.import_file(write(tmp_path / "bad2.json", bad)))
        bad["nodes"][0]["secret"] = SECRET2.hex()
        error(lambda: reg.import_file(write(tmp_path / "bad3.json", bad)))
        # an unparseable file that holds a secret
        error(lambda: reg.import_file(write(tmp_path / "bad4.json", SECRET.hex() + " {")))
    path.chmod(0o644)
    error(lambda: NodeRegistry.open(path))
    texts.append(caplog.text)
    texts += [r.getMessage() for r in caplog.records]

    keys = NodeKeys(0x1234, SECRET)
    needles = [SECRET, SECRET[:8], keys.uplink_key, keys.downlink_key, keys.base_iv]
    forbidden: list[str] = []
    for value in needles:
        forbidden += [value.hex(), value.hex().upper(), repr(value)[2:-1]]
    forbidden.append(SECRET.hex()[:-1])
    blob = "\n".join(texts)
    assert "0x1234" in blob or "4660" in blob  # the texts are there: the search means something
    for needle in forbidden:
        assert needle not in blob


# -- restoring a backup (security review) -------------------------------------


def _restore(backup: Path, path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(backup.read_bytes())
    path.chmod(0o600)


def test_a_restored_registry_reuses_nonces_until_its_counters_are_advanced(
    tmp_path: Path, path: Path
) -> None:
    with NodeRegistry.open(path) as reg:
        reg.add(1, SECRET)
        reg.accept(1, 255)
    backup = tmp_path / "backup.sqlite"  # an SD-card image, taken with the gateway stopped
    backup.write_bytes(path.read_bytes())
    with NodeRegistry.open(path) as reg:
        used = {reg.next_downlink_counter(1) for _ in range(300)}
        for counter in (256, 257, 258):
            reg.accept(1, counter)

    _restore(backup, path)  # the proof of concept: the same nonces again, the window reopened
    with NodeRegistry.open(path) as reg:
        assert reg.next_downlink_counter(1) in used
        assert outcome(reg, 1, 257) == "new"

    _restore(backup, path)
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nstate_dir = "{path.parent}"\n')
    path.rename(path.parent / "registry.db")
    result = edgeveil("gateway", "advance-counters", "--config", str(config), "--uplinks", "1000")
    assert result.returncode == 0, result.stderr
    assert "downlink counters of every node advanced by 16777216" in result.stdout
    with NodeRegistry.open(path.parent / "registry.db") as reg:
        after = [reg.next_downlink_counter(1) for _ in range(300)]
        assert not used & set(after) and min(after) > max(used)
        assert outcome(reg, 1, 257) == "replay"  # within the uplinks skipped


def test_advance_counters_needs_a_registry(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nstate_dir = "{tmp_path / "none"}"\n')
    result = edgeveil("gateway", "advance-counters", "--config", str(config))
    assert result.returncode == 2 and "no registry at" in result.stderr


# -- revocation ---------------------------------------------------------------


def test_revocation_belongs_to_the_secret_and_reaches_other_connections(path: Path) -> None:
    with NodeRegistry.open(path) as service, NodeRegistry.open(path) as technician:
        service.add(1, SECRET, "hal")
        entry = service.get(1)
        assert entry is not None and not entry.revoked
        assert technician.revoke(1) is True
        assert technician.revoke(1) is False  # already
        assert service.reload_if_changed() is True  # the running gateway's next batch
        entry = service.get(1)
        assert entry is not None and entry.revoked
        assert service.reload_if_changed() is False
        service.remove(1)
        service.add(1, SECRET, "hal")  # re-adding the same secret does not lift it
        entry = service.get(1)
        assert entry is not None and entry.revoked
        assert set(service.revoked()) == {1}
        service.add(1, SECRET2, "hal", replace=True)  # re-provisioned: a new identity
        entry = service.get(1)
        assert entry is not None and not entry.revoked
        assert service.revoked() == {}
        with pytest.raises(RegistryError, match="node 9 is not registered"):
            technician.revoke(9)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_nodes_list_and_revoke_commands(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with NodeRegistry.open(state / "registry.db") as reg:
        reg.add(3, SECRET, "hal")
        reg.add(4, SECRET2)
        reg.accept(3, 17)
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nstate_dir = "{state}"\n')
    rekey = edgeveil("gateway", "nodes", "rekey", "3", "--config", str(config))
    assert rekey.returncode == 0, rekey.stderr
    assert rekey.stdout.startswith("node 3: re-key to key epoch 1 requested")
    result = edgeveil("gateway", "nodes", "revoke", "4", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("node 4 revoked: its frames are refused from now on")
    assert "edgeveil node provision" in result.stdout
    listed = edgeveil("gateway", "nodes", "list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].endswith(": 2 nodes")
    assert lines[1].split()[:4] == ["node", "zone", "link", "last"]
    assert lines[1].split()[-1] == "state"
    pending = "active, re-key to key epoch 1 pending"
    assert lines[2].split()[:4] == ["3", "hal", "-", "never"] and lines[2].endswith(pending)
    assert lines[3].split()[:4] == ["4", "-", "-", "never"] and " revoked " in lines[3]
    assert SECRET.hex() not in listed.stdout and SECRET2.hex() not in listed.stdout
    as_json = edgeveil("gateway", "nodes", "list", "--json", "--config", str(config))
    nodes = json.loads(as_json.stdout)["nodes"]
    assert [(n["node"], n["zone"], n["key_epoch"], n["highest_counter"]) for n in nodes] == [
        (3, "hal", 0, 17),
        (4, "", 0, None),
    ]
    assert nodes[0]["state"] == pending and nodes[0]["heard"] is False
    revoked = edgeveil("gateway", "nodes", "rekey", "4", "--config", str(config))
    assert revoked.returncode == 2 and "node 4 is revoked: it gets no new keys" in revoked.stderr
    unknown = edgeveil("gateway", "nodes", "revoke", "5", "--config", str(config))
    assert unknown.returncode == 2
    assert "node 5 is not registered" in unknown.stderr and "nodes list" in unknown.stderr
    assert stat.S_IMODE((state / "registry.db").stat().st_mode) == 0o600


def test_a_replacement_revokes_the_old_node_when_it_is_first_heard(
    path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with NodeRegistry.open(path) as reg:
        reg.add(1, SECRET, "hal")
        reg.add(2, SECRET2, "hal", replaces=1)
        assert reg.successors() == {1: 2}
        reg.accept(1, 5)  # the old board still reports: nothing changes
        old = reg.get(1)
        assert old is not None and not old.revoked
        reg.accept(2, 0)  # the replacement is heard
        old = reg.get(1)
        assert old is not None and old.revoked
        assert reg.successors() == {}
        assert "node 1 revoked: its replacement 2 was heard" in caplog.text
        with pytest.raises(RegistryError, match="cannot replace itself"):
            reg.add(3, SECRET, replaces=3)


def test_replacements_travel_in_export_files(path: Path, tmp_path: Path) -> None:
    export = tmp_path / "box.json"
    scratch = tmp_path / "scratch.db"
    with NodeRegistry.open(scratch) as box:  # provisioning: node 1 is not in this file
        box.add(7, SECRET2, "hal", replaces=1)
        box.export_file(export)
    assert json.loads(export.read_text())["nodes"][0]["replaces"] == 1
    with NodeRegistry.open(tmp_path / "again.db") as box:  # appending to the box
        box.import_file(export, check_replaced=False)
        assert box.successors() == {1: 7}
    with NodeRegistry.open(path) as gateway:
        with pytest.raises(RegistryError, match=r"nodes\[0\]\.replaces: node 1 is not registered"):
            gateway.import_file(export)
        gateway.add(1, SECRET, "hal")
        gateway.import_file(export)
        assert gateway.successors() == {1: 7}
        gateway.accept(7, 0)
        old = gateway.get(1)
        assert old is not None and old.revoked
