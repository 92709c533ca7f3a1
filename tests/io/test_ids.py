"""Distinct ids stay distinct: group and trajectory ids are keyed by value *and* type in
``from_trainer_tensors`` and the verl-agent adapter (ids of two types that print the same are refused),
and streamed datasets check trajectory ids across chunks whatever the chunk size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from stepcredit.core.errors import RolloutError
from stepcredit.envs import make_rollouts
from stepcredit.integrations.verl.agent import rows_from_verl_agent
from stepcredit.io import from_trainer_tensors, write_parquet
from stepcredit.io.stream import iter_group_chunks, plan_group_chunks

MASK = torch.ones(4, 3)
OUTCOME = torch.tensor([1.0, 0.0, 1.0, 0.0])


def _index(a: object, b: object) -> np.ndarray:
    return np.array([a, a, b, b], dtype=object)


@pytest.mark.parametrize(("a", "b"), [(1, "1"), (None, "None")])
def test_ids_of_two_types_that_print_the_same_are_refused(a: object, b: object) -> None:
    with pytest.raises(RolloutError, match="different but print the same"):
        from_trainer_tensors(MASK, _index(a, b), outcome=OUTCOME)


@pytest.mark.parametrize(("a", "b"), [(b"a", "a"), ("a\x00", "a"), (1, 1.5), ("x", ("x",))])
def test_distinct_ids_stay_distinct_groups(a: object, b: object) -> None:
    r = from_trainer_tensors(MASK, _index(a, b), outcome=OUTCOME)
    assert r.num_groups == 2 and r.group.tolist() == [0, 0, 1, 1]


def test_equal_ids_of_one_type_are_one_group_in_order_of_first_appearance() -> None:
    r = from_trainer_tensors(MASK, np.array([7, 3, 7, 3], dtype=object), outcome=OUTCOME)
    assert r.group.tolist() == [0, 1, 0, 1] and list(r.texts.group_names.to_pylist()) == ["7", "3"]
    lists = np.empty(4, dtype=object)
    lists[:] = [[1], [1], [2], [2]]
    with pytest.raises(RolloutError, match="must be hashable"):
        from_trainer_tensors(MASK, lists, outcome=OUTCOME)


def test_numpy_and_list_inputs_work_like_tensors() -> None:
    want = from_trainer_tensors(MASK, ["a", "a", "b", "b"], outcome=OUTCOME)
    got = from_trainer_tensors(MASK.numpy(), ["a", "a", "b", "b"], outcome=OUTCOME.tolist())  # type: ignore[arg-type]
    assert got.equals(want)
    with pytest.raises(RolloutError, match=r"response_mask.*expected a tensor"):
        from_trainer_tensors("mask", ["a"], outcome=[1.0])  # type: ignore[arg-type]


def test_the_verl_agent_adapter_keeps_trajectories_of_two_types_apart() -> None:
    mask = torch.ones(4, 3)
    uid = np.array(["g", "g", "g", "g"], dtype=object)
    rewards = np.array([0.0, 1.0, 0.0, 0.0])
    with pytest.raises(RolloutError, match="different but print the same"):
        rows_from_verl_agent(mask, uid, np.array([0, 0, "0", "0"], dtype=object), rewards)
    rows = rows_from_verl_agent(mask, uid, np.array([0, 0, 1, 1], dtype=object), rewards)
    assert rows.rollouts.num_trajectories == 2


@pytest.mark.parametrize("chunk_groups", [1, 3, 8, 100])
def test_streaming_refuses_an_id_repeated_in_another_file_at_any_chunk_size(tmp_path: Path, chunk_groups: int) -> None:
    write_parquet(make_rollouts(8, 4, seed=0), tmp_path / "a.parquet")
    table = pq.read_table(tmp_path / "a.parquet")
    renamed = pa.array([g + "-b" for g in table["group"].to_pylist()], type=table.schema.field("group").type)
    pq.write_table(table.set_column(table.schema.get_field_index("group"), "group", renamed), tmp_path / "b.parquet")
    with pytest.raises(RolloutError, match="task0-agent0") as err:
        list(iter_group_chunks(tmp_path, chunk_groups))
    assert "not unique" in str(err.value) or "already appeared in an earlier chunk" in str(err.value)
    if chunk_groups < 16:  # the duplicate lies in another chunk: the planner sees it too
        with pytest.raises(RolloutError, match=r"b\.parquet.*already appeared"):
            plan_group_chunks(tmp_path, chunk_groups)


def test_streaming_passes_unique_ids_at_any_chunk_size(tmp_path: Path) -> None:
    r = make_rollouts(12, 3, seed=1)
    write_parquet(r, tmp_path / "a.parquet")
    for chunk_groups in (1, 5, 100):
        assert sum(c.num_trajectories for c in iter_group_chunks(tmp_path, chunk_groups)) == r.num_trajectories


def test_an_id_that_is_not_text_is_refused_in_one_line() -> None:
    with pytest.raises(RolloutError, match="lone surrogate"):
        from_trainer_tensors(MASK, _index("a\ud800", "b"), outcome=OUTCOME)


def test_the_chat_loader_refuses_a_group_written_as_a_number_and_as_a_string(tmp_path: Path) -> None:
    from stepcredit import load

    turn = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    lines = [{"id": "a", "group": 1, "reward": 1.0, "messages": turn}, {"id": "b", "group": "1", "reward": 0.0,
                                                                        "messages": turn}]
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.raises(RolloutError, match=r"is a string here but a number in .*log\.jsonl:1"):
        load(path)
    lines[1]["group"] = 1
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert load(path).num_groups == 1
