"""Flags, VIP_AGENT_* variables and the YAML file carry the same settings."""

from __future__ import annotations

import dataclasses
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from agent import settings as settings_mod
from agent.settings import Settings, SettingsError, load


def test_precedence_default_file_env_flag(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("interface: eth1\nadvert-int: 2\nunicast: true\nunicast_peers: [198.51.100.2]\n")
    s = load(flags={}, environ={}, config_file=cfg)
    assert (s.interface, s.advert_int, s.unicast, s.unicast_peers) == (
        "eth1",
        2.0,
        True,
        (ip_address("198.51.100.2"),),
    )
    env = {"VIP_AGENT_INTERFACE": "eth2", "VIP_AGENT_UNICAST_PEERS": "198.51.100.3,198.51.100.4"}
    s = load(flags={}, environ=env, config_file=cfg)
    assert s.interface == "eth2"
    assert s.unicast_peers == (ip_address("198.51.100.3"), ip_address("198.51.100.4"))
    s = load(flags={"interface": "eth3", "unicast": False}, environ=env, config_file=cfg)
    assert s.interface == "eth3" and s.unicast is False
    assert s.scheduler == Settings().scheduler


def test_node_name_falls_back_to_downward_api_variable() -> None:
    assert load(flags={}, environ={"NODE_NAME": "n7"}, config_file=None).node_name == "n7"
    env = {"NODE_NAME": "n7", "VIP_AGENT_NODE_NAME": "n8"}
    assert load(flags={}, environ=env, config_file=None).node_name == "n8"


def test_every_setting_has_docs_and_all_three_spellings(tmp_path: Path) -> None:
    for f in settings_mod.fields():
        assert f.metadata["doc"].strip(), f.name
        scalar, _ = settings_mod.field_type(f.name)
        sample = "1" if scalar in (bool, int, float) else "x"
        env = settings_mod.from_env({f"VIP_AGENT_{f.name.upper()}": sample})
        assert f.name in env
        cfg = tmp_path / f"{f.name}.yaml"
        cfg.write_text(f"{f.name.replace('_', '-')}: {sample}\n")
        assert f.name in settings_mod.load_file(cfg)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"interface": "eth0 {"}, "setting interface='eth0 {': not a Linux interface name"),
        ({"advert_int": 0.5, "vrrp_version": 2}, "VRRPv2 needs whole seconds"),
        ({"auth_pass": "x" * 9, "vrrp_version": 2}, "setting auth_pass=<redacted>"),
        ({"auth_pass": "secret"}, "VRRPv3 has no authentication"),
        ({"control_plane_vip": "192.0.2.300"}, "not an IP address"),
        ({"scheduler": "fastest"}, "setting scheduler='fastest'"),
        ({"configmap": "vip-configmap"}, "expected NAMESPACE/NAME"),
        ({"virtual_router_id": 51}, "same as control_plane_virtual_router_id"),
        ({"health_file": "/run/x y"}, "must be an absolute path"),
        ({"node_selector": "a b=c"}, "bad label key"),
    ],
)
def test_bad_settings_name_the_setting(values: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace("{", r"\{")):
        Settings(**values)  # type: ignore[arg-type]


