"""Flags, VIP_AGENT_* variables and the YAML file carry the same settings."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

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
