"""Decision-point keys (``Rollouts.state``) from texts: anchor observations and similarity grouping.

GiGPO groups steps taken from the same *anchor state* — the observation the agent acted on. Loaders
key steps by action history (``io.records.history_states``); these helpers derive keys from the
observation texts instead, exactly or by similarity (verl-agent's ``enable_similarity``: steps whose
anchor observations have a ``difflib`` ratio ≥ threshold share a key, greedy first-fit).

This is text preprocessing, done once per batch before any estimator runs; it walks Python strings.
Clustering happens only *within* a group and only over *distinct* anchor texts, so its cost is
quadratic in the number of distinct observations of one task, never in the batch size.
"""

from __future__ import annotations

import difflib
import hashlib

import torch
from torch import Tensor

from stepcredit.rollouts import Rollouts
from stepcredit.texts import anchor_observations


def _key(group: int, text: str) -> int:
    digest = hashlib.blake2b(f"{group}\x1f{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def observation_states(rollouts: Rollouts, *, similarity: float | None = None) -> Tensor:
    """``[S]`` int64 keys: steps of the same group share a key when their anchor observations are
    equal (``similarity=None``) or similar (``difflib.SequenceMatcher`` ratio ≥ ``similarity``, each
    observation joining the first earlier cluster whose representative is similar enough)."""
    if similarity is not None and not 0.0 < similarity <= 1.0:
        raise ValueError(f"similarity must be in (0, 1], got {similarity}")
    anchors = anchor_observations(rollouts)
    groups = rollouts.step_group.tolist()
    if similarity is None or similarity == 1.0:
        return torch.tensor([_key(g, a) for g, a in zip(groups, anchors, strict=True)], dtype=torch.int64)
    reps: dict[int, list[str]] = {}  # group -> cluster representatives, in order of creation
    resolved: dict[tuple[int, str], str] = {}  # (group, text) -> its representative
    keys = []
    for g, text in zip(groups, anchors, strict=True):
        rep = resolved.get((g, text))
        if rep is None:
            rep = text
            for cand in reps.setdefault(g, []):
                m = difflib.SequenceMatcher(None, text, cand, autojunk=False)
                if m.real_quick_ratio() >= similarity and m.quick_ratio() >= similarity and m.ratio() >= similarity:
                    rep = cand
                    break
            else:
                reps[g].append(text)
            resolved[(g, text)] = rep
        keys.append(_key(g, rep))
    return torch.tensor(keys, dtype=torch.int64).to(rollouts.device)
