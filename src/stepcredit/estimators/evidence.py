"""Call evidence: a tool call's credit from every label-free clue the batch holds about it, with the
clues' reliabilities estimated from the batch itself (EM) instead of fixed a priori.

``call_consensus`` weighs witnesses — the other runs of the task and whether they made the call — with
four fixed rates. Those rates assume mistakes are idiosyncratic; in training they are not (a group is
G samples of *one* policy, which repeats its mistakes), so a wrong call made by several failed runs
looks like consensus. Here the same naive-Bayes model has its rates fitted by EM on the batch, pooled
over all tasks, and two more clues join the witnesses:

* **grounding**: whether every argument value of the call (strings, numbers) appears in what the agent
  had seen before the call — the prompt, earlier tool results and observations. Invented ids, names,
  dates and off-by-some operands are the commonest wrong calls; correct calls are almost always
  grounded. How much an ungrounded argument says is itself fitted (an agent that computes values,
  e.g. a total price, makes correct ungrounded calls, and EM learns that);
* **tool errors**: whether the tool returned an error (``call_ok``), likewise fitted;
* **context**, where no run of a task succeeded: a classifier of where the argument values came from
  (``_context``), trained on the batch's mixed tasks.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from stepcredit.core import TOOL_ERROR, TOOL_UNKNOWN, Rollouts, segments
from stepcredit.core.credit import Credit
from stepcredit.core.registry import Count, NonNegative, register
from stepcredit.estimators._context import call_sources, context_features, fit_logistic
from stepcredit.estimators.tool import CallIdentity, call_keys
from stepcredit.views import argument_leaves, seen_before_steps

__all__ = ["call_evidence", "evidence_rates", "grounded_calls"]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _seen(value: Any, text: str, numbers: set[str]) -> bool:
    if value is None or isinstance(value, bool) or value == "":
        return True
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return False
        forms = {repr(value)}
        if isinstance(value, float) and value.is_integer():
            forms.add(str(int(value)))
        if isinstance(value, int):
            forms.add(f"{value}.0")
        return bool(forms & numbers)
    if isinstance(value, str):
        return value.casefold() in text
    return False


def grounded_calls(rollouts: Rollouts) -> Tensor:
    """``[C]`` bool: does every argument value of the call appear in what the agent had seen before it
    (``seen_before_steps``: the prompt, earlier tool results and observations; strings as
    case-insensitive substrings, numbers as whole numbers in the text)? ``None``, booleans and empty
    strings count as seen; arguments that are not JSON, or nested past ``MAX_ARGUMENT_DEPTH``, as
    unseen. Host-side text work, one pass over the calls."""
    r = rollouts
    seen = seen_before_steps(r)
    arguments = r.texts.call_arguments.to_pylist()
    coff = r.call_offsets.tolist()
    out = [False] * r.num_calls
    for s in range(r.num_steps):
        if coff[s + 1] == coff[s]:
            continue
        text = seen[s]
        numbers = set(_NUMBER.findall(text))
        for c in range(coff[s], coff[s + 1]):
            try:
                value = json.loads(arguments[c])
            except (ValueError, RecursionError):
                continue
            out[c] = all(_seen(v, text, numbers) for _, v in argument_leaves(value))
    return torch.tensor(out, dtype=torch.bool, device=r.device)


def _logit(p: Tensor) -> Tensor:
    return torch.log(p) - torch.log1p(-p)


@register("credit")
def call_evidence(
    rollouts: Rollouts,
    *,
    identity: CallIdentity = "effect",
    repeats: Literal["apart", "together"] = "apart",
    grounding: bool = True,
    tool_errors: bool = True,
    failure_witnesses: bool = True,
    context: bool = True,
    data_flow: bool = True,
    iterations: Count = 50,
    prior_strength: NonNegative = 2.0,
    success_threshold: float = 1.0,
    center: Literal["group", "none"] = "group",
    combine: Literal["replace", "add"] = "replace",
    tasks: Literal["all", "mixed"] = "all",
    no_success_baseline: Literal["group", "batch"] = "group",
    norm: Literal["mean", "std"] = "mean",
    eps: float = 1e-6,
) -> Credit:
    """Call evidence (stepcredit's own; label-free): the posterior that a tool call is correct, from
    the other runs of its task, its arguments' grounding and its tool's errors, with every clue's
    reliability fitted on the batch by EM — and, in tasks where no run succeeded, from the context its
    argument values came from, read by a classifier trained on the batch's mixed tasks; centred within
    the task.

    A call is its key within the task: with ``identity="effect"`` (default) calls of one tool with the
    same argument values that returned the same result are one call (``add(4, 18)`` and ``add(18, 4)``),
    as are calls with the same canonical arguments; ``"arguments"``: the exact ``(tool name, canonical
    arguments)`` (see ``tool.call_keys``). With ``repeats="apart"`` (default) the n-th time a trajectory
    makes the same call is a call of its own (the key and n): booking a flight a second time is not the
    first booking again, and a success that booked it once witnesses the first, not the repeat; the
    rates below are fitted on first occurrences and score the repeats too. ``"together"``: every
    occurrence is the one call, whose clues are read at its first occurrence. A *subject* is one
    trajectory that made the call, with latent status z ∈ {correct, wrong}. Its clues, given z, are
    independent (naive Bayes):

        witnesses   every *other* run j of the task, by its outcome o_j ∈ {success, failure}:
                    P(j made the call | z, o_j) = θ_{z,o}
        grounding   P(an argument was never seen before the call | z) = γ_z      (``grounding``)
        tool error  P(the tool returned an error | z) = τ_z                     (``tool_errors``)
        prior       P(z = correct) = π

    EM over the subjects of the *mixed* tasks (some runs succeeded, some failed; pooled across tasks;
    first occurrences) fits π, θ_{correct,success}, θ_{·,failure}, γ, τ; each rate has a Beta prior of
    ``prior_strength`` pseudo-counts centred on ``call_consensus``'s a-priori values (θ: 0.9 / 0.05 /
    0.5 / 0.1; γ: 0.02 / 0.5; τ: 0.05 / 0.3; π 0.5); θ_{wrong,success} stays at 0.05 (a successful run
    rarely makes a wrong call — the ordering that names the classes). In a task without a successful run
    (``context``) the success witnesses, grounding and tool errors are replaced by a logistic
    classifier's logit:

        context     features of where each argument value last appeared in what the agent had read
                    (tokens around it, between two values; whether two values stand next to each
                    other anywhere, and with what between — also in the question, where a value
                    read from an earlier call's result stands for the part of the question that
                    call's values came from; unseen; the tool's error) and, for a value
                    picked from a record of a tool result (alone or in a list), its other fields
                    (a text field's value and whether the question uses it; whether a number or date
                    is the list's maximum or minimum, alone and with each word of the question), and
                    the numbers of the call and of that record (a mapping read at the key another
                    argument names) against the numbers of the request the call serves, see
                    ``_context``; trained on the mixed tasks' subjects with target "a successful run
                    made this call", so it learns from the batch which contexts wrong calls come from
                    (``mul`` on two numbers written ``6 + 14``, or on a sum and a number the
                    question joins with ``+``; an order id listed as cancelled; not
                    the latest date when the question says "most recent"). With ``data_flow``, a
                    training call that read an argument value from the result of a call no successful
                    run made is left out: it could not be made by a success whatever its merit (the
                    products of a wrong order), and it looks like the correct calls downstream of
                    correct ones

    plus the failure witnesses. Then, per subject,

        v = P(correct | clues) − P(wrong | clues) = tanh(logit / 2) ∈ (−1, 1)
        A(call) = v − mean of v over the task's first occurrences   (``center="group"``; "none": v;
                  with repeats together, over all its calls)

    Tokens of a call get A(call) (``combine="replace"``) or norm_g(R) + A(call) (``"add"``: the outcome
    advantage re-ranked within the trajectory, so a successful run's calls keep GRPO's push); a
    tool-call step the mean over its calls; every other step the trajectory's outcome advantage
    norm_g(R) (mean-centred by default). ``tasks="mixed"`` gives call credit only in tasks with outcome
    contrast (some runs succeeded, some failed); calls of all-fail / all-success tasks keep the outcome
    advantage (0 there), as GRPO does. ``no_success_baseline="batch"``: in tasks where no run succeeded
    the outcome advantage is R − mean of R over the batch instead of GRPO's 0, so their non-call steps
    (final answers, messages) are pushed down like any failure against the policy's average — in
    training, call credit that pushes wrong calls down otherwise leaks probability into exactly those
    unpushed actions (README, "Call credit in training").

    Assumptions and where it is biased:

    1. A call is identified by its tool, argument values and result (``identity``): two orders of a
       commutative operation are one call, but a call written with other values is another call, and
       two calls that differ only in which parameter holds which value *and* return the same result
       are taken for one (rare where the order matters: the results then differ). With ``repeats``
       apart, a call a run repeats is, from its second time on, another call, witnessed by the runs
       that made it as often: a repeat needed by the task (the same sum twice) is credited where the
       successes repeat it too, and a retry of an identical call after a passing tool error is a
       repeat like any other.
    2. Clues are independent given z, and witnesses are exchangeable: the runs of one policy are not
       (they share a mode). Rates fitted on the batch absorb how often *this* policy repeats a mistake
       in failed runs (θ_{wrong,failure}), which is what fixed rates got wrong; the dependence itself is
       not modelled.
    3. The trajectory's own outcome is not a clue for its own calls (so a correct call in a failed run
       can be credited); success witnesses carry most of the weight: a successful run rarely makes a
       wrong call (θ_{wrong,success} small), so the call of any successful run is credited, and a call
       that successes avoid is blamed — softened by θ_{correct,success} < 1 where tasks have several
       solutions.
    4. Where every run of a task failed and a mistake is grounded and repeated, no counting clue tells
       it from the correct calls around it (every run that made either failed), and the failure
       witnesses mislead in the systematic case (fitted where the failed runs are those that made the
       mistake, they say "made by more failed runs → wrong", while in an all-fail task the shared prefix
       is made by all). The context classifier is what separates such calls; it assumes the batch's
       mixed tasks show the same kinds of mistakes in the same kinds of context (the same task family)
       and it reads text near the values, the fields of the record a value was picked from and one
       comparison of a number with each number of the question lines the call is about — the lines where
       one of its values, or the call it was read from, stands alone (the price of the cabin the call
       books against the budget; the bags against the bags asked for; also the parts of a date on those
       lines, and a number argument against a record it merely equals) — a mistake that needs more
       arithmetic (a fee from an allowance) stays hard. Its target, "a successful run made this call",
       is 0 for a correct call that the successes made otherwise (another valid flight or payment): on
       the booking desk the writes inside all-fail tasks rank at a within-tool AUROC of 0.7–0.8 (trained
       on the *true* labels of the mixed tasks, a diagnostic, it does no better), and four times as many
       tasks per batch do not raise the figures. With no mixed task in the batch there is nothing to
       train it on and the counting clues are used throughout. ``stepcredit audit --breakdown`` shows
       the figures per group type.
    5. Grounding compares text: an argument the agent computed correctly (a sum, a date offset) is
       "unseen"; EM lowers the clue's weight to what the batch supports. Numbers match as whole
       numbers, strings as case-insensitive substrings.
    6. The classifier (features hashed into 2^16 buckets, L2 3e-4, L-BFGS in float64 to the optimum)
       is deterministic and refitted on every batch: in training its cost is part of the estimator's
       (about 1–2 s for 512 trajectories on 2 CPU cores, against 0.05–0.1 s without ``context``).
    7. ``data_flow`` finds where a value was read as the latest earlier call of the trajectory whose
       result holds it (the same text match as grounding); a value that occurs in several results is
       attributed to the latest.
    8. ``center="group"`` makes the call credit of a task sum to zero over its calls' first
       occurrences, so it is an advantage (no push toward making more first calls); a repeat is
       credited against the same baseline and not counted in it, so a run caught in a loop of repeated
       calls (hundreds of them in the tau2 logs) does not drag the baseline down and lift every other
       call of its task. That leaves a push on repeats outside the zero sum: down for those the
       successes do not make (against loops), up for those they make as often. With "none" every
       credited call is raised by the task's average belief.
       Without tool calls (and the default baseline) this is ``grpo`` with ``norm``.
    """
    r = rollouts
    adv = segments.group_normalize(r.outcome, r.group, r.num_groups, norm=norm, eps=eps)
    if no_success_baseline == "batch":
        wins, _ = segments.group_wins(r.outcome >= success_threshold, r.group, r.num_groups)
        adv = torch.where((wins == 0)[r.group], r.outcome - r.outcome.mean(), adv)
    if r.num_calls == 0:
        return Credit(adv)
    fit = _fit(r, identity, repeats, grounding, tool_errors, failure_witnesses, int(iterations), prior_strength,
               success_threshold, context, data_flow)
    call_traj = r.call_traj
    value = torch.tanh(fit.logit / 2)[fit.pair_of_call].to(r.outcome.dtype)  # per call occurrence
    if center == "group":  # the baseline: the mean over the task's first occurrences
        call_group = r.group[call_traj]
        first = fit.first_time
        value = value - segments.segment_mean(value[first], call_group[first], r.num_groups)[call_group]
    if tasks == "mixed":  # call credit only where the task's outcomes differ; elsewhere the outcome's
        outcome_part = adv[call_traj] if combine == "replace" else torch.zeros_like(value)
        value = torch.where(fit.contrast[r.group[call_traj]], value, outcome_part)
    step_value = segments.segment_mean(value, r.call_step, r.num_steps)
    has_calls = r.calls_per_step > 0
    keep = adv[r.step_traj] if combine == "replace" else torch.zeros_like(step_value)
    step = torch.where(has_calls, step_value - keep, torch.zeros_like(step_value))
    return Credit(adv, step=step, call=value - step_value[r.call_step])


def evidence_rates(
    rollouts: Rollouts,
    *,
    identity: CallIdentity = "effect",
    repeats: Literal["apart", "together"] = "apart",
    grounding: bool = True,
    tool_errors: bool = True,
    iterations: int = 50,
    prior_strength: float = 2.0,
    success_threshold: float = 1.0,
) -> dict[str, float]:
    """The rates ``call_evidence`` fits on ``rollouts`` (π, θ_{cs, ws, cf, wf}, γ_{c, w}, τ_{c, w} under
    the keys ``pi cs ws cf wf gc gw tc tw``), to see what the batch says about its policy."""
    if rollouts.num_calls == 0:
        return dict(_PRIOR)
    fit = _fit(rollouts, identity, repeats, grounding, tool_errors, True, iterations, prior_strength,
               success_threshold, context=False, data_flow=False)
    return {name: float(v) for name, v in fit.rates.items()}


_PRIOR = {"pi": 0.5, "cs": 0.9, "ws": 0.05, "cf": 0.5, "wf": 0.1, "gc": 0.02, "gw": 0.5, "tc": 0.05, "tw": 0.3}


@dataclass(frozen=True)
class _Fit:
    logit: Tensor  # [P] logit P(correct) per subject (a call key and one trajectory that made it)
    pair_of_call: Tensor  # [C] each call's subject
    contrast: Tensor  # [G] bool: the task has a success and a failure
    rates: dict[str, Tensor]
    first_time: Tensor  # [C] bool: the call's first occurrence in its trajectory (all, with repeats together)


def _fit(
    r: Rollouts,
    identity: CallIdentity,
    repeats: Literal["apart", "together"],
    grounding: bool,
    tool_errors: bool,
    failure_witnesses: bool,
    iterations: int,
    prior_strength: float,
    success_threshold: float,
    context: bool,
    data_flow: bool,
) -> _Fit:
    """The subjects' clues, the EM fit of the rates on the mixed tasks, and every subject's posterior
    (with ``context``, the classifier's in the tasks without a success)."""
    f64 = torch.float64
    base, k_base = call_keys(r, identity)
    keys, k = base, k_base
    rank = torch.zeros_like(keys)
    if repeats == "apart" and r.num_calls:  # the n-th identical call of a trajectory: key and n
        made, num_made = segments.unique_pairs(base, r.call_traj, a_size=k_base)
        rank = segments.occurrence_rank(made, num_made)
        keys, k = segments.unique_pairs(base, rank, a_size=k_base)
    pair_of_call, num_pairs = segments.unique_pairs(keys, r.call_traj, a_size=k)
    pair_key, pair_traj = segments.pair_members(pair_of_call, num_pairs, keys, r.call_traj)
    success = r.outcome >= success_threshold
    # witnesses of each subject: the other trajectories of its task, by outcome
    has_s = segments.segment_sum(success[pair_traj].to(f64), pair_key, k)
    has_f = segments.segment_sum((~success[pair_traj]).to(f64), pair_key, k)
    wins, size = segments.group_wins(success, r.group, r.num_groups)
    grp_s, grp_f = wins.to(f64), (size - wins).to(f64)
    own_s = success[pair_traj].to(f64)
    g = r.group[pair_traj]
    w_has_s, w_has_f = has_s[pair_key] - own_s, has_f[pair_key] - (1 - own_s)
    w_lacks_s, w_lacks_f = grp_s[g] - own_s - w_has_s, grp_f[g] - (1 - own_s) - w_has_f

    # per-subject clues from its own call: with repeats="together", a subject that made the call
    # several times uses the first occurrence (call order)
    first = segments.segment_first(pair_of_call, num_pairs)
    unseen = (~grounded_calls(r))[first].to(f64) if grounding else None
    errored = (r.call_ok[first] == TOOL_ERROR).to(f64) if tool_errors else None
    known_error = (r.call_ok[first] != TOOL_UNKNOWN) if tool_errors else None

    rate = {name: torch.tensor(v, dtype=f64, device=r.device) for name, v in _PRIOR.items()}
    a = prior_strength

    def loglik(p_correct: Tensor, p_wrong: Tensor, hits: Tensor, misses: Tensor) -> Tensor:
        return hits * (torch.log(p_correct) - torch.log(p_wrong)) + misses * (
            torch.log1p(-p_correct) - torch.log1p(-p_wrong)
        )

    def posterior_logit(with_failures: bool) -> Tensor:
        out = _logit(rate["pi"]) + loglik(rate["cs"], rate["ws"], w_has_s, w_lacks_s)
        if with_failures:
            out = out + loglik(rate["cf"], rate["wf"], w_has_f, w_lacks_f)
        if unseen is not None:
            out = out + loglik(rate["gc"], rate["gw"], unseen, 1 - unseen)
        if errored is not None and known_error is not None:
            out = out + torch.where(known_error, loglik(rate["tc"], rate["tw"], errored, 1 - errored),
                                    torch.zeros_like(errored))
        return out

    def update(q: Tensor, hits: Tensor, total: Tensor, name: str) -> Tensor:
        return ((q * hits).sum() + a * _PRIOR[name]) / ((q * total).sum() + a)

    # The rates are fitted on the subjects of *mixed* tasks (some runs succeeded, some failed), whose
    # status the success witnesses nearly settle: there, how often failed runs make correct and wrong
    # calls (θ_{·,failure}) is measured rather than assumed — repeated mistakes included. Repeats within
    # a run (repeats="apart") are left out of the fit: a loop of hundreds would set π for every call.
    contrast = (grp_s > 0) & (grp_f > 0)
    mixed = contrast[g]
    fitted = mixed & (rank[first] == 0)
    if bool(fitted.any()):
        hs, ls, hf, lf = w_has_s[fitted], w_lacks_s[fitted], w_has_f[fitted], w_lacks_f[fitted]
        for _ in range(iterations):
            q = torch.sigmoid(posterior_logit(with_failures=False))[fitted]  # P(correct) per subject
            p = 1 - q
            new = {"pi": (q.sum() + a * _PRIOR["pi"]) / (q.numel() + a)}
            new["cs"] = update(q, hs, hs + ls, "cs")
            new["cf"] = update(q, hf, hf + lf, "cf")
            new["wf"] = update(p, hf, hf + lf, "wf")
            if unseen is not None:
                u, ones = unseen[fitted], torch.ones_like(unseen[fitted])
                new["gc"], new["gw"] = update(q, u, ones, "gc"), update(p, u, ones, "gw")
            if errored is not None and known_error is not None:
                e, known = errored[fitted], known_error[fitted].to(f64)
                new["tc"], new["tw"] = update(q, e * known, known, "tc"), update(p, e * known, known, "tw")
            rate.update({n: v.clamp(1e-4, 1 - 1e-4) for n, v in new.items()})
    logit = posterior_logit(failure_witnesses)
    no_success = (grp_s == 0)[g]
    if context and bool(mixed.any()) and bool(no_success.any()):
        # Tasks without a successful run: a classifier of the calls' context, trained on the mixed
        # tasks' subjects (target: a successful run made the call), stands in for the success
        # witnesses there are none of, and for grounding and tool errors (among its features)
        flat, offsets = context_features(r)
        is_first = torch.zeros(r.num_calls, dtype=torch.bool, device=r.device)
        is_first[first] = True
        made_by_success = (has_s[keys] > 0).to(f64)
        # first occurrences only: a loop of repeats would otherwise fill the training set
        train = is_first & (rank == 0) & contrast[r.group[r.call_traj]]
        if data_flow:  # a call that read its values from a call no successful run made cannot be one
            # (that call as such: a re-read of what a success read once is still a success's read)
            base_made = segments.segment_sum(success[r.call_traj].to(f64), base, k_base) > 0
            call, source = call_sources(r)
            downstream = torch.zeros(r.num_calls, dtype=torch.bool, device=r.device)
            downstream[call[~base_made[base[source]]]] = True
            train = train & ~downstream
        scores = fit_logistic(flat, offsets, train, made_by_success)
        witnesses = loglik(rate["cf"], rate["wf"], w_has_f, w_lacks_f) if failure_witnesses else 0.0
        logit = torch.where(no_success, scores[first].to(f64) + witnesses, logit)
    return _Fit(logit, pair_of_call, contrast, rate, rank == 0)
