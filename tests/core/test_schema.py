"""The column schema: a column declared once works everywhere; concat / split_groups / expand."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from stepcredit import RolloutError, Rollouts, build
from stepcredit.core import COLUMNS, TEXT_COLUMNS, Check, StepRecord, Texts, TrajectoryRecord, column
from stepcredit.io import load, write_parquet
from tests.support.schema import columns_of


def random_rollouts(seed: int, *, contiguous: bool = True, tokens: bool = True, optional: bool = True) -> Rollouts:
    """A random valid batch: 1-5 groups of 1-4 trajectories, 0-3 steps each, 0-2 calls a step, every
    optional column (labels, tree, confidence with NaNs, rubric, prm, abandoned) and token spans."""
    rng = np.random.default_rng(seed)
    g = int(rng.integers(1, 6))
    group = np.repeat(np.arange(g), rng.integers(1, 5, size=g))
    if not contiguous:
        group = rng.permutation(group)
        _, first = np.unique(group, return_index=True)
        rank = np.empty(g, dtype=np.int64)
        rank[np.argsort(first)] = np.arange(g)  # numbered by first appearance, as loaders do
        group = rank[group]
    n = group.size
    steps = rng.integers(0, 4, size=n)
    s = int(steps.sum())
    calls = rng.integers(0, 3, size=s)
    c = int(calls.sum())
    last = np.zeros(s, dtype=bool)
    ends = np.cumsum(steps)
    last[ends[steps > 0] - 1] = True
    kind = np.where(calls > 0, 1, np.where(last, 2, 0))
    cols: dict[str, object] = dict(
        group=group,
        outcome=rng.integers(0, 2, size=n).astype(np.float32),
        step_offsets=np.concatenate([[0], ends]),
        kind=kind,
        reward=rng.normal(size=s).astype(np.float32),
        state=rng.integers(0, 3, size=s),
        call_offsets=np.concatenate([[0], np.cumsum(calls)]),
        call_ok=rng.integers(-1, 2, size=c),
    )
    if optional:
        conf = rng.random(n).astype(np.float32)
        conf[rng.random(n) < 0.3] = np.nan
        cols.update(
            label=rng.integers(-1, 2, size=s),
            call_label=rng.integers(-1, 2, size=c),
            tree=rng.integers(0, 2, size=n),
            confidence=conf,
            rubric=rng.random((n, 2)) < 0.5,
            prm=rng.random(s).astype(np.float32),
            abandoned=rng.random(s) < 0.2,
        )
    if tokens:  # each step 1-3 tokens, calls inside their step, a gap of 0-1 masked tokens between steps
        t = 12
        mask = np.zeros((n, t), dtype=bool)
        start, end, cstart, cend = [], [], [], []
        step = 0
        for i in range(n):
            pos = 0
            for _ in range(steps[i]):
                width = max(1, int(calls[step])) + int(rng.integers(0, 2))
                start.append(pos)
                end.append(pos + width)
                mask[i, pos : pos + width] = True
                for k in range(calls[step]):
                    cstart.append(pos + k)
                    cend.append(pos + k + 1)
                pos += width + int(rng.integers(0, 2))
                step += 1
        cols.update(
            response_mask=mask,
            step_token_start=start,
            step_token_end=end,
            call_token_start=cstart,
            call_token_end=cend,
        )
    texts = Texts.create(
        n,
        g,
        s,
        c,
        ids=[f"t{seed}-{i}" for i in range(n)],
        group_names=[f"task-{k}" for k in range(g)],
        action=[f"a{k}" for k in range(s)],
        call_name=[f"f{k % 3}" for k in range(c)],
    )
    return Rollouts(**cols, texts=texts)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31), parts=st.integers(1, 7))
def test_concat_of_split_groups_is_the_batch(seed, parts):
    r = random_rollouts(seed)
    chunks = r.split_groups(parts)
    assert 1 <= len(chunks) <= parts
    assert all(chunk.num_trajectories > 0 for chunk in chunks) or r.num_trajectories == 0
    names = [set(chunk.texts.group_names.to_pylist()) for chunk in chunks]
    assert sum(len(x) for x in names) == r.num_groups  # no group in two chunks
    assert Rollouts.concat(chunks).equals(r)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**31), parts=st.integers(1, 5))
def test_split_groups_of_interleaved_groups_keeps_groups_whole(seed, parts):
    r = random_rollouts(seed, contiguous=False)
    chunks = r.split_groups(parts)
    ids = r.texts.ids.to_pylist()
    group_of = dict(zip(ids, r.group.tolist(), strict=True))
    spans = [sorted({group_of[i] for i in c.texts.ids.to_pylist()}) for c in chunks]
    assert [g for span in spans for g in span] == list(range(r.num_groups))  # ranges of group ids, in order
    # each chunk keeps its trajectories in their order in the batch
    order = [ids.index(i) for c in chunks for i in c.texts.ids.to_pylist()]
    ends = np.cumsum([c.num_trajectories for c in chunks])
    assert all(sorted(o) == list(o) for o in np.split(np.array(order), ends[:-1]))
    assert Rollouts.concat(chunks).equals(r.select(order))


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**31), cut=st.integers(0, 20))
def test_select_then_concat_round_trips(seed, cut):
    r = random_rollouts(seed)
    k = min(cut, r.num_trajectories)
    head, tail = r.select(torch.arange(k)), r.select(torch.arange(k, r.num_trajectories))
    joined = Rollouts.concat([head, tail])
    # groups cut in two become two groups; everything else is the batch again
    assert joined.texts.ids.equals(r.texts.ids)
    for name in COLUMNS:
        if name in ("group", "tree"):
            continue
        a, b = getattr(joined, name), getattr(r, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a.nan_to_num(), b.nan_to_num()), name


def test_expand_gives_steps_and_calls_of_trajectories():
    r = random_rollouts(7)
    idx = torch.tensor([r.num_trajectories - 1, 0])
    steps, calls = r.expand(idx)
    want_steps = [s for i in idx.tolist() for s in range(int(r.step_offsets[i]), int(r.step_offsets[i + 1]))]
    want_calls = [c for s in want_steps for c in range(int(r.call_offsets[s]), int(r.call_offsets[s + 1]))]
    assert steps.tolist() == want_steps and calls.tolist() == want_calls


def test_concat_renumbers_groups_and_trees_and_fills_missing_columns():
    a = Rollouts(group=[0, 0], outcome=[1.0, 0.0], step_offsets=[0, 1, 2], label=[1, -1], tree=[0, 0],
                 texts=Texts.create(2, 1, 2, 0, ids=["a0", "a1"], group_names=["task"]))  # fmt: skip
    b = Rollouts(group=[0], outcome=[1.0], step_offsets=[0, 1], confidence=[0.5],
                 texts=Texts.create(1, 1, 1, 0, ids=["b0"], group_names=["task"]))  # fmt: skip
    ab = Rollouts.concat([a, b])
    assert ab.group.tolist() == [0, 0, 1]  # same name, other batch: a group of its own
    assert ab.texts.group_names.to_pylist() == ["task", "task"]
    assert ab.tree.tolist() == [0, 0, 0]  # b's trajectory: a tree of its own (trees are numbered per group)
    assert ab.label.tolist() == [1, -1, 0]  # unlabelled steps are neutral
    assert ab.confidence[:2].isnan().all() and ab.confidence[2].item() == 0.5
    assert ab.texts.ids.to_pylist() == ["a0", "a1", "b0"]
    with pytest.raises(RolloutError, match="not unique"):
        Rollouts.concat([a, a])
    p = Rollouts(group=[0], outcome=[0.0], step_offsets=[0, 1], prm=[0.3],
                 texts=Texts.create(1, 1, 1, 0, ids=["p0"]))  # fmt: skip
    with pytest.raises(RolloutError, match="1 of 2 batches have this column") as info:
        Rollouts.concat([b, p])
    assert info.value.field == "prm"
    with pytest.raises(ValueError, match="at least one"):
        Rollouts.concat([])


def test_concat_pads_token_rows():
    r = random_rollouts(3, optional=False)
    short = Rollouts(group=[0], outcome=[1.0], step_offsets=[0, 1], response_mask=[[True, False]],
                     step_token_start=[0], step_token_end=[1], texts=Texts.create(1, 1, 1, 0, ids=["s"]))  # fmt: skip
    mixed = Rollouts.concat([short, r])
    assert mixed.response_mask.shape == (1 + r.num_trajectories, max(2, r.response_mask.shape[1]))
    assert mixed.response_mask[0].tolist()[:2] == [True, False] and not mixed.response_mask[0, 2:].any()


def test_split_groups_rejects_bad_counts():
    r = random_rollouts(1)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive number"):
            r.split_groups(bad)


def test_equals_sees_every_column_and_text():
    r = random_rollouts(11)
    assert r.equals(r.select(torch.arange(r.num_trajectories)))
    assert not r.equals(Rollouts(**{**columns_of(r), "reward": r.reward + 1}, texts=r.texts))
    texts = Texts(**{**{k: getattr(r.texts, k) for k in TEXT_COLUMNS}, "action": r.texts.action.take(
        np.roll(np.arange(r.num_steps), 1))})  # fmt: skip
    assert r.num_steps >= 2 and not r.equals(Rollouts(**columns_of(r), texts=texts))


# ------------------------------------------------------------------------- a column in one declaration
@dataclass(frozen=True, eq=False)
class WithDifficulty(Rollouts):
    """A throwaway column, declared once: per-trajectory task difficulty, finite, 0 where not given."""

    difficulty: Tensor | None = column("trajectory", torch.float32, check=Check(finite=True), record="difficulty",
                                       fill=0.0)  # fmt: skip


@dataclass
class DifficultyRecord(TrajectoryRecord):
    difficulty: float | None = None


def test_a_new_column_is_one_declaration(tmp_path):
    assert "difficulty" in WithDifficulty.columns() and "difficulty" not in Rollouts.columns()
    base = random_rollouts(5)
    n = base.num_trajectories
    r = WithDifficulty(**columns_of(base), difficulty=list(range(n)), texts=base.texts)
    assert r.difficulty.dtype == torch.float32  # coerced to its dtype
    assert r.select([n - 1]).difficulty.tolist() == [n - 1]  # selected with its level
    assert WithDifficulty.concat(r.split_groups(3)).equals(r)  # concat / split
    assert r.to("cpu").difficulty is not None
    write_parquet(r, tmp_path / "d.parquet")  # stored in the file, read back by the subclass
    from stepcredit.io import read_parquet

    assert read_parquet(tmp_path / "d.parquet", cls=WithDifficulty).equals(r)
    assert load(tmp_path / "d.parquet").equals(base)  # plain Rollouts ignore it
    with pytest.raises(RolloutError, match="expected a finite number") as info:  # checked
        WithDifficulty(**columns_of(base), difficulty=[float("nan")] * n, texts=base.texts)
    assert info.value.field == "difficulty" and info.value.trajectory == base.trajectory_id(0)
    with pytest.raises(RolloutError, match="one per trajectory"):
        WithDifficulty(**columns_of(base), difficulty=[0.0] * (n + 1), texts=base.texts)
    recs = [
        DifficultyRecord(id="a", group="g", outcome=1.0, steps=[StepRecord("x")], difficulty=0.7),
        DifficultyRecord(id="b", group="g", outcome=0.0, steps=[StepRecord("y")]),
    ]
    built = build(recs, cls=WithDifficulty)  # the builder reads it from the records, fill for the rest
    assert built.difficulty.tolist() == pytest.approx([0.7, 0.0])
    assert build(recs).columns() == Rollouts.columns()


def test_schema_covers_every_field():
    fields = set(Rollouts.__dataclass_fields__) - {"texts"}
    assert set(COLUMNS) == fields
    assert all(col.name == name for name, col in COLUMNS.items())
    assert set(TEXT_COLUMNS) == set(Texts.__dataclass_fields__)
