"""The ``vip-agent`` command: each subcommand only wires the parts together."""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from agent import settings as settings_mod
from agent.settings import Settings, SettingsError, node_name_of

F = Callable[..., Any]


def settings_options(func: F) -> F:
    """One click option per Settings field; None means 'not given on the command line'."""
    for f in reversed(settings_mod.fields()):
        scalar, is_tuple = settings_mod.field_type(f.name)
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['doc']} [env {settings_mod.ENV_PREFIX}{f.name.upper()}]"
        if scalar is bool:
            option = click.option(
                f"{flag}/--no-{f.name.replace('_', '-')}", f.name, default=None, help=help_text
            )
        elif is_tuple:
            option = click.option(
                flag, f.name, multiple=True, help=help_text + " (repeat or comma-separate)"
            )
        else:
            option = click.option(flag, f.name, type=scalar, default=None, help=help_text)
        func = option(func)
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        default=None,
        help=f"YAML settings file [default {settings_mod.DEFAULT_CONFIG_FILE} when present].",
    )(func)


def load_settings(config_file: str | None, flags: dict[str, Any]) -> Settings:
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    for name, value in list(given.items()):
        if isinstance(value, tuple):
            given[name] = ",".join(value)
    return settings_mod.load(flags=given, environ=os.environ, config_file=config_file)


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group()
@click.version_option(package_name="vip-agent")
def main() -> None:
    """Highly available VIPs for Kubernetes with keepalived (VRRP + IPVS) and haproxy."""


class OwnProcess:
    """The commands run in a process of their own, which ends when they do (``entry``)."""


def entry() -> None:
    """The ``vip-agent`` command (the console script, ``python -m agent``).  Tests and other
    callers invoke ``main`` in their own process, which a command must leave running."""
    main(obj=OwnProcess())


@main.command()
@click.option("--dry-run", is_flag=True, help="Render only: no daemons, no root, no /etc writes.")
@click.option(
    "--output-dir", type=click.Path(file_okay=False), default=None, help="Write files here."
)
@click.option("--strict", is_flag=True, help="Exit 1 when any input was rejected.")
@settings_options
@click.pass_obj
def render(
    process: OwnProcess | None,
    /,
    dry_run: bool,
    output_dir: str | None,
    strict: bool,
    config_file: str | None,
    **flags: Any,
) -> None:
    """Render keepalived.conf and haproxy.cfg once, from manifest files.

    --manifests PATH (repeatable): a YAML/JSON file, a directory of them, or - for stdin,
    as `kubectl get svc,endpointslices,endpoints,configmaps,nodes -A -o yaml` prints them.
    """
    if not dry_run:
        fail("render needs --dry-run (vip-agent run applies configuration)")
    # The cyclic collector would rescan every parsed object again and again while the
    # model is built (a fifth of a 5,000-Service render, half of a YAML one); parsed
    # JSON/YAML holds no cycles, so there is nothing for it to find.
    collecting = gc.isenabled()
    gc.disable()
    try:
        _render_once(
            output_dir, strict, config_file, flags, end_process=isinstance(process, OwnProcess)
        )
    finally:
        if collecting:
            gc.enable()


