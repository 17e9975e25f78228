"""check-apiserver and the prober against stand-in HTTPS servers: 200, 401, 500, hang, refused."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest

from agent.health import ProbeConfig, Prober, ProbeResult, check, probe
from labkit.ports import free_port
from labkit.standin_apiserver import StandIn, make_certificate


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    directory = tmp_path_factory.mktemp("standin")
    cert, key = make_certificate(directory, ["127.0.0.1"])
    mode = directory / "mode"
    server = StandIn("127.0.0.1", 0, cert, key, mode)
    server.start()
    url = f"https://127.0.0.1:{server.server_address[1]}/readyz"
    yield url, cert, mode
    server.shutdown()


@pytest.mark.parametrize(
    ("mode", "ok", "reason"),
    [
        ("200", True, "HTTP 200"),
        ("401", False, "HTTP 401"),
        ("403", False, "HTTP 403"),
        ("500", False, "HTTP 500"),
        ("hang", False, "no answer within 0.3s"),
    ],
)
def test_only_http_200_is_healthy(
    standin: tuple[str, Path, Path], mode: str, ok: bool, reason: str
) -> None:
    url, cert, mode_file = standin
    mode_file.write_text(mode)
    result = probe(ProbeConfig(url=url, ca_file=str(cert), timeout=0.3))
    assert result.ok is ok
    assert reason in result.reason


def test_refused_and_untrusted(standin: tuple[str, Path, Path]) -> None:
    url, _, mode_file = standin
    mode_file.write_text("200")
    refused = probe(ProbeConfig(url=f"https://127.0.0.1:{free_port()}/readyz", insecure=True))
    assert not refused.ok and "connection refused" in refused.reason
    untrusted = probe(ProbeConfig(url=url, timeout=1))  # system CAs do not know it
    assert not untrusted.ok and "certificate" in untrusted.reason
    assert probe(ProbeConfig(url=url, insecure=True)).ok


def test_through_the_vip_only_when_holding_it(standin: tuple[str, Path, Path]) -> None:
    url, cert, mode_file = standin
    mode_file.write_text("200")
    config = ProbeConfig(url=url, ca_file=str(cert), timeout=0.3)
    port = int(url.split(":")[2].split("/")[0])
    # the "VIP" here is a closed port on loopback: holding it must fail the check
    closed = free_port()
    assert check(config, vip=ip_address("127.0.0.1"), holds_vip=lambda: False, vip_port=closed).ok
    failed = check(config, vip=ip_address("127.0.0.1"), holds_vip=lambda: True, vip_port=closed)
    assert not failed.ok and "through the VIP" in failed.reason
    assert check(config, vip=ip_address("127.0.0.1"), holds_vip=lambda: True, vip_port=port).ok


@pytest.mark.parametrize(
    ("mode", "code", "message"),
    [("200", 0, "healthy: "), ("500", 1, "unhealthy: "), ("401", 1, "HTTP 401")],
)
def test_check_apiserver_command(
    standin: tuple[str, Path, Path], tmp_path: Path, mode: str, code: int, message: str
) -> None:
    url, cert, mode_file = standin
    mode_file.write_text(mode)
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "agent", "check-apiserver", "--url", url),
            *("--ca-file", str(cert), "--timeout", "0.5", "--config", str(config)),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == code, done.stderr
    assert message in done.stderr


def test_prober_hysteresis_and_track_file(tmp_path: Path) -> None:
    answers: list[bool] = []
    track = tmp_path / "health"
    changes: list[bool] = []
    prober = Prober(
        check=lambda: ProbeResult(answers.pop(0), "scripted"),
        track_file=track,
        interval=0.01,
        fall=2,
        rise=3,
        on_change=changes.append,
    )

    def feed(*values: bool) -> str:
        answers.extend(values)
        for _ in values:
            prober.step()
        return track.read_text()

    assert feed(True) == "0\n"  # the first answer decides at once
    assert feed(False) == "0\n"  # one failure is not enough
    assert feed(True, False) == "0\n"  # a good answer resets the streak
    assert feed(False, False) == "1\n"  # fall=2 consecutive failures: failing
    assert feed(True, True) == "1\n"
    assert feed(True) == "0\n"  # rise=3
    assert changes == [True, False, True]
    assert not list(tmp_path.glob(".*tmp"))
