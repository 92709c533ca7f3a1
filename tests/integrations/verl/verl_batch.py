"""A verl-shaped multi-turn batch with tool calls, and the same rollouts as stepcredit records.

Each session is a chain of turns ``<tool_call>{json}</tool_call>`` → tool output (mask 0) → … → an
answer; some sessions are split into two agent-loop outputs (rows ``{uid}_{session}_0`` and ``_1``),
as verl v1 keys them. The records side (``build``) is written from the same choices by hand, so a
test can compare the adapter (token layout → trajectories → recipe → tokens) with stepcredit's direct
path (records → recipe → per-step credit).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from stepcredit.core import CallRecord, StepRecord, TrajectoryRecord, canonical_json
from stepcredit.generation.hf import train_tokenizer

CALLS = [("get_user", {"id": 7}), ("get_order", {"id": 3, "user": 7}), ("cancel", {"order": 3}),
         ("refund", {"order": 3, "amount": 12}), ("get_order", {"user": 7, "id": 4})]
OPEN, CLOSE = "<tool_call>", "</tool_call>"


def tokenizer():  # type: ignore[no-untyped-def]
    corpus = [f"{OPEN}{json.dumps({'name': n, 'arguments': a})}{CLOSE} result ok answer done" for n, a in CALLS] * 4
    tok = train_tokenizer(corpus, vocab_size=400)
    tok.add_tokens([OPEN, CLOSE])
    return tok


@dataclass
class Row:
    key: str
    uid: str
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)  # step token spans
    tool_rewards: list[float] = field(default_factory=list)
    score: float = 0.0


def make_batch(tok, seed: int, groups: int = 3, sessions: int = 4, split_every: int = 3):  # type: ignore[no-untyped-def]
    """``(rows, records, step_rows)``: verl rows, one ``TrajectoryRecord`` per session, and for every
    record step the (row index, token span) it occupies."""
    rng = random.Random(seed)
    rows: list[Row] = []
    records: list[TrajectoryRecord] = []
    where: list[list[tuple[int, int, int]]] = []

    def enc(text: str) -> list[int]:
        return list(tok.encode(text, add_special_tokens=False))

    for g in range(groups):
        uid = f"task{g}"
        for s in range(sessions):
            turns = rng.randint(1, 4)
            outcome = float(rng.random() < 0.5)
            split_at = turns // 2 if (s % split_every == 1 and turns > 1) else None
            parts = [Row(f"{uid}_{s}_0", uid)]
            steps, places = [], []
            for t in range(turns):
                if split_at is not None and t == split_at:
                    parts.append(Row(f"{uid}_{s}_1", uid))
                row = parts[-1]
                last = t == turns - 1
                if last:
                    text, calls = f"answer {rng.randint(0, 9)} done", []
                else:
                    k = rng.sample(range(len(CALLS)), rng.choice([1, 1, 2]))
                    calls = [CALLS[i] for i in k]
                    # argument order varies between writers: the text identity must not care
                    bodies = [{"name": n, "arguments": dict(sorted(a.items(), reverse=rng.random() < 0.5))}
                              for n, a in calls]
                    text = "".join(f"{OPEN}{json.dumps(b)}{CLOSE}" for b in bodies)
                ids = enc(text)
                start = len(row.ids)
                row.ids += ids
                row.mask += [1] * len(ids)
                row.spans.append((start, len(row.ids)))
                places.append((len(rows) + len(parts) - 1, start, len(row.ids)))
                row.tool_rewards += [round(rng.uniform(-1, 1), 2) for _ in calls]
                steps.append(
                    StepRecord(
                        action=text,
                        calls=[CallRecord(n, canonical_json(a)) for n, a in calls],
                        reward=sum(row.tool_rewards[len(row.tool_rewards) - len(calls):]) if calls else 0.0,
                    )
                )
                if not last:
                    obs = enc(" result ok ")
                    row.ids += obs
                    row.mask += [0] * len(obs)
            for p in parts:
                p.score = outcome
            rows.extend(parts)
            records.append(TrajectoryRecord(id=f"{uid}_{s}", group=uid, outcome=outcome, steps=steps))
            where.append(places)
    return rows, records, where


def tensors(rows: list[Row], pad: int = 0) -> dict[str, torch.Tensor | np.ndarray]:
    """Right-padded ``responses``, ``response_mask``, ``token_level_rewards`` (score on the last
    token, as verl's agent loop puts it) and the uid array."""
    width = max(len(r.ids) for r in rows) + pad
    b = len(rows)
    responses = torch.zeros(b, width, dtype=torch.int64)
    mask = torch.zeros(b, width, dtype=torch.int64)
    scores = torch.zeros(b, width, dtype=torch.float32)
    for i, r in enumerate(rows):
        responses[i, : len(r.ids)] = torch.tensor(r.ids)
        mask[i, : len(r.mask)] = torch.tensor(r.mask)
        scores[i, len(r.ids) - 1] = r.score
    return {"responses": responses, "response_mask": mask, "token_level_rewards": scores,
            "uid": np.array([r.uid for r in rows], dtype=object)}
