"""Hypothesis strategies of random batches for the estimators' property tests."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from stepcredit import Rollouts
from stepcredit.core import Texts


@st.composite
def structured(draw, tokens: bool = True, huge: bool = False):
    """Random batches with groups, trees, shared states, tool calls (repeated names), step rewards and,
    optionally, token spans with gaps (observations) between steps and call spans inside steps."""
    n = draw(st.integers(1, 10))
    group = sorted(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    dense = {g: k for k, g in enumerate(dict.fromkeys(group))}
    group = [dense[g] for g in group]
    values = st.floats(-1e6, 1e6, width=32) if huge else st.sampled_from([0.0, 1.0, 0.5])
    outcome = draw(st.lists(values, min_size=n, max_size=n))
    tree = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    steps_per = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    offsets, kind, call_counts, state, reward = [0], [], [], [], []
    for k in steps_per:
        offsets.append(offsets[-1] + k)
        for t in range(k):
            c = draw(st.integers(0, 2))
            call_counts.append(c)
            kind.append(1 if c else (2 if t == k - 1 else 0))
            state.append(draw(st.integers(0, 3)) + 10 * t)
            reward.append(draw(st.sampled_from([0.0, 0.0, 1.0, -0.5])))
    s, c = len(kind), sum(call_counts)
    call_offsets = [0]
    for k in call_counts:
        call_offsets.append(call_offsets[-1] + k)
    names = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=c, max_size=c))
    cols = dict(
        group=group,
        outcome=outcome,
        step_offsets=offsets,
        kind=kind,
        reward=reward,
        state=state,
        call_offsets=call_offsets,
        call_ok=draw(st.lists(st.sampled_from([1, 0, -1]), min_size=c, max_size=c)),
        tree=tree,
        texts=Texts.create(n, len(dense), s, c, call_name=names, call_arguments=["{}"] * c),
    )
    if tokens:
        t_len = 40
        mask = torch.zeros(n, t_len, dtype=torch.bool)
        starts, ends, cstarts, cends = [], [], [], []
        for i in range(n):
            pos = draw(st.integers(0, 2))
            for sidx in range(offsets[i], offsets[i + 1]):
                ncall = call_counts[sidx]
                length = 2 * ncall + draw(st.integers(1, 2))
                starts.append(pos)
                ends.append(pos + length)
                for k in range(ncall):
                    cstarts.append(pos + 1 + 2 * k)
                    cends.append(pos + 2 + 2 * k)
                mask[i, pos : pos + length] = True
                pos += length + draw(st.integers(0, 2))
        cols.update(
            response_mask=mask,
            step_token_start=starts,
            step_token_end=ends,
            call_token_start=cstarts,
            call_token_end=cends,
        )
    return Rollouts(**cols)
