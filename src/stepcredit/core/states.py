"""Decision-point keys (``Rollouts.state``): the one place that derives them.

Steps taken from the same decision point share a key; estimators that compare steps group by
``(group, state)``. Keys come from

* the **action history** (``records.history_states``, the loaders' default): a hash of the group and every
  earlier tool call, so the first step of every trajectory of a task, and steps after identical call
  prefixes, share a key;
* nothing (``records.distinct_states``): every step its own key;
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
    from stepcredit.core.batch import Rollouts

__all__ = ["anchor_observations", "key_of", "observation_states", "text_keys"]


def key_of(data: bytes) -> int:
    """A stable signed 64-bit key of ``data`` (BLAKE2b, 8 bytes, little-endian)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def text_keys(texts: Sequence[str], groups: Sequence[int] | None = None) -> Tensor:
    """``[len(texts)]`` int64 keys of texts (e.g. anchor observations), within their group when given:
    equal texts of one group share a key."""
    groups = [0] * len(texts) if groups is None else groups
    return torch.tensor([key_of(f"{g}\x1f{t}".encode()) for g, t in zip(groups, texts, strict=True)], dtype=torch.int64)


def observation_states(rollouts: Rollouts, *, similarity: float | None = None) -> Tensor:
    """``[S]`` int64 keys: steps of the same group share a key when their anchor observations are
    equal (``similarity=None``) or similar (``difflib.SequenceMatcher`` ratio ≥ ``similarity``, each
    observation joining the first earlier cluster whose representative is similar enough)."""
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


def anchor_observations(rollouts: Rollouts) -> list[str]:
    """The observation each step acted on: the prompt for a trajectory's first step, else the previous
    step's (non-empty) tool results, in call order, followed by its observation text."""
    r = rollouts
    prompt = r.texts.prompt.to_pylist()
    obs = r.texts.observation.to_pylist()
    results = r.texts.call_result.to_pylist()
    coff = r.call_offsets.tolist()
    # empty results (a trainer batch knows no tool outputs) add no blank lines
    after = ["\n".join([*(x for x in results[coff[s] : coff[s + 1]] if x), obs[s]]) for s in range(r.num_steps)]
    first = set(r.step_offsets[:-1].tolist())
    traj = r.step_traj.tolist()
    return [prompt[traj[s]] if s in first else after[s - 1] for s in range(r.num_steps)]
