"""Per-turn credit (verl RFC #7244): ``per_turn`` (leave-one-out reward-to-go, unbiased) against
``per_turn_index`` (per-index normalisation summed to the rollout's own last turn, biased).

The bias is shown exactly: the expected policy-gradient estimate E[1/G Σ_i Σ_k A_{i,k} ∂_θ log π(a_{i,k})]
of a small stop-or-search policy, by enumerating every joint outcome of a group with its probability
(all groups of the enumeration in one batch), compared with the true dJ/dθ from the returns."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stepcredit import Recipe, Rollouts
from stepcredit.core import StepKind, segments
from stepcredit.core.credit import Credit
from stepcredit.estimators.outcome import rloo
from stepcredit.estimators.turn import per_turn, per_turn_index
from tests.support.batches import structured

ANSWER, CALL = int(StepKind.ANSWER), int(StepKind.TOOL_CALL)


# ----------------------------------------------------------------------------- the RFC's example
def worked_example(search_outcome: float = 0.8) -> Rollouts:
    """G = 4 (rfc.md §5): t0, t1 ANSWER at once (T=1, R=1.0); t2, t3 SEARCH (turn-1 tool reward 0.2),
    then answer (T=2, R=search_outcome). With 0.8 every rollout's return is 1.0."""
    return Rollouts(
        group=[0, 0, 0, 0],
        outcome=[1.0, 1.0, search_outcome, search_outcome],
        step_offsets=[0, 1, 2, 4, 6],
        kind=[ANSWER, ANSWER, CALL, ANSWER, CALL, ANSWER],
        reward=[0.0, 0.0, 0.2, 0.0, 0.2, 0.0],
    )


def test_worked_example_equal_returns():
    r = worked_example()
    credit = per_turn(r)
    assert torch.equal(credit.per_step(r), torch.zeros(6))  # exactly 0: every return is 1.0
    assert torch.equal(credit.trajectory, torch.zeros(4))
    # biased: μ_out = 0.9, μ_1 = mean of the searchers' tool rewards = 0.2 (the answerers have none)
    # ANSWER: 1 − 0.9 = +0.1; SEARCH turn 1: (0.2 − 0.2) + (0.8 − 0.9) = −0.1, turn 2: 0.8 − 0.9 = −0.1
    got = per_turn_index(r).per_step(r)
    assert got.tolist() == pytest.approx([0.1, 0.1, -0.1, -0.1, -0.1, -0.1], abs=1e-6)


def test_worked_example_search_is_better():
    r = worked_example(0.9)  # SEARCH returns 1.1
    # LOO: ANSWER 1.0 − (1.0 + 1.1 + 1.1)/3; SEARCH turn 1: 1.1 − (1.0 + 1.0 + 1.1)/3; turn 2: 0.9 vs 0.9
    want = [1.0 - 3.2 / 3, 1.0 - 3.2 / 3, 1.1 - 3.1 / 3, 0.0, 1.1 - 3.1 / 3, 0.0]
    assert per_turn(r).per_step(r).tolist() == pytest.approx(want, abs=1e-6)
    # biased: μ_out = 0.95 → ANSWER +0.05, SEARCH −0.05 on both turns: the wrong sign
    got = per_turn_index(r).per_step(r)
    assert got.tolist() == pytest.approx([0.05, 0.05, -0.05, -0.05, -0.05, -0.05], abs=1e-6)


# ----------------------------------------------------------------------------- exact expectations
@dataclass(frozen=True)
class Kind:
    """One kind of rollout of a small policy: its turns' rewards (the last turn's too), outcome,
    probability, and ∂_θ log π of the action taken at each turn."""

    rewards: tuple[float, ...]
    outcome: float
    prob: float
    score: tuple[float, ...]

    @property
    def ret(self) -> float:
        return sum(self.rewards) + self.outcome


def all_groups(kinds: list[Kind], g: int) -> tuple[Rollouts, torch.Tensor, torch.Tensor]:
    """Every joint outcome of a group of ``g`` independent rollouts as one batch (a group per joint
    outcome): ``(rollouts, probability of each group, score of each step)``."""
    group, outcome, offsets, reward, score, probs = [], [], [0], [], [], []
    for gid, joint in enumerate(itertools.product(kinds, repeat=g)):
        probs.append(math.prod(k.prob for k in joint))
        for k in joint:
            group.append(gid)
            outcome.append(k.outcome)
            offsets.append(offsets[-1] + len(k.rewards))
            reward.extend(k.rewards)
            score.extend(k.score)
    r = Rollouts(group=group, outcome=outcome, step_offsets=offsets, reward=reward)
    return r, torch.tensor(probs, dtype=torch.float64), torch.tensor(score, dtype=torch.float64)


