"""Writers and the Parquet reader: chat JSONL (round-trips through the chat loader) and Parquet.

Parquet keeps one row per trajectory with nested ``steps: list<struct<..., calls: list<struct>>>``;
both directions map the CSR offsets of ``Rollouts`` straight onto Arrow list offsets, with no Python
loop over rows, so large logs move at columnar speed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from stepcredit.errors import RolloutError
from stepcredit.rollouts import TOOL_ERROR, TOOL_UNKNOWN, Rollouts, StepKind, Texts

FORMAT_VERSION = "1"


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


# ---------------------------------------------------------------------------------------------- JSONL
def to_chat_records(rollouts: Rollouts) -> list[dict[str, Any]]:
    """Chat records (OpenAI format) that ``read_chat`` turns back into the same batch (token spans aside)."""
    r = rollouts
    assert r.texts is not None
    t = {k: getattr(r.texts, k).to_pylist() for k in Texts.__dataclass_fields__}
    group, outcome = _np(r.group).tolist(), _np(r.outcome).tolist()
    off, coff = _np(r.step_offsets).tolist(), _np(r.call_offsets).tolist()
    kind, reward, state = _np(r.kind).tolist(), _np(r.reward).tolist(), _np(r.state).tolist()
    call_ok = _np(r.call_ok).tolist()
    label = _np(r.label).tolist() if r.label is not None else None
    tree = _np(r.tree).tolist() if r.tree is not None else None
    confidence = _np(r.confidence).tolist() if r.confidence is not None else None
    rubric = _np(r.rubric).tolist() if r.rubric is not None else None
    prm = _np(r.prm).tolist() if r.prm is not None else None
    abandoned = _np(r.abandoned).tolist() if r.abandoned is not None else None
    call_label = _np(r.call_label).tolist() if r.call_label is not None else None
    records = []
    for i in range(r.num_trajectories):
        messages: list[dict[str, Any]] = []
        if t["prompt"][i]:
            messages.append({"role": "user", "content": t["prompt"][i]})
        last = off[i + 1] - 1
        for s in range(off[i], off[i + 1]):
            calls = range(coff[s], coff[s + 1])
            msg: dict[str, Any] = {
                "role": "assistant",
                "content": t["action"][s],
                "reward": reward[s],
                "state": state[s],
            }
            derived = StepKind.TOOL_CALL if calls else (StepKind.ANSWER if s == last else StepKind.REASON)
            if kind[s] != derived:
                msg["kind"] = StepKind(kind[s]).name.lower()
            if label is not None:
                msg["label"] = label[s]
            if prm is not None:
                msg["prm"] = prm[s]
            if abandoned is not None and abandoned[s]:
                msg["abandoned"] = True
            if calls:
                msg["tool_calls"] = []
                for c in calls:
                    call = {
                        "id": f"call_{s}_{c - coff[s]}",
                        "type": "function",
                        "function": {"name": t["call_name"][c], "arguments": t["call_arguments"][c]},
                    }
                    if call_label is not None:
                        call["label"] = call_label[c]
                    msg["tool_calls"].append(call)
            messages.append(msg)
            for c in calls:
                ok = call_ok[c]
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": f"call_{s}_{c - coff[s]}",
                        "content": t["call_result"][c],
                        "error": None if ok == TOOL_UNKNOWN else ok == TOOL_ERROR,
                    }
                )
            if t["observation"][s]:
                messages.append({"role": "user", "content": t["observation"][s]})
        record = {"id": t["ids"][i], "group": t["group_names"][group[i]], "reward": outcome[i], "messages": messages}
        if tree is not None:
            record["tree"] = str(tree[i])
        if confidence is not None:
            record["confidence"] = None if confidence[i] != confidence[i] else confidence[i]  # NaN → null
        if rubric is not None:
            record["rubric"] = rubric[i]
        records.append(record)
    return records


def write_chat_jsonl(rollouts: Rollouts, path: str | Path) -> None:
    """Write one chat record a line (see ``to_chat_records``)."""
    with open(path, "w", encoding="utf-8") as f:
        for rec in to_chat_records(rollouts):
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


# -------------------------------------------------------------------------------------------- Parquet
def _list(offsets: torch.Tensor, values: pa.Array) -> pa.Array:
    return pa.LargeListArray.from_arrays(pa.array(_np(offsets), type=pa.int64()), values)


def to_arrow(rollouts: Rollouts) -> pa.Table:
    """One row per trajectory; steps and their calls as nested lists."""
    r = rollouts
    assert r.texts is not None
    call_cols = {
        "name": r.texts.call_name,
        "arguments": r.texts.call_arguments,
        "result": r.texts.call_result,
        "ok": pa.array(_np(r.call_ok)),
    }
    if r.call_label is not None:
        call_cols["label"] = pa.array(_np(r.call_label))
    if r.call_token_start is not None and r.call_token_end is not None:
        call_cols["token_start"] = pa.array(_np(r.call_token_start))
        call_cols["token_end"] = pa.array(_np(r.call_token_end))
    calls = pa.StructArray.from_arrays(list(call_cols.values()), names=list(call_cols))
    step_cols: dict[str, pa.Array] = {
        "kind": pa.array(_np(r.kind)),
        "reward": pa.array(_np(r.reward)),
        "tool_ok": pa.array(_np(r.tool_ok)),
        "state": pa.array(_np(r.state)),
        "action": r.texts.action,
        "observation": r.texts.observation,
    }
    if r.label is not None:
        step_cols["label"] = pa.array(_np(r.label))
    if r.prm is not None:
        step_cols["prm"] = pa.array(_np(r.prm))
    if r.abandoned is not None:
        step_cols["abandoned"] = pa.array(_np(r.abandoned))
    if r.step_token_start is not None and r.step_token_end is not None:
        step_cols["token_start"] = pa.array(_np(r.step_token_start))
        step_cols["token_end"] = pa.array(_np(r.step_token_end))
    step_cols["calls"] = _list(r.call_offsets, calls)
    steps = pa.StructArray.from_arrays(list(step_cols.values()), names=list(step_cols))
    table = pa.table(
        {
            "id": r.texts.ids,
            "group": r.texts.group_names.take(pa.array(_np(r.group))),
            "outcome": pa.array(_np(r.outcome)),
            "prompt": r.texts.prompt,
            "steps": _list(r.step_offsets, steps),
            **({"tree": pa.array(_np(r.tree))} if r.tree is not None else {}),
            **({"confidence": pa.array(_np(r.confidence))} if r.confidence is not None else {}),
            **({"rubric": pa.array(_np(r.rubric).tolist(), type=pa.list_(pa.bool_()))} if r.rubric is not None else {}),
        }
    )
    meta = {b"stepcredit.format": FORMAT_VERSION.encode()}
    if r.response_mask is not None:
        meta[b"stepcredit.response_length"] = str(r.response_mask.shape[1]).encode()
    return table.replace_schema_metadata(meta)


def write_parquet(rollouts: Rollouts, path: str | Path) -> None:
    pq.write_table(to_arrow(rollouts), path)


def _flat(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy()
    return offsets - offsets[0], arr.flatten()


def _field(struct: pa.StructArray, name: str, source: str) -> pa.Array:
    try:
        return struct.field(name)
    except KeyError:
        raise RolloutError(f"missing nested column {name!r}", source=source, field=name) from None


def _tensor(arr: pa.Array, dtype: torch.dtype, name: str, source: str) -> torch.Tensor:
    if arr.null_count:
        raise RolloutError("contains nulls", source=source, field=name)
    return torch.from_numpy(arr.to_numpy(zero_copy_only=False).copy()).to(dtype)


def _rubric(table: pa.Table, source: str) -> torch.Tensor | None:
    if "rubric" not in table.column_names:
        return None
    offsets, values = _flat(table.column("rubric"))
    counts = set((offsets[1:] - offsets[:-1]).tolist())
    if len(counts) > 1:
        raise RolloutError("rubric lists differ in length across trajectories", source=source, field="rubric")
    return _tensor(values, torch.bool, "rubric", source).reshape(table.num_rows, counts.pop() if counts else 0)


def from_arrow(table: pa.Table, source: str = "<table>") -> Rollouts:
    """Inverse of ``to_arrow``; groups numbered by first appearance."""
    from stepcredit.io.tensors import dense_groups

    for name in ("id", "group", "outcome", "steps"):
        if name not in table.column_names:
            raise RolloutError(f"missing column {name!r}", source=source, field=name)
    step_off, steps = _flat(table.column("steps"))
    if not pa.types.is_struct(steps.type):
        raise RolloutError("expected a list of step structs", source=source, field="steps")
    call_off, calls = _flat(_field(steps, "calls", source))
    group, names = dense_groups(table.column("group").to_numpy(zero_copy_only=False).astype(str))
    opt = lambda struct, name, dtype: (  # noqa: E731
        _tensor(struct.field(name), dtype, name, source) if name in struct.type.names else None
    )
    meta = table.schema.metadata or {}
    mask = None
    step_start, step_end = opt(steps, "token_start", torch.int64), opt(steps, "token_end", torch.int64)
    if b"stepcredit.response_length" in meta and step_start is not None and step_end is not None:
        from stepcredit import segments

        t = int(meta[b"stepcredit.response_length"])
        traj = segments.segment_ids(torch.as_tensor(step_off))
        mask = segments.span_index_map(step_start, step_end, traj, (table.num_rows, t)) >= 0
    texts = Texts.create(
        table.num_rows,
        len(names),
        len(steps),
        len(calls),
        ids=table.column("id").combine_chunks(),
        group_names=names,
        prompt=table.column("prompt").combine_chunks() if "prompt" in table.column_names else None,
        action=_field(steps, "action", source),
        observation=_field(steps, "observation", source),
        call_name=_field(calls, "name", source),
        call_arguments=_field(calls, "arguments", source),
        call_result=_field(calls, "result", source),
    )
    return Rollouts(
        group=group,
        outcome=_tensor(table.column("outcome").combine_chunks(), torch.float32, "outcome", source),
        step_offsets=torch.as_tensor(step_off, dtype=torch.int64),
        kind=_tensor(_field(steps, "kind", source), torch.int8, "kind", source),
        reward=_tensor(_field(steps, "reward", source), torch.float32, "reward", source),
        tool_ok=_tensor(_field(steps, "tool_ok", source), torch.int8, "tool_ok", source),
        state=_tensor(_field(steps, "state", source), torch.int64, "state", source),
        call_offsets=torch.as_tensor(call_off, dtype=torch.int64),
        call_ok=_tensor(_field(calls, "ok", source), torch.int8, "ok", source),
        label=opt(steps, "label", torch.int8),
        prm=opt(steps, "prm", torch.float32),
        abandoned=opt(steps, "abandoned", torch.bool),
        confidence=_tensor(table.column("confidence").combine_chunks(), torch.float32, "confidence", source)
        if "confidence" in table.column_names
        else None,
        rubric=_rubric(table, source),
        tree=_tensor(table.column("tree").combine_chunks(), torch.int64, "tree", source)
        if "tree" in table.column_names
        else None,
        call_label=opt(calls, "label", torch.int8),
        response_mask=mask,
        step_token_start=step_start if mask is not None else None,
        step_token_end=step_end if mask is not None else None,
        call_token_start=opt(calls, "token_start", torch.int64) if mask is not None else None,
        call_token_end=opt(calls, "token_end", torch.int64) if mask is not None else None,
        texts=texts,
    )


def read_parquet(path: str | Path) -> Rollouts:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise RolloutError(f"cannot read Parquet ({exc})", source=str(path)) from None
    return from_arrow(table, str(path))
