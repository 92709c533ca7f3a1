"""Episodes as text (``Episode``, read from a rollout batch by ``episodes_from_batch``), their task
types (``task_type``, by the families' teachers) and success rates. The abstraction of their entities
(``abstract``, ``abstract_action``) lives with the action grammar, in ``stepcredit.envs.teaching``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from stepcredit.core.errors import show
from stepcredit.envs.teaching import abstract, abstract_action, teachers
from stepcredit.feedback.skills.bank import strip_skills

if TYPE_CHECKING:
    from stepcredit.core import Rollouts
    from stepcredit.generation.engine import TrainingBatch

__all__ = ["Episode", "abstract", "abstract_action", "episodes_from_batch", "success_rates", "task_type"]

GENERAL = "general"


# ---------------------------------------------------------------------------------------------- task types
def task_type(prompt: str) -> str:
    """The task type of a prompt (SkillRL's ``_detect_task_type``): ``family:kind`` (or ``family`` alone
    when the family gives no finer kind) from the first registered teacher that claims the prompt
    (``stepcredit.envs.teaching``; each teacher's docstring lists its kinds, e.g. ``calculator:add+mul``,
    ``lookup:total_recent``, ``booking:book+cancel``), else ``general``.

    A block of skills in front of the prompt (``SkillPrompt``) is ignored.
    """
    text = strip_skills(prompt)
    for teacher in teachers():
        kind = teacher.kind(text)
        if kind is not None:
            return f"{teacher.family}:{kind}" if kind else teacher.family
    return GENERAL


# ---------------------------------------------------------------------------------------------- episodes
@dataclass(frozen=True)
class Episode:
    """One episode as text: the prompt, each step's action and the observation it caused, and whether
    the task was solved. ``task_type``: ``task_type(prompt)`` when left empty. ``skipped``: how many
    earlier steps were cut off (``window``); rules that need the whole history skip what they cannot
    check."""

    prompt: str
    actions: list[str]
    observations: list[str]
    success: bool
    task_type: str = ""
    skipped: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise TypeError(f"Episode.prompt must be a string, got {type(self.prompt).__name__}")
        for name in ("actions", "observations"):
            value = getattr(self, name)
            if not isinstance(value, list | tuple) or not all(isinstance(x, str) for x in value):
                raise TypeError(f"Episode.{name} must be a list of strings, got {show(value)}")
            object.__setattr__(self, name, list(value))
        if len(self.actions) != len(self.observations):
            raise ValueError(
                f"an episode needs one observation per action, got {len(self.actions)} actions and "
                f"{len(self.observations)} observations"
            )
        if not isinstance(self.success, bool):
            raise TypeError(f"Episode.success must be a bool, got {show(self.success)}")
        if not self.task_type:
            object.__setattr__(self, "task_type", task_type(self.prompt))
        if isinstance(self.skipped, bool) or not isinstance(self.skipped, int) or self.skipped < 0:
            raise ValueError(f"Episode.skipped must be a non-negative integer, got {self.skipped!r}")

    def window(self, last_steps: int) -> Episode:
        """The episode with only its last ``last_steps`` steps (SkillRL's failure examples)."""
        cut = max(0, len(self.actions) - last_steps)
        return replace(
            self, actions=self.actions[cut:], observations=self.observations[cut:], skipped=self.skipped + cut
        )


def episodes_from_batch(batch: TrainingBatch | Rollouts, *, success_threshold: float = 1.0) -> list[Episode]:
    """The episodes of a ``TrainingBatch`` (or its ``Rollouts``), one per trajectory, in order.

    Reads only texts and outcomes: ``texts.prompt`` (a skills block in front removed, ``strip_skills``),
    each step's ``texts.action`` and observation (``texts.observation``, or its calls' results joined by
    newlines where the observation is blank, as in logs that keep results per call), and
    ``outcome >= success_threshold`` as success. Labels, expert actions and call labels are never read.
    """
    r: Rollouts = batch.rollouts if hasattr(batch, "rollouts") else batch
    prompts = r.texts.prompt.to_pylist()
    actions = r.texts.action.to_pylist()
    observations = r.texts.observation.to_pylist()
    results = r.texts.call_result.to_pylist()
    soff, coff = r.step_offsets.tolist(), r.call_offsets.tolist()
    outcome = r.outcome.tolist()
    out = []
    for i in range(r.num_trajectories):
        steps = range(soff[i], soff[i + 1])
        obs = [observations[s] or "\n".join(results[coff[s] : coff[s + 1]]) for s in steps]
        out.append(
            Episode(
                strip_skills(prompts[i]),
                [actions[s] for s in steps],
                obs,
                bool(outcome[i] >= success_threshold),
            )
        )
    return out


def success_rates(episodes: Iterable[Episode]) -> dict[str, float]:
    """The success rate of each task type among ``episodes`` (types sorted) — ``evolve``'s input."""
    counts: dict[str, list[int]] = {}
    for e in episodes:
        c = counts.setdefault(e.task_type, [0, 0])
        c[0] += int(e.success)
        c[1] += 1
    return {t: counts[t][0] / counts[t][1] for t in sorted(counts)}