def expected_gradient(estimator, kinds: list[Kind], g: int = 4) -> float:
    """E[1/G Σ_i Σ_k A_{i,k} ∂_θ log π(a_{i,k})] over every joint outcome of a group, exactly."""
    r, probs, score = all_groups(kinds, g)
    per_step = estimator(r).per_step(r).double()
    per_group = segments.segment_sum(per_step * score, r.step_group, r.num_groups) / g
    return float((probs * per_group).sum())


def no_baseline(r: Rollouts) -> Credit:
    """REINFORCE with reward-to-go and no baseline: the harness's check (its expectation is dJ/dθ)."""
    tail = segments.reverse_discounted_cumsum(r.reward.double(), r.step_offsets, 1.0)
    return Credit(torch.zeros_like(r.outcome), step=tail + r.outcome.double()[r.step_traj])


def stop_or_search(p: float, search_outcome: float) -> list[Kind]:
    """Turn 1: ANSWER with probability p (T=1, R=1.0), else SEARCH (tool reward 0.2), then answer at
    turn 2 with probability 1 (score 0). θ = p: ∂_p log π = 1/p for ANSWER, −1/(1−p) for SEARCH."""
    return [
        Kind((0.0,), 1.0, p, (1 / p,)),
        Kind((0.2, 0.0), search_outcome, 1 - p, (-1 / (1 - p), 0.0)),
    ]


@pytest.mark.parametrize("p", [0.3, 0.7])
def test_bias_when_returns_are_equal(p):
    kinds = stop_or_search(p, 0.8)
    true = kinds[0].ret - kinds[1].ret  # J = p·ret_ANSWER + (1 − p)·ret_SEARCH
    assert true == pytest.approx(0.0, abs=1e-12)
    assert expected_gradient(no_baseline, kinds) == pytest.approx(true, abs=1e-6)
    assert expected_gradient(per_turn, kinds) == pytest.approx(0.0, abs=1e-6)
    # the hidden −E[R_intermediate] on "take another turn": (G − 1)/G · mean tool reward 0.2
    g = 4
    assert expected_gradient(per_turn_index, kinds, g) == pytest.approx((g - 1) / g * 0.2, abs=1e-6)  # 0.15


@pytest.mark.parametrize("p", [0.3, 0.7])
def test_bias_flips_the_sign(p):
    kinds = stop_or_search(p, 0.9)  # SEARCH returns 1.1: the policy should search more
    true = kinds[0].ret - kinds[1].ret
    assert true == pytest.approx(-0.1, abs=1e-6)
    assert expected_gradient(no_baseline, kinds) == pytest.approx(true, abs=1e-6)
    # unbiased, not merely the right sign: the LOO baseline makes the expectation the true gradient
    assert expected_gradient(per_turn, kinds) == pytest.approx(-0.1, abs=1e-6)
    assert expected_gradient(per_turn, kinds, g=2) == pytest.approx(-0.1, abs=1e-6)
    biased = expected_gradient(per_turn_index, kinds)
    assert biased > 0 and biased == pytest.approx(3 / 4 * (-0.1 + 0.2), abs=1e-6)  # +0.075: toward stopping


def two_decisions(p: float, q: float, *, wrt: str) -> list[Kind]:
    """Turn 1: ANSWER (p, R=1.0) or SEARCH (reward 0.2); turn 2: ANSWER (q, R=0.8) or SEARCH again
    (reward 0.2), then answer at turn 3 (R=0.9). Returns 1.0, 1.0, 1.3. Scores for θ = p or θ = q."""
    if wrt == "p":
        s_a, s_sa, s_ssa = (1 / p,), (-1 / (1 - p), 0.0), (-1 / (1 - p), 0.0, 0.0)
    else:
        s_a, s_sa, s_ssa = (0.0,), (0.0, 1 / q), (0.0, -1 / (1 - q), 0.0)
    return [
        Kind((0.0,), 1.0, p, s_a),
        Kind((0.2, 0.0), 0.8, (1 - p) * q, s_sa),
        Kind((0.2, 0.2, 0.0), 0.9, (1 - p) * (1 - q), s_ssa),
    ]


