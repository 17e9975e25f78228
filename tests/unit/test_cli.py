"""`vip-agent render --dry-run`: the contract in DESIGN.md, through the real command."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from agent.cli import main
from labkit import objects
from tests.conftest import EXAMPLES

ARGS = ["render", "--dry-run", "--manifests", str(EXAMPLES / "cluster.yaml")]
ARGS += ["--config", str(EXAMPLES / "config.yaml")]


def test_output_dir_files_are_private_and_identical_across_runs(tmp_path: Path) -> None:
    runner = CliRunner()
    for out in ("a", "b"):
        result = runner.invoke(main, [*ARGS, "--output-dir", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    for name in ("keepalived.conf", "haproxy.cfg"):
        a, b = tmp_path / "a" / name, tmp_path / "b" / name
        assert a.read_bytes() == b.read_bytes()
        assert stat.S_IMODE(a.stat().st_mode) == 0o600


def test_rejections_one_line_each_on_stderr_and_strict_exit() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agent", *ARGS], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    lines = proc.stderr.splitlines()
    assert lines == [
        "rejected: ConfigMap kube-system/vip-configmap key '192.0.2.300': "
        "not an IP address (IPv6: write '-' for ':')",
        "rejected: ConfigMap kube-system/vip-configmap key '192.0.2.57': "
        "method must be NAT, DR, TUN or PROXY",
        "rejected: ConfigMap kube-system/vip-configmap key '192.0.2.55': "
        "service default/not-there not found; VIP held without virtual servers",
    ]
    assert "# ==> keepalived.conf <==" in proc.stdout and "# ==> haproxy.cfg <==" in proc.stdout
    strict = subprocess.run(
        [sys.executable, "-m", "agent", *ARGS, "--strict"], capture_output=True, check=False
    )
    assert strict.returncode == 1
    assert strict.stdout == proc.stdout.encode()


def test_stdin_and_environment_settings(tmp_path: Path) -> None:
    env = {**os.environ, "VIP_AGENT_NODE_NAME": "cp-1", "VIP_AGENT_INTERFACE": "eth0"}
    env["VIP_AGENT_CONTROL_PLANE_VIP"] = "192.0.2.10"
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "render", "--dry-run", "--manifests", "-"],
        input=(EXAMPLES / "cluster.yaml").read_text(),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "router_id cp-1" in proc.stdout
    assert "vrrp_instance control_plane {" in proc.stdout


def test_user_templates_override_and_broken_template_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "haproxy.cfg.j2").write_text("# custom {{ stats_socket }}\n")
    runner = CliRunner()
    result = runner.invoke(main, [*ARGS, "--templates", str(tmp_path)])
    assert result.exit_code == 0
    assert "# custom /run/vip-agent/haproxy.sock" in result.output
    assert "vrrp_instance" in result.output  # keepalived.conf.j2 still the packaged one
    (tmp_path / "haproxy.cfg.j2").write_text("{% for x in %}\n")
    result = runner.invoke(main, [*ARGS, "--templates", str(tmp_path)])
    assert result.exit_code == 2
    assert "error: template haproxy.cfg.j2:1:" in result.output


def test_macros_imported_from_another_template_file_reach_block_and_blocks(
    tmp_path: Path,
) -> None:
    """A user's templates may keep their macros in a file of their own: an imported
    template sees the environment's globals only (not the render's variables), and
    block() and blocks() must be among them."""
    (tmp_path / "lib.j2").write_text(
        "{% macro vs(v) %}VS {{ v.vip }} {{ v.port }}\n{% endmacro %}\n"
        "{% macro all(items) %}{{ blocks(vs, items) }}{% endmacro %}\n"
        "{% macro first(items) %}{{ block(vs, items[0]) }}{% endmacro %}\n"
    )
    (tmp_path / "keepalived.conf.j2").write_text(
        '{% import "lib.j2" as lib %}{% from "lib.j2" import first %}'
        "{{ lib.all(virtual_servers) }}FIRST {{ first(virtual_servers) }}"
    )
    runner = CliRunner()
    result = runner.invoke(main, [*ARGS, "--templates", str(tmp_path)])
    assert result.exit_code == 0, result.output
    packaged = runner.invoke(main, ARGS).stdout.count("\nvirtual_server ")
    assert packaged > 1
    assert result.stdout.count("VS ") == packaged + 1  # every one, then the first again
    assert "FIRST VS 192.0.2.50 80\n" in result.stdout


def test_bad_input_errors_exit_2_with_a_message(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["render", "--dry-run", "--manifests", str(tmp_path / "x")])
    assert result.exit_code == 2 and "no such file or directory" in result.output
    result = runner.invoke(main, [*ARGS, "--advert-int", "abc"])
    assert result.exit_code == 2
    result = runner.invoke(main, [*ARGS, "--interface", "eth0\nx"])
    assert result.exit_code == 2 and "not a Linux interface name" in result.output
    result = runner.invoke(main, ["render", "--manifests", str(EXAMPLES / "cluster.yaml")])
    assert result.exit_code == 2 and "--dry-run" in result.output


def test_render_pauses_the_cyclic_collector_only_while_it_runs(tmp_path: Path) -> None:
    import gc

    runner = CliRunner()
    assert gc.isenabled()
    assert runner.invoke(main, [*ARGS, "--interface", "eth0"]).exit_code == 0
    assert gc.isenabled()
    # a failure inside the render (exit 2 through SystemExit) restores it too
    missing = ["render", "--dry-run", "--manifests", str(tmp_path / "missing.yaml")]
    assert runner.invoke(main, missing).exit_code == 2
    assert gc.isenabled()


def test_readme_settings_reference_is_current() -> None:
    from agent.cli import settings_reference

    readme = (EXAMPLES.parent / "README.md").read_text()
    begin, end = "<!-- settings-reference:begin -->\n", "<!-- settings-reference:end -->"
    table = readme[readme.index(begin) + len(begin) : readme.index(end)]
    assert table == settings_reference(), "run: vip-agent settings --reference"


def test_commands_other_than_render_start_without_jinja_or_the_translator() -> None:
    """check-apiserver may run as a keepalived vrrp_script every second or so: the command
    line loads only what every command needs, and render loads the rest."""
    probe = (
        "import sys; from agent.cli import main; "
        "print(sorted(m for m in ('jinja2', 'agent.core.translate', 'agent.core.render') "
        "if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_the_command_ends_a_render_without_tearing_the_interpreter_down(
    tmp_path: Path,
) -> None:
    """``python -m agent`` (and the console script, ``entry``) owns its process: an exit
    handler never runs, the files are there and the exit code is the render's, also with
    standard output closed (click then drops what it would print)."""
    handler = "import atexit, sys; atexit.register(lambda: sys.stderr.write('torn down\\n')); "
    probe = handler + "import runpy; runpy.run_module('agent', run_name='__main__')"
    out = tmp_path / "out"
    args = [*ARGS, "--output-dir", str(out)]
    ran = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, check=False)
    assert ran.returncode == 0 and b"torn down" not in ran.stderr, ran.stderr
    assert (out / "keepalived.conf").read_text().startswith("# keepalived.conf")
    strict = subprocess.run(
        [sys.executable, "-c", probe, *args, "--strict"], capture_output=True, check=False
    )
    assert strict.returncode == 1 and b"torn down" not in strict.stderr
    # in-process callers of main keep theirs: the handler runs
    kept = handler + "from agent.cli import main; main()"
    ran = subprocess.run([sys.executable, "-c", kept, *args], capture_output=True, check=False)
    assert ran.returncode == 0 and b"torn down" in ran.stderr
    closed = subprocess.run(
        ["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "agent", *args],
        capture_output=True,
        check=False,
    )
    assert closed.returncode == 0, closed.stderr


def test_the_command_in_its_own_process_prints_all_that_main_prints(tmp_path: Path) -> None:
    """``vip-agent`` ends a render's process without tearing it down (``_end_process``):
    its output, block-buffered into a pipe and far larger than the buffer, is still the
    whole of what ``main`` prints in a process that goes on, and so is its exit code."""
    items = [objects.node("worker-1", "192.0.2.11")]
    data = {}
    for i in range(300):
        name, v4 = f"web-{i}", i < 250
        data[f"203.0.113.{1 + i}" if v4 else f"2001-db8--{i}"] = f"default/{name}"
        items.append(objects.service(name, [objects.port("http", 80, 8080)]))
        address = f"198.51.100.{1 + i}" if v4 else f"2001:db8:1::{i}"
        items.append(
            objects.endpoint_slice(
                name,
                [objects.port("http", 8080)],
                [objects.endpoint(address, node_name="worker-1")],
                address_type="IPv4" if v4 else "IPv6",
            )
        )
    data["203.0.113.300"] = "default/web-0"  # one rejection, for --strict
    items.append(objects.configmap(data))
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    args = ["render", "--dry-run", "--manifests", str(path), "--interface", "eth0"]
    args += ["--node-name", "worker-1", "--strict"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    own = subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, env=env, check=False
    )
    kept = CliRunner().invoke(main, args)
    assert len(own.stdout) > 65_536  # more than a pipe holds
    assert own.stdout == kept.stdout_bytes
    assert own.returncode == kept.exit_code == 1
    assert own.stderr.decode().count("rejected: ") == 1