def test_bad_file_and_env_values_say_where_they_came_from(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("unicats: true\n")
    with pytest.raises(SettingsError, match="unknown setting 'unicats'"):
        load(flags={}, environ={}, config_file=cfg)
    with pytest.raises(SettingsError, match="environment VIP_AGENT_UNICAST"):
        load(flags={}, environ={"VIP_AGENT_UNICAST": "perhaps"}, config_file=None)
    with pytest.raises(SettingsError, match=r"config file .* No such file"):
        load(flags={}, environ={}, config_file=tmp_path / "missing.yaml")


def test_secrets_are_redacted() -> None:
    s = Settings(vrrp_version=2, auth_pass="s3cret")
    assert s.redacted()["auth_pass"] == "<redacted>"
    assert "s3cret" not in repr(s.redacted())


# --- each setting parsed once, into its type -----------------------------------------

V4, V6 = ip_address("192.0.2.10"), ip_address("2001:db8::10")


def typed_as(value: object, expected: object) -> bool:
    """Equal and of the same type (a StrEnum also equals its text)."""
    if isinstance(expected, tuple):
        return (
            isinstance(value, tuple)
            and len(value) == len(expected)
            and all(map(typed_as, value, expected))
        )
    return type(value) is type(expected) and value == expected


@pytest.mark.parametrize(
    ("name", "text", "yaml_value", "typed"),
    [
        ("control_plane_vip", "192.0.2.10", "192.0.2.10", V4),
        ("node_address", "2001:db8::10", "'2001:db8::10'", V6),
        ("unicast_peers", "192.0.2.10, 2001:db8::10", "[192.0.2.10, '2001:db8::10']", (V4, V6)),
        (
            "control_plane_backends",
            "cp-1=192.0.2.10,2001:db8::10",
            "[cp-1=192.0.2.10, '2001:db8::10']",
            (settings_mod.Backend("cp-1", V4), settings_mod.Backend(None, V6)),
        ),
        ("daemons", "none", "none", settings_mod.Daemons.NONE),
        ("health_mode", "fault", "fault", settings_mod.HealthMode.FAULT),
        ("real_server_check", "none", "none", settings_mod.RealServerCheck.NONE),
        ("log_format", "json", "json", settings_mod.LogFormat.JSON),
        ("virtual_router_id_range", "100-200", "100-200", settings_mod.VridRange(100, 200)),
        ("configmap", "ns-1/cm.1", "ns-1/cm.1", settings_mod.ObjectRef("ns-1", "cm.1")),
        ("node_selector", "a=b,!c", "a=b,!c", settings_mod.Selector("a=b,!c")),
        ("control_plane_selector", "role", "role", settings_mod.Selector("role")),
        ("track_interfaces", "eth1,eth2", "[eth1, eth2]", ("eth1", "eth2")),
        ("check_interval", "7", "7", 7),
        ("advert_int", "2", "2", 2.0),
        ("control_plane_advert_int", "0.5", "0.5", 0.5),
        ("spread", "yes", "true", True),
    ],
)
def test_each_spelling_and_the_typed_value_parse_to_the_same_value(
    tmp_path: Path, name: str, text: str, yaml_value: str, typed: object
) -> None:
    assert typed_as(getattr(Settings(**{name: text}), name), typed)  # type: ignore[arg-type]
    env = {f"VIP_AGENT_{name.upper()}": text}
    assert typed_as(getattr(load(flags={}, environ=env, config_file=None), name), typed)
    flag = load(flags={name: text}, environ={}, config_file=None)
    assert typed_as(getattr(flag, name), typed)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"{name}: {yaml_value}\n")
    assert typed_as(getattr(load(flags={}, environ={}, config_file=cfg), name), typed)
    # already typed: unchanged, the same objects (parsing is idempotent)
    again = getattr(Settings(**{name: typed}), name)  # type: ignore[arg-type]
    assert again == typed
    if isinstance(typed, tuple):
        assert all(a is b for a, b in zip(again, typed, strict=True))
    else:
        assert again is typed or type(typed) in (int, float, bool)
    assert dataclasses.replace(flag) == flag


def test_typed_values_are_what_the_consumers_use() -> None:
    s = Settings(
        control_plane_backends=("198.51.100.11", "cp-2=198.51.100.12"),
        node_selector=" a = b , !c",
        virtual_router_id_range="50-53",
        configmap="ns/cm",
    )
    assert [(b.name, b.address) for b in s.control_plane_backends] == [
        (None, ip_address("198.51.100.11")),
        ("cp-2", ip_address("198.51.100.12")),
    ]
    assert s.node_selector.requirements == (("a", "=", "b"), ("c", "!exists", ""))
    assert s.node_selector.matches({"a": "b"}) and not s.node_selector.matches({"a": "b", "c": ""})
    assert Settings().node_selector.matches({})
    assert s.hashed_vrids == (50, 53)  # the range less the two fixed ids, 51 and 52
    assert s.configmap_ref == ("ns", "cm")
    assert s.daemons == settings_mod.Daemons.SUPERVISE and Settings().cp_advert_int == 0.1