@pytest.mark.parametrize(("p", "q"), [(0.3, 0.6), (0.6, 0.2)])
def test_late_turns_and_the_singleton_convention(p, q):
    """The turn-2 decision is only taken by rollouts that searched at turn 1. ``singleton="raw"`` is
    exactly unbiased for both parameters; ``"zero"`` drops the term of a rollout that reached turn 2
    alone, which scales turn 2's expected term by P(another of the G − 1 rollouts searched) =
    1 − p^(G−1): same sign, smaller; turn 1 (reached by all) stays exact."""
    g = 3
    true_p = 1.0 - (1.0 * q + 1.3 * (1 - q))  # J = p·1.0 + (1 − p)(q·1.0 + (1 − q)·1.3)
    true_q = (1 - p) * (1.0 - 1.3)
    kinds_p, kinds_q = two_decisions(p, q, wrt="p"), two_decisions(p, q, wrt="q")
    assert expected_gradient(no_baseline, kinds_p, g) == pytest.approx(true_p, abs=1e-6)
    assert expected_gradient(no_baseline, kinds_q, g) == pytest.approx(true_q, abs=1e-6)
    raw = lambda r: per_turn(r, singleton="raw")  # noqa: E731
    assert expected_gradient(raw, kinds_p, g) == pytest.approx(true_p, abs=1e-6)
    assert expected_gradient(raw, kinds_q, g) == pytest.approx(true_q, abs=1e-6)
    assert expected_gradient(per_turn, kinds_q, g) == pytest.approx(true_q, abs=1e-6)  # the default is "raw"
    zero = lambda r: per_turn(r, singleton="zero")  # noqa: E731
    assert expected_gradient(zero, kinds_p, g) == pytest.approx(true_p, abs=1e-6)
    assert expected_gradient(zero, kinds_q, g) == pytest.approx((1 - p ** (g - 1)) * true_q, abs=1e-6)
    # the biased estimator misses both
    assert expected_gradient(per_turn_index, kinds_p, g) != pytest.approx(true_p, abs=1e-3)
    assert expected_gradient(per_turn_index, kinds_q, g) != pytest.approx(true_q, abs=1e-3)


# ----------------------------------------------------------------------------- loop oracles
def _turns(r: Rollouts):
    off, group, outcome, reward = r.step_offsets.tolist(), r.group.tolist(), r.outcome.tolist(), r.reward.tolist()
    return [(group[i], outcome[i], reward[off[i] : off[i + 1]]) for i in range(len(group))]


def per_turn_loop(r: Rollouts, singleton: str = "zero") -> list[float]:
    trajs = _turns(r)
    ret = [[sum(rw[k:]) + out for k in range(len(rw))] for _, out, rw in trajs]
    out = []
    for i, (g, _, rw) in enumerate(trajs):
        for k in range(len(rw)):
            others = [ret[j][k] for j, (h, _, rj) in enumerate(trajs) if j != i and h == g and len(rj) > k]
            if others:
                out.append(ret[i][k] - sum(others) / len(others))
            else:
                out.append(0.0 if singleton == "zero" else ret[i][k])
    return out


def per_turn_index_loop(r: Rollouts) -> list[float]:
    trajs = _turns(r)
    final = {i: out + rw[-1] if rw else out for i, (_, out, rw) in enumerate(trajs)}
    out = []
    for i, (g, _, rw) in enumerate(trajs):
        members = [j for j, (h, _, _) in enumerate(trajs) if h == g]
        a_out = final[i] - sum(final[j] for j in members) / len(members)
        for k in range(len(rw)):
            tail = 0.0
            for t in range(k, len(rw) - 1):
                at_t = [trajs[j][2][t] for j in members if len(trajs[j][2]) > t + 1]
                tail += rw[t] - sum(at_t) / len(at_t)
            out.append(a_out + tail)
    return out


@settings(max_examples=80, deadline=None)
@given(structured(tokens=False))
def test_equals_loop_oracles(r):
    assert per_turn(r, singleton="zero").per_step(r).tolist() == pytest.approx(per_turn_loop(r), abs=1e-5)
    assert per_turn(r, singleton="raw").per_step(r).tolist() == pytest.approx(per_turn_loop(r, "raw"), abs=1e-5)
    assert per_turn_index(r).per_step(r).tolist() == pytest.approx(per_turn_index_loop(r), abs=1e-5)


# ----------------------------------------------------------------------------- reduction to RLOO
@st.composite
def single_turn(draw, min_group: int = 1):
    sizes = draw(st.lists(st.integers(min_group, 5), min_size=1, max_size=5))
    n = sum(sizes)
    values = st.floats(-10, 10, width=32)
    return Rollouts(
        group=[g for g, k in enumerate(sizes) for _ in range(k)],
        outcome=draw(st.lists(values, min_size=n, max_size=n)),
        step_offsets=list(range(n + 1)),
        reward=draw(st.lists(values, min_size=n, max_size=n)),
    )


