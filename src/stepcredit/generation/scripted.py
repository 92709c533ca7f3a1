"""Scripted policies: an oracle, a noisy oracle, and a systematic noisy oracle whose mistakes repeat.

They act from the environment's ground truth (``info["expert"]``, the correct next actions, and
``info["mistakes"]``, plausible wrong ones), so their runs have known labels: they make the rollouts
that tests and audits measure credit on. They are *not* learners.

* ``OraclePolicy`` takes a correct action, chosen at random among the valid ones (tasks with several
  solutions give the group several correct paths).
* ``NoisyOracle`` errs independently at each step with probability ``error_rate`` (a float, or one rate
  per step index, the last repeating), taking a mistake chosen at random.
* ``SystematicOracle`` models one agent with misconceptions, run several times on the same task: each
  decision point (task, ``state_key``) has, with probability ``error_rate``, a fixed mistake — fixed by
  a hash of (seed, task, decision point), not by the run — which every run that reaches that point makes
  with probability ``repeat``; on top, independent slips at rate ``slip``. Several runs of a task thus
  make *the same* wrong call, as real multi-trial logs do.

Every random choice comes from the policy's own seeded generator (or a hash of its seed), so the same
seed gives the same actions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from stepcredit.generation.policy import Context, Generation

__all__ = ["NoisyOracle", "OraclePolicy", "SystematicOracle", "scripted_policy"]


def _expert(context: Context) -> list[str]:
    expert = context.info.get("expert")
    if not expert:
        raise ValueError(
            f"task {context.task}: the environment gave no expert action (scripted policies need a ToolEnv's info)"
        )
    return list(expert)


class OraclePolicy:
    """Always a correct action, uniformly among the valid ones."""

    def __init__(self, *, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def _correct(self, context: Context) -> str:
        expert = _expert(context)
        return expert[int(self.rng.integers(len(expert)))]

    def act(self, contexts: Sequence[Context]) -> list[Generation]:
        return [Generation(self._correct(c)) for c in contexts]


def _rates(error_rate: float | Sequence[float]) -> tuple[float, ...]:
    rates = (error_rate,) if isinstance(error_rate, int | float) else tuple(error_rate)
    if not rates or not all(0.0 <= float(r) <= 1.0 for r in rates):
        raise ValueError(f"error rates must be in [0, 1], got {error_rate!r}")
    return tuple(float(r) for r in rates)


class NoisyOracle(OraclePolicy):
    """The oracle, but at step ``t`` a random mistake with probability ``error_rate[t]`` (last repeats)."""

    def __init__(self, error_rate: float | Sequence[float] = 0.15, *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.rates = _rates(error_rate)

    def rate(self, step: int) -> float:
        return self.rates[min(step, len(self.rates) - 1)]

    def act(self, contexts: Sequence[Context]) -> list[Generation]:
        out = []
        for c in contexts:
            mistakes = c.info.get("mistakes") or []
            if mistakes and self.rng.random() < self.rate(c.step):
                out.append(Generation(mistakes[int(self.rng.integers(len(mistakes)))][1]))
            else:
                out.append(Generation(self._correct(c)))
        return out


def _unit(*parts: object) -> float:
    """A uniform number in [0, 1) fixed by ``parts`` (a hash, the same in every run and process)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class SystematicOracle(OraclePolicy):
    """Mistakes tied to decision points: the same wrong call in several runs of one task."""

    def __init__(self, error_rate: float = 0.2, *, repeat: float = 0.8, slip: float = 0.0, seed: int = 0) -> None:
        super().__init__(seed=seed)
        for name, value in (("error_rate", error_rate), ("repeat", repeat), ("slip", slip)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        self.error_rate, self.repeat, self.slip, self.seed = error_rate, repeat, slip, seed

    def misconception(self, context: Context) -> str | None:
        """The mistake this agent holds at the context's decision point, if any."""
        mistakes = context.info.get("mistakes") or []
        key = context.key or str(context.info.get("state_key", ""))
        if not mistakes or _unit(self.seed, context.task, key, "err") >= self.error_rate:
            return None
        return str(mistakes[int(_unit(self.seed, context.task, key, "which") * len(mistakes))][1])

    def act(self, contexts: Sequence[Context]) -> list[Generation]:
        out = []
        for c in contexts:
            mistake = self.misconception(c)
            mistakes = c.info.get("mistakes") or []
            if mistake is not None and self.rng.random() < self.repeat:
                out.append(Generation(mistake))
            elif mistakes and self.rng.random() < self.slip:
                out.append(Generation(mistakes[int(self.rng.integers(len(mistakes)))][1]))
            else:
                out.append(Generation(self._correct(c)))
        return out


def scripted_policy(name: str, *, error_rate: float = 0.15, seed: int = 0) -> OraclePolicy:
    """``oracle``, ``noisy`` or ``systematic`` by name (the CLI's ``--policy``)."""
    if name == "oracle":
        return OraclePolicy(seed=seed)
    if name == "noisy":
        return NoisyOracle(error_rate, seed=seed)
    if name == "systematic":
        return SystematicOracle(error_rate, seed=seed)
    raise ValueError(f"unknown scripted policy {name!r}; expected oracle, noisy or systematic")