def test_translate_receives_the_parsed_objects_not_text() -> None:
    from agent.core.snapshot import Snapshot
    from agent.core.translate import translate

    s = Settings(
        interface="eth0",
        control_plane_vip="192.0.2.10",
        control_plane_backends=("cp-2=198.51.100.12",),
        unicast=True,
        node_address="198.51.100.11",
        unicast_peers=("198.51.100.12",),
    )
    state = translate(Snapshot.from_objects([]), s, node_name="cp-1", interface="eth0")
    (control,) = state.instances
    assert state.apiserver is not None
    # the very objects parsed at load reach the desired state: nothing parsed them again
    assert control.vips[0] is s.control_plane_vip and state.apiserver.vip is s.control_plane_vip
    assert control.unicast_src is s.node_address
    assert control.unicast_peers[0] is s.unicast_peers[0]
    assert state.apiserver.servers[0].address is s.control_plane_backends[0].address


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"control_plane_vip": "192.0.2.300"},
            "setting control_plane_vip='192.0.2.300': not an IP address",
        ),
        ({"node_address": "x"}, "setting node_address='x': not an IP address"),
        ({"unicast_peers": "198.51.100.2,nope"}, "setting unicast_peers='nope': not an IP address"),
        (
            {"control_plane_backends": ["bad name=192.0.2.1"]},
            "setting control_plane_backends='bad name=192.0.2.1': NAME must be a DNS name",
        ),
        (
            {"control_plane_backends": ["cp-1=192.0.2.x"]},
            "setting control_plane_backends='192.0.2.x': not an IP address",
        ),
        ({"daemons": "docker"}, "setting daemons='docker': supervise, systemd or none"),
        ({"health_mode": "x"}, "setting health_mode='x': weight or fault"),
        ({"real_server_check": "http"}, "setting real_server_check='http': tcp or none"),
        ({"log_format": "xml"}, "setting log_format='xml': text or json"),
        (
            {"virtual_router_id_range": "5-5"},
            "setting virtual_router_id_range='5-5': expected LOW-HIGH in 1-255",
        ),
        (
            {"virtual_router_id_range": "1-256"},
            "setting virtual_router_id_range='1-256': expected LOW-HIGH in 1-255",
        ),
        ({"configmap": "a/B"}, "setting configmap='a/B': expected NAMESPACE/NAME"),
        ({"control_plane_selector": "=x"}, "setting control_plane_selector='=x': bad label key ''"),
        ({"node_selector": "a=b c"}, "setting node_selector='a=b c': bad label value 'b c'"),
        ({"check_interval": 0}, "setting check_interval=0: 1-3600 seconds"),
        (
            {"check_interval": "x"},
            "setting check_interval='x': invalid literal for int() with base 10: 'x'",
        ),
        ({"control_plane_port": 70000}, "setting control_plane_port=70000: not a port (1-65535)"),
        ({"health_interval": 99}, "setting health_interval=99.0: 0.01-60 seconds"),
        (
            {"advert_int": float("nan")},
            "setting advert_int=nan: must be between 0.01 and 255 seconds",
        ),
        ({"vrrp_version": 4}, "setting vrrp_version=4: must be 2 or 3"),
        ({"metrics_address": "nope"}, "setting metrics_address='nope': expected HOST:PORT"),
        (
            {"apiserver_url": "http://x"},
            "setting apiserver_url='http://x': must be https://HOST[:PORT]/PATH",
        ),
        (
            {"run_dir": "rel"},
            "setting run_dir='rel': must be an absolute path of [A-Za-z0-9_./@+-]",
        ),
        ({"keepalived_binary": None}, "setting keepalived_binary=None: None is not a string"),
        (
            {"vrrp_version": 2, "control_plane_advert_int": 0.5},
            "setting control_plane_advert_int=0.5: VRRPv2 needs whole seconds",
        ),
        (
            {"vrrp_version": 2, "auth_pass": "a b"},
            "setting auth_pass=<redacted>: 1-8 characters from [A-Za-z0-9_.,+=/-]",
        ),
        (
            {"auth_pass": "secret"},
            "setting auth_pass=<redacted>: VRRPv3 has no authentication; set vrrp_version 2",
        ),
    ],
)
def test_bad_values_give_the_exact_message(values: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings(**values)  # type: ignore[arg-type]
    assert str(raised.value) == message


def test_values_of_the_wrong_kind_say_where_they_came_from(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("unicast_peers: {a: 1}\n")
    cases = [
        (
            {"flags": {"check_interval": "x"}},
            "setting check_interval from flag --check-interval: "
            "invalid literal for int() with base 10: 'x'",
        ),
        (
            {"environ": {"VIP_AGENT_UNICAST": "perhaps"}},
            "setting unicast from environment VIP_AGENT_UNICAST: 'perhaps' is not a boolean",
        ),
        ({"config_file": cfg}, f"setting unicast_peers from config file {cfg}: expected a list"),
        # a value of the right kind that means nothing: the setting's own message
        (
            {"environ": {"VIP_AGENT_DAEMONS": "docker"}},
            "setting daemons='docker': supervise, systemd or none",
        ),
    ]
    for given, message in cases:
        args: dict[str, Any] = {"flags": {}, "environ": {}, "config_file": None, **given}
        with pytest.raises(SettingsError) as raised:
            load(**args)
        assert str(raised.value) == message


def test_settings_command_prints_parsed_values_as_they_were_written() -> None:
    import yaml
    from click.testing import CliRunner

    from agent.cli import main

    args = ["settings", "--node-selector", "a=b, !c", "--daemons", "none"]
    args += ["--control-plane-backends", "cp-1=192.0.2.1", "--control-plane-backends", "192.0.2.2"]
    args += ["--virtual-router-id-range", "2-9", "--configmap", "ns/cm", "--vrrp-version", "2"]
    args += ["--auth-pass", "s3cret", "--control-plane-vip", "2001:db8::10"]
    result = CliRunner().invoke(main, args, env={"VIP_AGENT_CONFIG": "/dev/null"})
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert {k: shown[k] for k in ("node_selector", "daemons", "control_plane_backends")} == {
        "node_selector": "a=b, !c",
        "daemons": "none",
        "control_plane_backends": ["cp-1=192.0.2.1", "192.0.2.2"],
    }
    assert (shown["virtual_router_id_range"], shown["configmap"]) == ("2-9", "ns/cm")
    assert (shown["auth_pass"], shown["control_plane_vip"]) == ("<redacted>", "2001:db8::10")
    assert (shown["health_mode"], shown["log_format"], shown["unicast_peers"]) == (
        "weight",
        "text",
        [],
    )


def test_flags_are_read_as_their_kind() -> None:
    assert settings_mod.field_type("control_plane_vip") == (str, False)
    assert settings_mod.field_type("unicast_peers") == (str, True)
    assert settings_mod.field_type("daemons") == (str, False)
    assert settings_mod.field_type("advert_int") == (float, False)
    assert settings_mod.field_type("unicast") == (bool, False)


def test_run_dir_moves_the_files_that_live_in_it() -> None:
    """Two agents on one filesystem differ by run_dir alone (issue 15)."""
    moved = Settings(run_dir="/tmp/agent-2")
    assert moved.health_file == "/tmp/agent-2/apiserver.health"
    assert moved.haproxy_stats_socket == "/tmp/agent-2/haproxy.sock"
    assert moved.vrrp_notify_fifo == "/tmp/agent-2/vrrp.fifo"
    default = Settings()
    assert default.haproxy_stats_socket == "/run/vip-agent/haproxy.sock"
    pinned = Settings(run_dir="/tmp/agent-2", health_file="/var/lib/x/health")
    assert pinned.health_file == "/var/lib/x/health"
