"""Checking only what changed gives the same verdict as checking the whole file.

agent.validate.Incremental with the real checkers (``keepalived -t`` in a scratch
namespace, ``haproxy -c``), over random sequences of edits to the golden files' virtual
servers and listeners (a real server moved, a block added or removed, a block broken):
after every edit its verdict equals the whole file's, so the shortcut never lets through
what the daemon would refuse, nor refuses what it would take.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.daemons import CONFIG_FILES
from agent.daemons.haproxy import check_haproxy, sections
from agent.daemons.keepalived import blocks, check_keepalived
from agent.validate import Block, Incremental, Splitter, Validator
from labkit.checkers import Checkers

GOLDEN = Path(__file__).resolve().parent / "golden" / "worker-spread-unicast"

EDITS = st.lists(
    st.tuples(st.sampled_from(["move", "add", "remove", "break"]), st.integers(0, 1000)),
    min_size=1,
    max_size=5,
)


def edited(parts: list[Block], alone: str, edit: str, pick: int, serial: int) -> list[Block]:
    """``parts`` with one block of kind ``alone`` moved, copied, removed or broken."""
    candidates = [i for i, b in enumerate(parts) if b.kind == alone]
    if not candidates:
        return parts
    i = candidates[pick % len(candidates)]
    block = parts[i]
    out = list(parts)
    if edit == "remove":
        del out[i]
    elif edit == "break":
        broken = block.text.replace("lb_algo ", "lb_algo bogus_", 1)
        broken = broken.replace("balance roundrobin", "balance bogus", 1)
        out[i] = Block(block.kind, broken)
    elif edit == "move":  # another real server / server address
        out[i] = Block(block.kind, block.text.replace("203.0.113.", "198.18.0.", 1))
    else:  # a copy on a VIP and port of its own
        port = 20000 + serial
        text = block.text.replace(" 80 {", f" {port} {{", 1).replace(":80 ", f":{port} ", 1)
        text = text.replace(f"listen {_name(block)}", f"listen {_name(block)}-{serial}", 1)
        out.insert(i + 1, Block(block.kind, text))
    return out


def _name(block: Block) -> str:
    for line in block.text.splitlines():
        if line.startswith("listen "):
            return line.split()[1]
    return ""


def same_verdicts(
    tmp_path: Path,
    text: str,
    split: Splitter,
    alone: str,
    whole: Validator,
    edits: list[tuple[str, int]],
) -> None:
    spec = next(f for f in CONFIG_FILES if f.split is split)
    inc = Incremental(whole, split, spec.alone, unneeded=spec.unneeded)
    path = tmp_path / "file.conf"
    parts = split(text)
    assert parts is not None
    for serial, (edit, pick) in enumerate([("move", 0), *edits]):
        parts = edited(parts, alone, edit, pick, serial)
        path.write_text("".join(b.text for b in parts))
        fast = inc(path).ok
        slow = whole(path).ok
        assert fast == slow, (edit, fast, slow, path.read_text())
        if not slow:  # the agent keeps the last good file; so does this sequence
            parts = split(text) or []
            path.write_text(text)
            assert inc(path).ok
    assert inc.partial_checks > 0


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(edits=EDITS)
def test_keepalived_partial_checks_agree_with_whole_ones(
    edits: list[tuple[str, int]], checkers: Checkers, tmp_path_factory: pytest.TempPathFactory
) -> None:
    checkers.netns.ensure_links(["eth0"])
    tmp = tmp_path_factory.mktemp("ka")
    text = (GOLDEN / "keepalived.conf").read_text()
    same_verdicts(
        tmp,
        text,
        blocks,
        "virtual_server",
        lambda p: check_keepalived(p, netns=checkers.netns.name),
        edits,
    )


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(edits=EDITS)
def test_haproxy_partial_checks_agree_with_whole_ones(
    edits: list[tuple[str, int]], checkers: Checkers, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("ha")
    text = (GOLDEN / "haproxy.cfg").read_text()
    same_verdicts(tmp, text, sections, "listen", check_haproxy, edits)
