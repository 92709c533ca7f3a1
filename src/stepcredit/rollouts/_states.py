"""Decision-point keys (``Rollouts.state``): the one place that derives them.

Steps taken from the same decision point share a key; estimators that compare steps group by
``(group, state)``. Keys come from

* the **action history** (``history_states``, the loaders' default): a hash of the group and every
  earlier tool call, so the first step of every trajectory of a task, and steps after identical call
  prefixes, share a key;
* nothing (``distinct_states``): every step its own key;
* the **anchor observation** (``observation_states``, GiGPO): steps whose observations are equal, or
  similar by ``difflib`` ratio ≥ threshold (verl-agent's ``enable_similarity``, greedy first-fit)
  — the ratio of ``are_similar(new, representative)``, ``SequenceMatcher(None, new, representative)``
  with Python's default ``autojunk`` (characters over 1% of a 200+ character representative are
  junk), so long observations group as they do there —
  share a key. Clustering happens only within a group and only over distinct texts, so its cost is
  quadratic in the distinct observations of one task, never in the batch size.

Keys are stable across processes and machines (BLAKE2b, not Python's salted ``hash``).
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from stepcredit.rollouts._batch import Rollouts
    from stepcredit.rollouts._build import TrajectoryRecord

__all__ = ["distinct_states", "history_states", "observation_states", "text_keys"]


def _key(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def text_keys(texts: Sequence[str], groups: Sequence[int] | None = None) -> Tensor:
    """``[len(texts)]`` int64 keys of texts (e.g. anchor observations), within their group when given:
    equal texts of one group share a key."""
    groups = [0] * len(texts) if groups is None else groups
    return torch.tensor([_key(f"{g}\x1f{t}".encode()) for g, t in zip(groups, texts, strict=True)], dtype=torch.int64)


def history_states(record: TrajectoryRecord) -> list[int]:
    """Decision-point keys from the action history: step ``t``'s key hashes the group and every earlier
    step's actions (each tool call as ``name + canonical arguments``; a text-only turn as one marker).

    Steps of the same group whose earlier *tool calls* are identical therefore share a key — e.g. the
    first step of every trajectory of a task (the same prompt). Observations are not hashed: for
    deterministic tools the call history determines them, and free-text user turns would make every
    key unique.
    """
    h = hashlib.blake2b(record.group.encode(), digest_size=8)
    keys = []
    for step in record.steps:
        keys.append(int.from_bytes(h.digest()[:8], "little", signed=True))
        if step.calls:
            for call in step.calls:
                h.update(b"\x1ecall\x1f" + call.name.encode() + b"\x1f" + call.arguments.encode())
        else:
            h.update(b"\x1etext")
    return keys


def distinct_states(record: TrajectoryRecord) -> list[int]:
    """A key of its own for every step (hash of the trajectory id and the step's position)."""
    return [_key(f"{record.id}\x1f{t}".encode()) for t in range(len(record.steps))]


def observation_states(rollouts: Rollouts, *, similarity: float | None = None) -> Tensor:
    """``[S]`` int64 keys: steps of the same group share a key when their anchor observations are
    equal (``similarity=None``) or similar (``difflib.SequenceMatcher`` ratio ≥ ``similarity``, each
    observation joining the first earlier cluster whose representative is similar enough)."""
    from stepcredit.rollouts._texts import anchor_observations

    if similarity is not None and not 0.0 < similarity <= 1.0:
        raise ValueError(f"similarity must be in (0, 1], got {similarity}")
    anchors = anchor_observations(rollouts)
    groups = rollouts.step_group.tolist()
    if similarity is None or similarity == 1.0:
        return text_keys(anchors, groups).to(rollouts.device)
    reps: dict[int, list[str]] = {}  # group -> cluster representatives, in order of creation
    resolved: dict[tuple[int, str], str] = {}  # (group, text) -> its representative
    chosen = []
    for g, text in zip(groups, anchors, strict=True):
        rep = resolved.get((g, text))
        if rep is None:
            rep = text
            for cand in reps.setdefault(g, []):
                m = difflib.SequenceMatcher(None, text, cand)  # verl-agent's are_similar: default autojunk
                if m.real_quick_ratio() >= similarity and m.quick_ratio() >= similarity and m.ratio() >= similarity:
                    rep = cand
                    break
            else:
                reps[g].append(text)
            resolved[(g, text)] = rep
        chosen.append(rep)
    return text_keys(chosen, groups).to(rollouts.device)
