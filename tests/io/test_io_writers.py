"""JSONL and Parquet round trips."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

from stepcredit import RolloutError, Rollouts
from stepcredit.core import Texts
from stepcredit.envs import make_rollouts
from stepcredit.io import from_trainer_tensors, load, write_chat_jsonl, write_parquet
from tests.support.schema import columns_of

TENSOR_FIELDS = (
    "group",
    "outcome",
    "step_offsets",
    "kind",
    "reward",
    "tool_ok",
    "state",
    "call_offsets",
    "call_ok",
    "label",
    "call_label",
    "response_mask",
    "step_token_start",
    "step_token_end",
    "call_token_start",
    "call_token_end",
)


def assert_same(a: Rollouts, b: Rollouts, *, tokens: bool = True) -> None:
    for name in TENSOR_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if not tokens and (name.startswith(("step_token", "call_token")) or name == "response_mask"):
            continue
        assert (x is None) == (y is None), name
        if x is not None:
            assert torch.equal(x, y) or (
                x.is_floating_point() and torch.allclose(x, y, equal_nan=True, rtol=0, atol=0)
            ), name
    for name in Texts.__dataclass_fields__:
        assert getattr(a.texts, name).to_pylist() == getattr(b.texts, name).to_pylist(), name


@pytest.fixture
def synthetic():
    r = make_rollouts(6, 4, seed=3)
    reward = torch.linspace(-1, 1, r.num_steps)
    call_ok = r.call_ok.clone()
    call_ok[::5] = -1
    cols = {k: getattr(r, k) for k in TENSOR_FIELDS if k != "tool_ok"}  # tool_ok follows the calls
    n, s = r.num_trajectories, r.num_steps
    extra = {
        "tree": torch.arange(n) // 2,  # pairs of leaves, numbered in order of first appearance
        "confidence": torch.where(torch.arange(n) % 3 == 0, torch.tensor(float("nan")), torch.linspace(0, 1, n)),
        "rubric": torch.arange(2 * n).reshape(n, 2) % 3 == 0,
        "prm": torch.linspace(0, 1, s),
        "abandoned": torch.arange(s) % 4 == 1,
    }
    return Rollouts(**{**cols, **extra, "reward": reward, "call_ok": call_ok, "texts": r.texts})


def test_jsonl_round_trip(tmp_path, synthetic):
    path = tmp_path / "s.jsonl"
    write_chat_jsonl(synthetic, path)
    assert_same(synthetic, load(path))


def test_parquet_round_trip(tmp_path, synthetic):
    path = tmp_path / "s.parquet"
    write_parquet(synthetic, path)
    assert_same(synthetic, load(path))


def test_parquet_round_trip_with_tokens(tmp_path):
    tokens = torch.tensor([[7, 8, 3, 9, 0, 5], [5, 5, 7, 8, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 1], [1, 1, 1, 1, 1, 0]])
    r = from_trainer_tensors(
        mask, ["a", "b"], outcome=torch.tensor([1.0, 0.0]), responses=tokens, tool_call_start=[7, 8], tool_call_end=[9]
    )
    path = tmp_path / "t.parquet"
    write_parquet(r, path)
    assert_same(r, load(path))


def test_real_logs_round_trip(tmp_path, tau2_rollouts):
    write_chat_jsonl(tau2_rollouts, tmp_path / "t.jsonl")
    assert_same(tau2_rollouts, load(tmp_path / "t.jsonl"))
    # Parquet keeps each group's trajectories together (the tau2 files interleave tasks), so it streams
    write_parquet(tau2_rollouts, tmp_path / "t.parquet")
    grouped = tau2_rollouts.select(torch.argsort(tau2_rollouts.group, stable=True))
    assert not grouped.equals(tau2_rollouts)
    assert_same(grouped, load(tmp_path / "t.parquet"))


def test_kind_that_differs_from_derived_round_trips(tmp_path):
    r = Rollouts(group=[0], outcome=[0.0], step_offsets=[0, 2], kind=[1, 0])
    write_chat_jsonl(r, tmp_path / "k.jsonl")
    assert load(tmp_path / "k.jsonl").kind.tolist() == [1, 0]


def test_bad_parquet(tmp_path, synthetic):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(RolloutError, match="cannot read Parquet"):
        load(path)
    table = pq.read_table(write_parquet(synthetic, tmp_path / "ok.parquet") or tmp_path / "ok.parquet")
    pq.write_table(table.drop_columns(["outcome"]), tmp_path / "no_outcome.parquet")
    with pytest.raises(RolloutError, match="missing column 'outcome'"):
        load(tmp_path / "no_outcome.parquet")
    with pytest.raises(RolloutError, match="on its own"):
        load([tmp_path / "ok.parquet", tmp_path / "no_outcome.parquet"])


def test_parquet_keeps_contiguous_groups_in_their_order(tmp_path, synthetic):
    """Groups already together stay as they are even when their ids are not ascending (groups 1, 1,
    0, 0 …); only groups whose trajectories lie apart are gathered."""
    order = torch.argsort(synthetic.group, stable=True)
    descending = synthetic.select(torch.cat([order[synthetic.group[order] == g] for g in
                                             range(synthetic.num_groups - 1, -1, -1)]))
    descending = Rollouts(**{**columns_of(descending), "group": synthetic.num_groups - 1 - descending.group},
                          texts=descending.texts)  # ids now run 5, 5, …, 0, 0 (one name each, reversed)
    assert bool((descending.group[1:] < descending.group[:-1]).any())
    write_parquet(descending, tmp_path / "d.parquet")
    assert pq.read_table(tmp_path / "d.parquet").column("id").to_pylist() == descending.texts.ids.to_pylist()


# ------------------------------------------------------------------- hostile input
def test_writes_are_atomic(tmp_path, monkeypatch):
    import stepcredit.io.chat as chat

    out = tmp_path / "c.jsonl"
    out.write_text("previous\n")
    real, calls = chat.json.dumps, []

    def interrupted(*args, **kwargs):  # the run is stopped while the third record is written
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(chat.json, "dumps", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_chat_jsonl(make_rollouts(3, 2, seed=0), out)
    assert out.read_text() == "previous\n"  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]  # no torn temp file left