@settings(max_examples=80, deadline=None)
@given(single_turn())
def test_single_turn_is_rloo(r):
    """T_i = 1 for all: A_i = RLOO on R_i + r_{i,1}; groups of one: 0 ("zero") or rloo's raw value."""
    ret = Rollouts(group=r.group, outcome=r.outcome + r.reward, step_offsets=r.step_offsets)
    want = rloo(ret).per_step(ret)
    lone = (segments.segment_count(r.group, r.num_groups) == 1)[r.group]
    assert torch.allclose(per_turn(r, singleton="raw").per_step(r), want, atol=1e-5)
    zero = per_turn(r, singleton="zero").per_step(r)
    assert torch.allclose(zero, torch.where(lone, torch.zeros_like(want), want), atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(single_turn(min_group=2))
def test_single_turn_outcome_only_is_rloo(r):
    plain = Rollouts(group=r.group, outcome=r.outcome, step_offsets=r.step_offsets)
    assert torch.allclose(per_turn(plain).per_step(plain), rloo(plain).per_step(plain), atol=1e-5)


# ----------------------------------------------------------------------------- properties
ESTIMATORS = {
    "per_turn": per_turn,  # singleton "raw" (exactly unbiased)
    "per_turn_zero": lambda r: per_turn(r, singleton="zero"),
    "per_turn_index": per_turn_index,
}


@settings(max_examples=60, deadline=None)
@given(structured())
def test_finite_with_float32_output(r):
    for name, est in ESTIMATORS.items():
        credit = est(r).check(r, name)
        assert credit.trajectory.dtype == torch.float32 and credit.step is not None, name
        assert credit.step.dtype == torch.float32, name
        assert torch.isfinite(credit.to_tokens(r)).all(), name


@settings(max_examples=40, deadline=None)
@given(structured(tokens=False, huge=True))
def test_finite_on_huge_outcomes(r):
    for name, est in ESTIMATORS.items():
        assert torch.isfinite(est(r).check(r, name).per_step(r)).all(), name


# permutation equivariance, finite outputs and masked tokens: tests/estimators/test_properties.py


@settings(max_examples=60, deadline=None)
@given(structured(tokens=False))
def test_group_of_one_gets_zero(r):
    lone = (segments.segment_count(r.group, r.num_groups) == 1)[r.step_group]
    for name in ("per_turn_zero", "per_turn_index"):
        got = ESTIMATORS[name](r).per_step(r)
        assert torch.equal(got[lone], torch.zeros(int(lone.sum()))), name


@settings(max_examples=60, deadline=None)
@given(structured(tokens=False), st.floats(-100, 100, width=32))
def test_constant_outcome_shift_changes_nothing(r, c):
    shifted = Rollouts(group=r.group, outcome=r.outcome + c, step_offsets=r.step_offsets, reward=r.reward, kind=r.kind)
    for name in ("per_turn_zero", "per_turn_index"):
        est = ESTIMATORS[name]
        assert torch.allclose(est(r).per_step(r), est(shifted).per_step(shifted), atol=1e-4), name


def test_empty_and_stepless_trajectories():
    r = Rollouts(group=[0, 0, 0], outcome=[1.0, 0.0, 0.5], step_offsets=[0, 0, 2, 3], reward=[0.5, 0.0, 0.0])
    # t0 has no steps: it reaches no turn. Turn 1: t1 (G=0.5) vs t2 (G=0.5) → 0; turn 2: t1 alone → 0
    assert per_turn(r, singleton="zero").per_step(r).tolist() == [0.0, 0.0, 0.0]
    assert per_turn(r).per_step(r).tolist() == [0.0, 0.0, 0.0]  # "raw": t1 alone at turn 2, G = 0
    # per_turn_index: R̃ = (1.0, 0.0, 0.5), mean 0.5; μ_1 over {t1} (t2 stops at turn 1) = 0.5
    assert per_turn_index(r).per_step(r).tolist() == pytest.approx([-0.5, -0.5, 0.0])
    assert per_turn(r.select([0])).per_step(r.select([0])).numel() == 0


# ----------------------------------------------------------------------------- recipes
def test_through_a_recipe():
    r = worked_example(0.9)
    for name, fn in (("per_turn", per_turn), ("per_turn_index", per_turn_index)):
        result = Recipe.from_dict({"credit": [{name: {}}]}).run(r)
        assert torch.equal(result.credit.per_step(r), fn(r).per_step(r)), name
    raw = Recipe.from_dict({"credit": [{"per_turn": {"singleton": "raw"}}]}).run(r)
    assert torch.equal(raw.credit.per_step(r), per_turn(r, singleton="raw").per_step(r))
