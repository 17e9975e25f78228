"""agent.validate.Incremental's decisions: when the small file is enough, what it holds.

The checker here records what it was shown and answers from a rule, because the subject
is the choice of file; tests/functional/test_incremental_real.py runs the same class with
the real keepalived and haproxy checkers.
"""

from __future__ import annotations

from pathlib import Path

from agent.daemons.keepalived import blocks
from agent.validate import CheckResult, Incremental

HEAD = "global_defs {\n    router_id n1\n}\n"
INSTANCE = "\nvrrp_instance vi {\n    interface eth0\n    virtual_router_id 51\n}\n"


def vs(vip: str, real: str) -> str:
    return f"\n# svc\nvirtual_server {vip} 80 {{\n    real_server {real} 80 {{\n    }}\n}}\n"


class Recorder:
    """A checker that remembers each file it saw and rejects any holding ``bogus``."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, path: Path) -> CheckResult:
        text = path.read_text()
        self.seen.append(text)
        return CheckResult("bogus" not in text, "")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def checked(inc: Incremental, path: Path, text: str) -> bool:
    path.write_text(text)
    return inc(path).ok


def setup(tmp_path: Path) -> tuple[Incremental, Recorder, Clock, Path]:
    recorder, clock = Recorder(), Clock()
    inc = Incremental(recorder, blocks, frozenset({"virtual_server"}), clock=clock)
    return inc, recorder, clock, tmp_path / "keepalived.conf"


def test_the_first_check_is_whole_then_only_changed_virtual_servers_are_shown(
    tmp_path: Path,
) -> None:
    inc, recorder, _, path = setup(tmp_path)
    a, b, c = (
        vs("192.0.2.1", "203.0.113.1"),
        vs("192.0.2.2", "203.0.113.2"),
        vs("192.0.2.3", "203.0.113.3"),
    )
    assert checked(inc, path, HEAD + INSTANCE + a + b)
    assert recorder.seen[-1] == HEAD + INSTANCE + a + b and inc.full_checks == 1
    # b's real server changes and c is added: the checker sees the context and those two
    changed = vs("192.0.2.2", "203.0.113.9")
    assert checked(inc, path, HEAD + INSTANCE + a + changed + c)
    assert recorder.seen[-1] == HEAD + INSTANCE + changed + c
    assert inc.partial_checks == 1
    # a removed: nothing new to show, only the context
    assert checked(inc, path, HEAD + INSTANCE + changed + c)
    assert recorder.seen[-1] == HEAD + INSTANCE


def test_a_changed_instance_or_global_section_makes_the_check_whole(tmp_path: Path) -> None:
    inc, recorder, _, path = setup(tmp_path)
    a = vs("192.0.2.1", "203.0.113.1")
    assert checked(inc, path, HEAD + INSTANCE + a)
    moved = INSTANCE.replace("51", "52")
    assert checked(inc, path, HEAD + moved + a)
    assert recorder.seen[-1] == HEAD + moved + a and inc.full_checks == 2
    assert checked(inc, path, HEAD.replace("n1", "n2") + moved + a)
    assert inc.full_checks == 3 and inc.partial_checks == 0


def test_a_rejected_block_is_caught_and_does_not_become_the_baseline(tmp_path: Path) -> None:
    inc, recorder, _, path = setup(tmp_path)
    a = vs("192.0.2.1", "203.0.113.1")
    assert checked(inc, path, HEAD + INSTANCE + a)
    bad = vs("192.0.2.2", "203.0.113.2").replace("real_server", "bogus real_server")
    assert not checked(inc, path, HEAD + INSTANCE + a + bad)
    # the same bad block again is shown again (it never passed), and rejected again
    assert not checked(inc, path, HEAD + INSTANCE + a + bad)
    assert "bogus" in recorder.seen[-1] and inc.partial_checks == 2


def test_every_minute_and_for_unknown_shapes_the_whole_file_is_checked(tmp_path: Path) -> None:
    inc, _, clock, path = setup(tmp_path)
    a, b = vs("192.0.2.1", "203.0.113.1"), vs("192.0.2.2", "203.0.113.2")
    assert checked(inc, path, HEAD + INSTANCE + a)
    clock.now = 61.0
    assert checked(inc, path, HEAD + INSTANCE + a + b)
    assert inc.full_checks == 2 and inc.partial_checks == 0
    # a top-level statement the splitter does not know: whole
    assert checked(inc, path, HEAD + INSTANCE + a + b + "include /etc/other.conf\n")
    assert inc.full_checks == 3


def test_the_splitter_keeps_every_character_and_refuses_what_it_does_not_know() -> None:
    text = HEAD + INSTANCE + vs("192.0.2.1", "203.0.113.1") + "\n# trailing\n"
    cut = blocks(text)
    assert cut is not None and "".join(b.text for b in cut) == text
    assert [b.kind for b in cut] == ["global_defs", "vrrp_instance", "virtual_server", ""]
    assert blocks(HEAD + "}\n") is None
    assert blocks(HEAD + "virtual_server 192.0.2.1 80 {\n") is None
    assert blocks("include x\n" + HEAD) is None


def test_cutting_only_what_changed_gives_the_whole_cut() -> None:
    """Incremental cuts the middle between the blocks kept from the last file; over edits
    anywhere (the first block, the last, comments between blocks, a block made invalid)
    the result is what cutting the whole file gives."""
    a, b, c = (vs(f"192.0.2.{k}", f"203.0.113.{k}") for k in (1, 2, 3))
    texts = [
        HEAD + INSTANCE + a + b + c,
        HEAD + INSTANCE + a + vs("192.0.2.2", "203.0.113.9") + c,
        HEAD + INSTANCE + a + "\n# a comment before c\n" + c,
        HEAD.replace("n1", "n2") + INSTANCE + a + c,
        HEAD + INSTANCE + a + c + "\n# trailing\n",
        HEAD + INSTANCE + a + "virtual_server 192.0.2.7 80 {\n" + c,
        HEAD + INSTANCE + a + "include /etc/x\n" + c,
        HEAD + INSTANCE,
        HEAD + INSTANCE + c + b + a,
    ]
    inc = Incremental(Recorder(), blocks, frozenset({"virtual_server"}))
    for text in texts * 2:
        assert inc._cut(text) == blocks(text), text


def test_unneeded_sections_stay_out_and_a_refused_small_file_is_checked_whole(
    tmp_path: Path,
) -> None:
    recorder = Recorder()
    inc = Incremental(
        recorder, blocks, frozenset({"virtual_server"}), unneeded=frozenset({"vrrp_instance"})
    )
    path = tmp_path / "keepalived.conf"
    a, b = vs("192.0.2.1", "203.0.113.1"), vs("192.0.2.2", "203.0.113.2")
    assert checked(inc, path, HEAD + INSTANCE + a)
    assert checked(inc, path, HEAD + INSTANCE + a + b)
    assert recorder.seen[-1] == HEAD + b  # no instance in the small file
    # an instance change still makes the check whole
    moved = INSTANCE.replace("51", "52")
    assert checked(inc, path, HEAD + moved + a + b)
    assert recorder.seen[-1] == HEAD + moved + a + b
    # the small file refused: the whole file is checked and its verdict stands
    bad = vs("192.0.2.3", "203.0.113.3").replace("real_server", "bogus real_server")
    assert not checked(inc, path, HEAD + moved + a + b + bad)
    assert recorder.seen[-2] == HEAD + bad and recorder.seen[-1] == HEAD + moved + a + b + bad
