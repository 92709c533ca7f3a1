"""A SkillRL-style experience bank: skills distilled from episodes, retrieved into the prompt, evolved.

SkillRL (Xia et al. 2026, "Evolving Agents via Recursive Skill-Augmented Reinforcement Learning",
arXiv:2602.08234; code github.com/aiming-lab/SkillRL) is not a credit-assignment rule: it changes the
*context* the policy conditions on, and the RL stays plain GRPO. This package is its generation side,
beside the rollout engine:

1. **Experience distillation** (SkillRL: a teacher LLM). Successful episodes become compact plan
   templates with their entities abstracted (``[N]``, ``[ID]``, ``[NAME]``, …); failed episodes become
   "mistakes to avoid" lessons ``(trigger, mistake, principle)``. ``Summariser`` is anything mapping
   episodes to skills: ``RuleSummariser`` is *our* deterministic, rule-based stand-in for the teacher,
   with generic rules and each family's own (``stepcredit.envs.teaching``); ``LLMSummariser`` wraps any
   ``Callable[[str], str]`` (a prompt in, JSON text of skills out) and is the SkillRL path proper.
2. **SkillBank** (SkillRL's ``claude_style_skills.json``): general skills, task-specific skills per task
   type and common mistakes, each ``{skill_id, title, principle, when_to_apply}``. Retrieval is SkillRL's
   "template" mode (``SkillsOnlyMemory.retrieve``): the task type is keyword-detected from the prompt
   (``task_type``), and the bank returns every skill of that type plus the first ``top_k`` general
   skills (SkillRL's dynamic ``dyn_*`` general skills always included). The "embedding" mode is not
   implemented.
3. **Recursive evolution** (SkillRL's ``SkillUpdater.analyze_failures``, called after validation):
   for every task type whose success rate is below ``threshold`` (0.4), the failed episodes of that
   type (the last ``last_steps`` = 5 steps of at most ``max_examples`` = 5 of them) are summarised into
   at most ``max_new_skills`` = 3 new skills not already in the bank (``evolve``).
4. ``SkillPrompt``: a gymnasium wrapper that prepends the retrieved skills to the reset observation.

Everything here reads only texts and outcomes — never step labels, ``expert`` / ``mistakes`` actions
or call labels, which are for scripted policies and audits. Every choice is deterministic: the same
episodes give the same bank, byte for byte. Banks are stored as JSON only and validated on load; loading
never executes anything.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium

from stepcredit.core.registry import PositiveInt, Probability
from stepcredit.feedback.base import EnvFactory, Feedback, Setup, Split, Step
from stepcredit.feedback.skills.bank import (
    FORMAT,
    HEADER,
    SEPARATOR,
    Skill,
    SkillBank,
    SkillBankError,
    SkillKind,
    _norm,
    render,
    strip_skills,
)
from stepcredit.feedback.skills.episodes import (
    Episode,
    abstract,
    abstract_action,
    episodes_from_batch,
    success_rates,
    task_type,
)
from stepcredit.feedback.skills.summarise import Lesson, LLMSummariser, RuleSummariser, Summariser

__all__ = [
    "FORMAT",
    "HEADER",
    "SEPARATOR",
    "Episode",
    "LLMSummariser",
    "Lesson",
    "RuleSummariser",
    "Skill",
    "SkillBank",
    "SkillBankError",
    "SkillKind",
    "SkillPrompt",
    "Skills",
    "SkillsOptions",
    "Summariser",
    "abstract",
    "abstract_action",
    "distill",
    "episodes_from_batch",
    "evolve",
    "render",
    "strip_skills",
    "success_rates",
    "task_type",
]


# ---------------------------------------------------------------------------------------------- bank building
def _dedupe(skills: Iterable[Skill]) -> list[Skill]:
    """``skills`` without the later ones whose principle repeats an earlier one of the same kind/type."""
    seen: set[tuple[str, str | None, str]] = set()
    out = []
    for s in skills:
        key = (s.kind, s.task_type, _norm(s.principle))
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def _renumber(skills: Sequence[Skill], prefix: Mapping[str, str]) -> list[Skill]:
    counters: dict[str, int] = {}
    out = []
    for s in skills:
        p = prefix[s.kind]
        counters[p] = counters.get(p, 0) + 1
        out.append(replace(s, skill_id=f"{p}_{counters[p]:03d}"))
    return out


def distill(episodes: Sequence[Episode], summariser: Summariser | None = None, *, max_per_type: int = 6) -> SkillBank:
    """The cold-start bank (SkillRL's experience distillation): ``summariser`` (default
    ``RuleSummariser()``) over every episode, duplicates dropped (same kind, type and principle), at most
    ``max_per_type`` general skills, and at most ``max_per_type`` task skills and ``max_per_type``
    mistakes per task type, in the summariser's order; ids renumbered SkillRL-style (``gen_001``,
    ``tsk_001``, ``err_001``, …, in bank order)."""
    if isinstance(max_per_type, bool) or not isinstance(max_per_type, int) or max_per_type < 0:
        raise ValueError(f"max_per_type must be a non-negative integer, got {max_per_type!r}")
    skills = (summariser or RuleSummariser())(list(episodes))
    kept, counts = [], collections.Counter[tuple[str, str | None]]()
    for s in _dedupe(skills):
        key = (s.kind, s.task_type)
        if counts[key] < max_per_type:
            counts[key] += 1
            kept.append(s)
    bank = SkillBank(tuple(kept))
    return SkillBank(tuple(_renumber(bank.skills, {"general": "gen", "task": "tsk", "mistake": "err"})))


def evolve(
    bank: SkillBank,
    episodes: Sequence[Episode],
    success_rate_by_type: Mapping[str, float],
    *,
    summariser: Summariser | None = None,
    threshold: float = 0.4,
    max_new_skills: int = 3,
    last_steps: int = 5,
    max_examples: int = 5,
) -> tuple[SkillBank, list[Skill]]:
    """SkillRL's recursive evolution: for each task type (sorted) whose success rate is below
    ``threshold``, its failed ``episodes`` — the first ``max_examples``, each cut to its last
    ``last_steps`` steps — are summarised (default ``RuleSummariser()``), and at most ``max_new_skills``
    of the resulting skills whose principle is not yet visible to that type (its general, task, mistake
    and common skills, or a skill just added) join the bank, with SkillRL's dynamic ids ``dyn_NNN``
    (numbered on from the bank's highest). SkillRL asks its teacher once per update and files every new
    skill as general; here each type is summarised on its own and its skills keep their kind and type,
    so they are retrieved for that type. Returns the new bank and the added skills; ``bank`` is not
    changed."""
    for name, value in (("max_new_skills", max_new_skills), ("last_steps", last_steps), ("max_examples", max_examples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "max_new_skills" else 1):
            raise ValueError(
                f"{name} must be a {'non-negative' if name == 'max_new_skills' else 'positive'} integer, got {value!r}"
            )
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    for t, rate in success_rate_by_type.items():
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"the success rate of task type {t!r} must be in [0, 1], got {rate!r}")
    summarise = summariser or RuleSummariser()
    dyn = [int(m.group(1)) for s in bank.skills if (m := re.fullmatch(r"dyn_(\d+)", s.skill_id))]
    next_id = max(dyn, default=0)
    current, added = bank, []
    for t in sorted(success_rate_by_type):
        if success_rate_by_type[t] >= threshold:
            continue
        failed = [e.window(last_steps) for e in episodes if e.task_type == t and not e.success][:max_examples]
        if not failed:
            continue
        seen = {_norm(s.principle) for s in current.visible(t)}
        new: list[Skill] = []
        for s in summarise(failed):
            if len(new) >= max_new_skills:
                break
            if _norm(s.principle) in seen:
                continue
            seen.add(_norm(s.principle))
            next_id += 1
            new.append(replace(s, skill_id=f"dyn_{next_id:03d}"))
        current = current.add(new)
        added += new
    return current, added


# ---------------------------------------------------------------------------------------------- the wrapper
class SkillPrompt(gymnasium.Wrapper[str, Any, str, Any]):
    """Prepends the skills retrieved for the task to the reset observation (SkillRL's prompt
    injection): ``render(bank.retrieve(task_type(obs), top_k)) + SEPARATOR + obs`` (the observation
    alone when nothing is retrieved), with ``info["skills"]`` the skill ids and ``info["task_type"]``
    the detected type. ``step`` is unchanged. Assign ``wrapper.bank`` between episodes to swap banks
    (e.g. after ``evolve``). ``snapshot`` / ``restore`` reach the wrapped ``ToolEnv`` (the rollout engine
    branches through them)."""

    def __init__(self, env: gymnasium.Env[str, Any], bank: SkillBank, top_k: int = 6) -> None:
        super().__init__(env)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer, got {top_k!r}")
        self.bank = bank
        self.top_k = top_k

    @property
    def bank(self) -> SkillBank:
        return self._bank

    @bank.setter
    def bank(self, bank: SkillBank) -> None:
        if not isinstance(bank, SkillBank):
            raise TypeError(f"SkillPrompt.bank must be a SkillBank, got {type(bank).__name__}")
        self._bank = bank

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        t = task_type(obs)
        skills = self._bank.retrieve(t, self.top_k)
        block = render(skills)
        info = {**info, "skills": [s.skill_id for s in skills], "task_type": t}
        return (block + SEPARATOR + obs if block else obs), info

    def snapshot(self) -> Any:
        return self.env.unwrapped.snapshot()  # type: ignore[attr-defined]

    def restore(self, snapshot: Any) -> None:
        self.env.unwrapped.restore(snapshot)  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ in the RL loop
@dataclass(frozen=True)
class SkillsOptions:
    """SkillRL's options (``TrainConfig.skills``): ``top_k`` general skills retrieved into each prompt;
    after each evaluation, task types whose success rate is below ``threshold`` get up to
    ``max_new_skills`` new skills from their failed episodes (the last ``last_steps`` steps of at most
    ``max_examples`` of them)."""

    top_k: PositiveInt = 6
    threshold: Probability = 0.4
    max_new_skills: PositiveInt = 3
    last_steps: PositiveInt = 5
    max_examples: PositiveInt = 5


class Skills(Feedback):
    """SkillRL in the loop. The cold-start bank is distilled (``distill``, the rule summariser) from
    noisy-oracle demonstrations like the warm start's — their texts and outcomes only; the warm start's
    demonstrations and every evaluation carry that initial bank's skills, the training rollouts the
    evolving bank's. After an evaluation the bank evolves from the step's *training* episodes, not the
    held-out ones (SkillRL reads its validation failures): nothing of the test split reaches training."""

    name = "skills"

    def __init__(self, options: SkillsOptions, setup: Setup) -> None:
        self.options, self.setup = options, setup
        self._initial: SkillBank | None = None
        self._bank: SkillBank | None = None

    @property
    def initial(self) -> SkillBank:
        if self._initial is None:
            from stepcredit.generation import NoisyOracle, rollout_chains

            s = self.setup
            demos = rollout_chains(
                s.make_env("train"),
                NoisyOracle(s.demo_error_rate, seed=s.seed),
                range(10**9, 10**9 + max(s.demos, 1)),
                group_size=1,
                seed=s.seed,
            )
            self._initial = distill(episodes_from_batch(demos))
        return self._initial

    @property
    def bank(self) -> SkillBank:
        if self._bank is None:
            self._bank = self.initial
        return self._bank

    def make_env(self, make: EnvFactory, split: Split) -> EnvFactory:
        bank = self.bank if split == "train" else self.initial
        top_k = self.options.top_k
        return lambda: SkillPrompt(make(), bank, top_k=top_k)  # type: ignore[return-value]

    def after_evaluation(self, step: Step) -> dict[str, float]:
        batch = step.batch
        episodes = episodes_from_batch(batch)
        if batch.off_policy is not None:
            episodes = [e for e, off in zip(episodes, batch.off_policy.tolist(), strict=True) if not off]
        o = self.options
        self._bank, added = evolve(
            self.bank,
            episodes,
            success_rates(episodes),
            threshold=o.threshold,
            max_new_skills=o.max_new_skills,
            last_steps=o.last_steps,
            max_examples=o.max_examples,
        )
        return {"skills": float(len(self._bank)), "skills_added": float(len(added))}

    def state(self) -> Any:
        return self.bank.to_json()

    def load(self, state: Any, source: str) -> None:
        if state is not None:
            self._bank = SkillBank.from_json(state, source=source)

    def save(self, folder: Path) -> None:
        self.bank.save(folder / "skills.json")