def _render_once(
    output_dir: str | None,
    strict: bool,
    config_file: str | None,
    flags: dict[str, Any],
    *,
    end_process: bool,
) -> None:
    # Only a render needs Jinja, the translator and the daemons' file list: the other
    # commands do without them (check-apiserver may run as a keepalived vrrp_script,
    # every second or so, where they were a third of its start-up)
    from agent import assets
    from agent.apply import write_file
    from agent.core import render as render_mod
    from agent.core.translate import PlanMemo, translate
    from agent.daemons import config_files_for
    from agent.daemons.spec import outputs
    from agent.sources.manifests import ManifestError, load_snapshot

    try:
        settings = load_settings(config_file, flags)
        if not settings.manifests:
            fail("--manifests PATH is required (a file, a directory or -)")
        snapshot = load_snapshot(settings.manifests)
    except (SettingsError, ManifestError) as err:
        fail(str(err))
    if settings.interface is None:
        fail("setting interface is required for a dry run (--interface or VIP_AGENT_INTERFACE)")
    # the memo and the renderer are held here, not made and dropped inside the calls, so
    # that what they hold is freed with the rest (or not at all: ``end_process``)
    memo = PlanMemo(once=True)
    state = translate(
        snapshot,
        settings,
        node_name=node_name_of(settings),
        interface=settings.interface,
        memo=memo,
    )
    try:
        renderer = render_mod.Renderer(
            assets.template_dirs(settings.templates),
            once=True,
            bytecode_cache=assets.template_cache(),
        )
        files = renderer.render(state, outputs(config_files_for(settings)))
    except (render_mod.RenderError, assets.NoTemplates) as err:
        fail(str(err))
    for rejection in state.rejections:
        click.echo(f"rejected: {rejection}", err=True)
    if output_dir:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            # keepalived.conf may hold a VRRP password: never world-readable
            write_file(out / name, text.encode("utf-8"), 0o600)
    else:
        for name, text in files.items():
            click.echo(f"# ==> {name} <==")
            click.echo(text, nl=False)
    code = 1 if strict and state.rejections else 0
    if end_process:
        _end_process(code)
    if code:
        sys.exit(code)


def _end_process(code: int) -> NoReturn:
    """Exit at once, the output flushed (the files are written and synced): what a
    one-shot render built dies with its process, and freeing it object by object, then
    tearing the interpreter down, cost a 5,000-Service dry run a tenth of its time.  mypy
    ends its runs the same way.  Output that cannot be flushed fails the run with 120,
    as Python's own exit does."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with the descriptor closed: nothing was written
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120
    os._exit(code)


def settings_reference() -> str:
    """The configuration reference table of the README, made from the Settings fields."""
    rows = ["| YAML key | flag | environment | default | meaning |", "|---|---|---|---|---|"]
    for f in settings_mod.fields():
        scalar, _ = settings_mod.field_type(f.name)
        flag = "--" + f.name.replace("_", "-")
        if scalar is bool:
            flag = f"{flag}/--no-{f.name.replace('_', '-')}"
        default = settings_mod.display(f.default)
        shown = ", ".join(default) if isinstance(default, tuple) else default
        shown = "(none)" if shown in (None, "", ()) else f"`{shown}`"
        env = f"{settings_mod.ENV_PREFIX}{f.name.upper()}"
        rows.append(f"| `{f.name}` | `{flag}` | `{env}` | {shown} | {f.metadata['doc']} |")
    return "\n".join(rows) + "\n"


@main.command("settings")
@click.option("--reference", is_flag=True, help="Print the README's settings table instead.")
@settings_options
def show_settings(reference: bool, config_file: str | None, **flags: Any) -> None:
    """Print the effective settings (secrets redacted) as YAML."""
    import yaml

    if reference:
        click.echo(settings_reference(), nl=False)
        return
    try:
        settings = load_settings(config_file, flags)
    except SettingsError as err:
        fail(str(err))
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.redacted().items()}
    click.echo(yaml.safe_dump(data, sort_keys=False), nl=False)


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
@settings_options
def show_status(as_json: bool, config_file: str | None, **flags: Any) -> None:
    """What this node holds now: VIPs per VRRP instance, state, health, last apply, rejections.

    Reads the status file the running agent keeps in run_dir, and the interface's live
    addresses. Exit 0 when the agent is running, 1 when it is not (the last status is
    still shown), 2 when there is no status to show.
    """
    import json

    from agent import netlink
    from agent.telemetry import status as status_mod

    try:
        settings = load_settings(config_file, flags)
        document = status_mod.read(Path(settings.run_dir) / status_mod.FILE_NAME)
    except (SettingsError, status_mod.NoStatus) as err:
        fail(str(err))
    interface = str(document.get("interface") or settings.interface or "")
    try:
        on_interface = {a for a, _ in netlink.addresses(interface)} if interface else None
    except OSError:
        on_interface = None
    document = status_mod.live(document, on_interface, bgp=_bgp_now(settings, document))
    if as_json:
        click.echo(json.dumps(document, indent=2, sort_keys=True))
    else:
        click.echo(status_mod.human(document), nl=False)
    if not document["running"]:
        click.echo(
            f"error: vip-agent (pid {document.get('pid')}) is not running; "
            "this is the last status it wrote",
            err=True,
        )
        sys.exit(1)


def _bgp_now(settings: Settings, document: dict[str, Any]) -> dict[str, Any] | None:
    """Mode bgp: what BIRD says of its sessions, and which gates are open, right now."""
    from agent import netlink
    from agent.daemons import bird

    bgp = document.get("bgp")
    if not bgp:
        return None
    now: dict[str, Any] = {}
    try:
        sessions = bird.sessions(binary=settings.birdc_binary, socket=bird.socket_path(settings))
        now["sessions"] = [
            {"name": s.name, "neighbor": s.neighbor, "state": s.state, "exported": s.exported}
            for s in sessions
        ]
    except OSError as err:
        now["sessions"], now["sessions_error"] = None, str(err)
    try:
        now["gate_open"] = sorted(str(a) for a in netlink.gate_routes(int(bgp["gate_table"])))
    except Exception:  # pyroute2's NetlinkError is not an OSError
        now["gate_open"] = None
    return now


@main.command()
@settings_options
def run(config_file: str | None, **flags: Any) -> None:
    """Keep this node's keepalived and haproxy configuration current, and the daemons running."""
    import signal
    import threading

    from agent import logs, runtime

    try:
        settings = load_settings(config_file, flags)
    except SettingsError as err:
        fail(str(err))
    logs.setup(settings.log_format, secrets=settings.secrets())
    try:
        parts = runtime.build(
            settings,
            reload=lambda: load_settings(config_file, flags),
            config_file=config_file,
        )
    except runtime.StartError as err:
        fail(str(err))
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("vip-agent").info("signal %d: shutting down", signum)
        parts.stop(stop)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    parts.run(stop)


