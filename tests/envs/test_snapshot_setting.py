"""A snapshot records the options of its environment; ``restore`` refuses one from another setting."""

from __future__ import annotations

import pytest

from stepcredit.envs import FAMILIES, env_factory


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("other", [{"split": "test"}, {"depth": 2}, {"noise": 0.5}, {"max_steps": 30}])
def test_restore_refuses_a_snapshot_of_another_setting(family: str, other: dict[str, object]) -> None:
    a = env_factory(family, depth=3)()
    a.reset(seed=0)
    snap = a.snapshot()
    b = env_factory(family, **{"depth": 3, **other})()
    b.reset(seed=0)
    with pytest.raises(ValueError, match=f"other options: {next(iter(other))}"):
        b.restore(snap)
    same = env_factory(family, depth=3)()
    same.reset(seed=5)
    same.restore(snap)  # the same setting: accepted
    assert same.snapshot().state == snap.state
