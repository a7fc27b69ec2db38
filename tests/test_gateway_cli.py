"""`edgeveil gateway ...` as an operator runs it: a real process, its output and exit status.

Whatever the operator gets wrong (the configuration file, the registry file, the arguments)
ends with one clear line on stderr and exit status 2, never a traceback. `status` asks a
running gateway (here one in this process, with metrics on a free port) and says plainly when
nobody answers (exit status 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tty
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway import config as config_mod
from gateway import service as service_mod
from gateway.errors import EdgeveilError

from .command import child_process, edgeveil
from .gateway_harness import running_gateway
from .mosquitto import Mosquitto, free_port, mosquitto  # noqa: F401 - the fixture
from .waiting import until, until_sync

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def edgeveil_together(
    *commands: tuple[str, ...], cwd: Path = ROOT
) -> list[subprocess.CompletedProcess[str]]:
    """Several edgeveil commands at the same time (each one starts in about a second)."""
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(
                child_process(
                    [sys.executable, "-m", "gateway.cli", *args],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                    text=True,
                    cwd=cwd,
                )
            )
            for args in commands
        ]
        results = []
        for args, proc in zip(commands, procs, strict=True):
            out, err = proc.communicate(timeout=60)
            results.append(subprocess.CompletedProcess(list(args), proc.returncode, out, err))
    return results


def assert_one_line_usage_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit status 2, no traceback, nothing on stdout, and the error is exactly one line of
    stderr (our own errors print only that line)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("edgeveil gateway: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


# -- bad configuration files ---------------------------------------------------------------------

BAD_CONFIGS = [
    pytest.param('[mqtt\nhost = "x"\n', ("not valid TOML", "line 1"), id="invalid-toml"),
    pytest.param('[mqtt]\nhots = "broker"\n', ("mqtt.hots", "unknown key"), id="unknown-key"),
    pytest.param('[gatway]\nsite = "x"\n', ("gatway", "unknown key"), id="unknown-table"),
    pytest.param(
        '[mqtt]\nport = "1883"\n',
        ("mqtt.port", "must be a whole number", "'1883'"),
        id="wrong-type-int",
    ),
    pytest.param(
        '[mqtt]\ntls = "yes"\n', ("mqtt.tls", "must be true or false"), id="wrong-type-bool"
    ),
    pytest.param(
        "[gateway]\nstate_dir = 5\n", ("gateway.state_dir", "must be text"), id="wrong-type-text"
    ),
    pytest.param(
        "[mqtt]\nport = 70000\n", ("mqtt.port", "must be 1..65535", "70000"), id="bad-port"
    ),
    pytest.param("[mqtt]\nport = 0\n", ("mqtt.port", "must be 1..65535"), id="port-zero"),
    pytest.param(
        '[metrics]\nlisten = "127.0.0.1:99999"\n',
        ("metrics.listen", "1..65535"),
        id="bad-metrics-port",
    ),
    pytest.param(
        '[[serial]]\nname = "north"\nurl = "/dev/ttyUSB0"\nusb = { vid = "10c4", pid = "ea60" }\n',
        ("serial[0]", "exactly one of url", "usb"),
        id="url-and-usb",
    ),
    pytest.param('[[serial]]\nname = "north"\n', ("serial[0]", "exactly one of url"), id="neither"),
    pytest.param(
        '[[serial]]\nusb = { vid = "zz", pid = "ea60" }\n',
        ("serial[0].usb.vid", "hex"),
        id="bad-usb-vid",
    ),
    pytest.param('[gateway]\nsite = "Plein Noord"\n', ("gateway.site", "lowercase"), id="bad-site"),
    pytest.param(
        '[spool]\nwhen_full = "panic"\n', ("spool.when_full", "drop_oldest"), id="bad-choice"
    ),
    pytest.param(  # security review: a password must not leave in plain text
        '[mqtt]\nhost = "broker.example.org"\nusername = "gw"\npassword_file = "pw"\n',
        ("mqtt.tls", "must be true with mqtt.password_file", "broker.example.org"),
        id="password-without-tls",
    ),
    pytest.param(
        '[mqtt]\nhost = "10.0.0.5"\nca_file = "ca.pem"\ntls = false\n',
        ("mqtt.tls", "must be true with mqtt.ca_file", "plain text"),
        id="ca-without-tls",
    ),
]


@pytest.mark.parametrize(("text", "needles"), BAD_CONFIGS)
def test_bad_config_gives_one_line_naming_the_key_and_status_2(
    tmp_path: Path, text: str, needles: tuple[str, ...]
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    # `run` validates the same way before it starts anything (no state directory appears)
    check, run = edgeveil_together(
        ("gateway", "check-config", "--config", str(path)),
        ("gateway", "run", "--config", str(path)),
        cwd=tmp_path,
    )
    line = assert_one_line_usage_error(check, str(path), *needles)  # the file, the key
    assert_one_line_usage_error(run, line.removeprefix("edgeveil gateway: error: "))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.toml"]


def test_config_file_that_is_missing_unreadable_or_not_text(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    for command in ("check-config", "run"):
        assert_one_line_usage_error(
            edgeveil("gateway", command, "--config", str(missing), cwd=tmp_path),
            str(missing),
            "does not exist",
        )
    assert_one_line_usage_error(
        edgeveil("gateway", "check-config", "--config", str(tmp_path)), "cannot read"
    )
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[\x00m\x00q\x00t\x00t\x00]\x00")  # UTF-16, say
    assert_one_line_usage_error(
        edgeveil("gateway", "check-config", "--config", str(binary)), "not UTF-8"
    )


def test_unusable_state_directory_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = tmp_path / "gateway.toml"
    path.write_text(f'[gateway]\nstate_dir = "{blocker}/state"\n[metrics]\nlisten = false\n')
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"format": "edgeveil-registry", "version": 1, "nodes": []}))
    assert_one_line_usage_error(
        edgeveil("gateway", "import-nodes", str(registry), "--config", str(path)),
        "cannot create the state directory",
    )
    result = edgeveil("gateway", "run", "--config", str(path))
    assert result.returncode == 1, result.stderr  # a runtime failure, said in one line
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"edgeveil gateway: cannot create the state directory {blocker}/state: Not a directory"
    )


# -- bad arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("gateway", "frobnicate"), "edgeveil gateway: error: argument COMMAND: invalid choice"),
        (("gateway",), "edgeveil gateway: error: the following arguments are required: COMMAND"),
        (
            ("gateway", "import-nodes"),
            "edgeveil gateway import-nodes: error: the following arguments are required: FILE",
        ),
        # an option no parser knows is reported by the top-level one
        (("gateway", "check-config", "--confg", "x.toml"), "edgeveil: error: unrecognized"),
    ],
)
def test_bad_arguments_give_one_error_line_and_status_2(args: tuple[str, ...], error: str) -> None:
    """argparse's errors: its usage line, then one error line; exit status 2."""
    result = edgeveil(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert [line for line in lines if "error:" in line] == [lines[-1]], result.stderr
    assert lines[-1].startswith(error), lines[-1]
    assert all(line.startswith(("usage:", " ")) for line in lines[:-1]), result.stderr


def test_status_with_a_url_that_is_not_one(tmp_path: Path) -> None:
    assert_one_line_usage_error(
        edgeveil("gateway", "status", "--metrics", "localhost:9108"), "http://"
    )


# -- check-config on the shipped examples ----------------------------------------------------


def test_check_config_summarises_the_full_example() -> None:
    result = edgeveil("gateway", "check-config", "--config", str(EXAMPLES / "gateway.toml"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout.splitlines()
    assert out[0] == f"{EXAMPLES / 'gateway.toml'}: ok"
    assert "site demo-site, gateway gateway-1, state in edgeveil-state" in out[1]
    assert any(line.startswith("  serial north: /dev/serial/by-id/") for line in out)
    assert "  serial south: usb 1a86:55d4 serial 5434012345 at 115200 baud" in out
    assert "  mqtt: broker.example.org:8883, TLS, user gateway-1, payload senml+json" in out
    assert "  spool: at most 1000000 messages, 604800 s, when full: drop_oldest" in out
    assert "  metrics: 127.0.0.1:9108" in out


def test_check_config_summarises_the_minimal_example() -> None:
    path = EXAMPLES / "gateway-minimal.toml"
    result = edgeveil("gateway", "check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == f"{path}: ok"
    assert "site plein-noord, gateway cabinet-3, state in /var/lib/edgeveil" in out[1]
    assert "  serial nodes: usb 10c4:ea60 at 115200 baud" in out
    assert "  mqtt: localhost:1883, no TLS, payload senml+json" in out


def test_check_config_without_a_file_shows_the_defaults() -> None:
    result = edgeveil("gateway", "check-config")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "defaults: ok"
    assert "  mqtt: embedded broker on localhost (no [mqtt] table)" in result.stdout


# -- import-nodes ---------------------------------------------------------------------------------

SECRET_HEX = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"  # noqa: S105 - TEST ONLY


def _registry_doc(nodes: list[dict[str, object]]) -> str:
    return json.dumps({"format": "edgeveil-registry", "version": 1, "nodes": nodes})


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        pytest.param('{"format": "edgeveil-registry", ', ("not valid JSON", "line 1"), id="json"),
        pytest.param('["nodes"]', ("must be a JSON object",), id="not-object"),
        pytest.param(
            _registry_doc([{"node_id": 7, "secret": "zz" * 16}]),
            ("nodes[0].secret", "hex digits"),
            id="secret-not-hex",
        ),
        pytest.param(
            _registry_doc([{"node_id": 7, "secret": "ab"}]),
            ("nodes[0].secret", "hex digits"),
            id="secret-short",
        ),
        pytest.param(
            _registry_doc([{"secret": SECRET_HEX}]), ("nodes[0].node_id: missing",), id="no-id"
        ),
        pytest.param(
            _registry_doc([{"node_id": -1, "secret": SECRET_HEX}]),
            ("nodes[0].node_id", "whole number"),
            id="bad-id",
        ),
        pytest.param(
            _registry_doc([{"node_id": 7, "secret": SECRET_HEX}] * 2),
            ("nodes[1].node_id", "appears twice"),
            id="twice",
        ),
        pytest.param(
            json.dumps({"format": "edgeveil-registry", "version": 9, "nodes": []}),
            ("version: must be 1",),
            id="version",
        ),
    ],
)
def test_import_nodes_names_the_problem_in_the_registry_file(
    tmp_path: Path, content: str, needles: tuple[str, ...]
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n')
    registry = tmp_path / "nodes.json"
    registry.write_text(content, encoding="utf-8")
    result = edgeveil("gateway", "import-nodes", str(registry), "--config", str(config))
    line = assert_one_line_usage_error(result, str(registry), *needles)
    assert SECRET_HEX not in line  # a registry error never quotes a secret


def test_import_nodes_missing_file_and_success(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n')
    missing = tmp_path / "missing.json"
    assert_one_line_usage_error(
        edgeveil("gateway", "import-nodes", str(missing), "--config", str(config)),
        f"cannot read {missing}",
    )
    registry = tmp_path / "nodes.json"
    registry.write_text(_registry_doc([{"node_id": 7, "secret": SECRET_HEX, "zone": "north"}]))
    result = edgeveil("gateway", "import-nodes", str(registry), "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"1 nodes imported from {registry}; 1 registered in {tmp_path / 'state'}"
    )
    # the same file again adds nothing; another secret for the same node needs --replace
    result = edgeveil("gateway", "import-nodes", str(registry), "--config", str(config))
    assert result.stdout.startswith("0 nodes imported")
    registry.write_text(_registry_doc([{"node_id": 7, "secret": "b" * 32, "zone": "north"}]))
    assert_one_line_usage_error(
        edgeveil("gateway", "import-nodes", str(registry), "--config", str(config)),
        "node 7 is registered already with another secret",
    )


# -- status ----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def gateway_with_metrics(config_at: Callable[[int], Path]) -> AsyncIterator[int]:
    """The gateway of the configuration file config_at(port) makes, its metrics on a free
    port, running in this event loop; yields the port. The configuration takes no port 0, so
    one is chosen here: one that another process takes before the gateway binds it is chosen
    again."""
    async with contextlib.AsyncExitStack() as stack:
        for attempt in range(3):
            port = free_port()
            try:
                await stack.enter_async_context(running_gateway(config_mod.load(config_at(port))))
            except EdgeveilError as exc:
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise
            else:
                break
        yield port


@pytest.mark.asyncio
async def test_status_of_a_running_gateway_and_of_nothing(
    tmp_path: Path,
    mosquitto: Mosquitto,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the broker and spool gauges are refreshed by the gateway's housekeeping (every 5 s; here
    # more often), and the retained statement passes through the spool first
    monkeypatch.setattr(service_mod, "HOUSEKEEPING_S", 0.2)
    master, slave = os.openpty()
    tty.setraw(slave)
    path = tmp_path / "gateway.toml"

    def config_at(metrics_port: int) -> Path:
        path.write_text(
            f'[gateway]\nsite = "cli-site"\nid = "gw-status"\nstate_dir = "{tmp_path / "state"}"\n'
            f'[[serial]]\nname = "bench"\nurl = "{os.ttyname(slave)}"\n'
            f'[[serial]]\nname = "unplugged"\nurl = "{tmp_path / "ttyGONE"}"\n'
            f'[mqtt]\nhost = "{mosquitto.host}"\nport = {mosquitto.port}\n'
            f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
        )
        return path

    async def status(url: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(edgeveil, "gateway", "status", "--metrics", url)

    try:
        async with gateway_with_metrics(config_at) as metrics_port:
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            latest: list[subprocess.CompletedProcess[str]] = []

            async def connected_and_drained() -> subprocess.CompletedProcess[str] | None:
                latest[:] = [await status(url)]
                out = latest[0].stdout
                return (
                    latest[0] if "broker: connected" in out and "spool: 0 waiting" in out else None
                )

            result = await until(
                connected_and_drained, "connected, spool drained", 30, lambda: latest, interval=0.2
            )
            assert result is not None
            assert result.returncode == 0, result.stderr
            assert result.stderr == ""
            lines = result.stdout.splitlines()
            assert lines[0].startswith("broker: connected, ")
            assert lines[0].endswith(" messages published")
            assert "spool: 0 waiting, oldest 0 s" in lines
            assert "serial bench: open" in lines
            assert "serial unplugged: WAITING for the port" in lines
            assert "frames: none yet" in lines
            assert "nodes registered: 0" in lines
            storage = next(line for line in lines if line.startswith("storage: "))
            assert storage.startswith("storage: ok, state directory ")
            assert storage.endswith(" MB free")
    finally:
        os.close(master)
        os.close(slave)

    # the gateway has stopped: nobody answers
    result = await status(url)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stdout.splitlines() == [
        f"no gateway answers at {url} ([Errno 111] Connection refused): "
        "is it running, with metrics on?"
    ]


def test_status_of_something_that_is_not_a_gateway(tmp_path: Path) -> None:
    """A web server that is not the gateway's metrics endpoint: said in one line, exit 1."""
    (tmp_path / "index.html").write_text("<!DOCTYPE html><p>hello</p>")
    with child_process(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as server:
        assert server.stdout is not None
        os.set_blocking(server.stdout.fileno(), False)
        said = bytearray()

        def serving() -> re.Match[bytes] | None:  # it says so once it listens
            said.extend(server.stdout.read() or b"")  # type: ignore[union-attr]
            return re.search(rb"Serving HTTP on \S+ port (\d+)", said)

        port = int(until_sync(serving, "the web server listens", 10, lambda: bytes(said))[1])
        url = f"http://127.0.0.1:{port}/"
        result = edgeveil("gateway", "status", "--metrics", url)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert result.stdout.strip() == (
            f"{url} answers, but not with Prometheus metrics: is it the gateway's?"
        )