@main.command("check-apiserver")
@click.option("--url", default=None, help="Health URL [setting apiserver_url].")
@click.option("--ca-file", default=None, help="CA bundle to verify the apiserver with.")
@click.option("--insecure-skip-tls-verify", is_flag=True, help="Do not verify the certificate.")
@click.option("--timeout", type=float, default=None, help="Seconds to wait for an answer.")
@click.option("--client-cert", default=None, help="Client certificate.")
@click.option("--client-key", default=None, help="Client key.")
@click.option("--token-file", default=None, help="File with a bearer token.")
@click.option("--config", "config_file", default=None, help="Settings file.")
def check_apiserver(
    url: str | None,
    ca_file: str | None,
    insecure_skip_tls_verify: bool,
    timeout: float | None,
    client_cert: str | None,
    client_key: str | None,
    token_file: str | None,
    config_file: str | None,
) -> None:
    """Exit 0 when the local apiserver answers /readyz with HTTP 200 (a keepalived vrrp_script).

    When this node holds the control-plane VIP, the check also goes through the VIP.
    401, 403 and 500 are failures. The reason is printed on stderr.
    """
    from agent import health

    flags = {
        "apiserver_url": url,
        "apiserver_ca_file": ca_file,
        "health_timeout": timeout,
        "apiserver_client_cert": client_cert,
        "apiserver_client_key": client_key,
        "apiserver_token_file": token_file,
    }
    try:
        settings = load_settings(config_file, flags)
    except SettingsError as err:
        fail(str(err))
    vip = settings.control_plane_vip
    result = health.check(
        health.probe_config(settings, insecure=insecure_skip_tls_verify),
        vip=vip,
        holds_vip=health.holds(vip) if vip else (lambda: False),
        vip_port=settings.control_plane_port,
    )
    click.echo(("healthy: " if result.ok else "unhealthy: ") + result.reason, err=True)
    sys.exit(0 if result.ok else 1)
