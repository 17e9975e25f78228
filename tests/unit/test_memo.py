"""agent.core.memo: reuse between passes, and nothing kept that two passes did not use."""

from __future__ import annotations

from agent.core.memo import Generations, IdentityMemo


def test_generations_keep_what_the_last_pass_used_and_drop_the_rest() -> None:
    cache: Generations[str, int] = Generations()
    calls: list[str] = []

    def compute(key: str) -> int:
        calls.append(key)
        return len(key)

    cache.turn()
    assert [cache.get(k, lambda k=k: compute(k)) for k in ("a", "bb")] == [1, 2]
    assert cache.get("a", lambda: compute("a")) == 1  # same pass: cached
    cache.turn()
    assert cache.get("a", lambda: compute("a")) == 1  # previous pass: cached
    assert calls == ["a", "bb"]
    cache.turn()  # "bb" went unused for a whole pass
    assert len(cache) == 1
    assert cache.get("bb", lambda: compute("bb")) == 2
    assert calls == ["a", "bb", "bb"]


def test_identity_memo_reuses_the_same_objects_only() -> None:
    memo: IdentityMemo[int] = IdentityMemo()
    first = {"spec": {"port": 80}}
    equal_copy = {"spec": {"port": 80}}
    calls = 0

    def compute() -> int:
        nonlocal calls
        calls += 1
        return calls

    memo.turn()
    assert memo.get((first,), "k", compute=compute) == 1
    assert memo.get((first,), "k", compute=compute) == 1
    assert memo.get((equal_copy,), "k", compute=compute) == 2  # a new object is recomputed
    assert memo.get((first,), "other", compute=compute) == 3  # and so is another key
    memo.turn()
    memo.turn()
    assert len(memo) == 0
