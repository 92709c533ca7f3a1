"""The ``verl.plugins`` entry point: importing this module registers stepcredit with verl.

verl imports every ``verl.plugins`` entry point on ``import verl`` (in the driver and in every Ray
worker; ``VERL_USE_EXTERNAL_PLUGINS`` = "auto" | "none" | names) and logs a failing plugin at *debug*
level only, so a broken install would pass silently and a run would fall back to nothing. This module
therefore reports its own failure: an ERROR log line on the ``stepcredit.verl`` logger and a
``RuntimeWarning``, both saying what is missing; ``check()`` raises it, and
``python -m stepcredit.integrations.verl.plugin`` prints what is registered (exit 1 on failure).

Registered: the advantage estimators ``stepcredit_<name>`` for ``name`` in ``REWARD_ONLY`` and the v1
trainer mode ``stepcredit``.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["LOAD_ERROR", "REGISTERED", "REWARD_ONLY", "check", "load"]

log = logging.getLogger("stepcredit.verl")

LOAD_ERROR: BaseException | None = None
REGISTERED: list[str] = []


# the registered names; ``integrations.verl.estimators.REWARD_ONLY`` (checked equal by the tests)
REWARD_ONLY: tuple[str, ...] = ("grpo", "rloo", "reinforce_pp_baseline", "per_turn", "per_turn_index")


def _lazy_estimator(name: str) -> Callable[..., Any]:
    """verl's estimator ``stepcredit_<name>``; stepcredit's estimators are imported on its first call,
    so ``import verl`` in a Ray worker that never computes an advantage does not load them."""
    made: list[Callable[..., Any]] = []

    def estimator(*args: Any, **kwargs: Any) -> Any:
        if not made:
            from stepcredit.integrations.verl.estimators import verl_estimator

            made.append(verl_estimator(name))
        return made[0](*args, **kwargs)

    estimator.__name__ = f"stepcredit_{name}"
    estimator.__doc__ = f"stepcredit's ``{name}`` as a verl advantage estimator (``stepcredit.estimators.{name}``)."
    return estimator


def _register_estimators() -> list[str]:
    # every import inside the guarded part; stepcredit's adapter module must be found (check() imports it)
    import importlib.util

    from verl.trainer.ppo import core_algos

    adapter = "stepcredit.integrations.verl.estimators"
    if importlib.util.find_spec(adapter) is None:  # found now, imported on the first call
        raise ImportError(f"{adapter} cannot be found")
    names = []
    for name in REWARD_ONLY:
        key = f"stepcredit_{name}"
        existing = core_algos.ADV_ESTIMATOR_REGISTRY.get(key)
        if existing is not None and getattr(existing, "__stepcredit__", False):
            names.append(key)  # this process already loaded the plugin (e.g. a re-import)
            continue
        fn = _lazy_estimator(name)
        fn.__stepcredit__ = True  # type: ignore[attr-defined]
        core_algos.register_adv_est(key)(fn)
        names.append(key)
    return names


def _register_trainer() -> list[str]:
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

    import stepcredit.integrations.verl.trainer as trainer

    if TRAINER_REGISTRY.get("stepcredit") is not trainer.StepcreditTrainer:
        raise RuntimeError(f"verl trainer mode 'stepcredit' is taken by {TRAINER_REGISTRY.get('stepcredit')!r}")
    return ["trainer_mode=stepcredit"]


def load() -> list[str]:
    """Register everything that can be; report each failure loudly (log + warning) and keep the first
    in ``LOAD_ERROR``. Returns what is registered."""
    global LOAD_ERROR
    REGISTERED.clear()
    LOAD_ERROR = None
    for part, what in ((_register_estimators, "the stepcredit_* advantage estimators"),
                       (_register_trainer, "trainer mode 'stepcredit'")):
        try:
            REGISTERED.extend(part())
        except Exception as err:  # report, don't hide: verl would swallow a raise at debug level
            LOAD_ERROR = LOAD_ERROR or err
            message = (
                f"stepcredit's verl plugin failed to load {what} ({type(err).__name__}: {err}); they are not "
                "available in this process. Install stepcredit[verl] (verl 0.9.1 with TransferQueue), or "
                "leave stepcredit out of VERL_USE_EXTERNAL_PLUGINS."
            )
            log.error(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
    return list(REGISTERED)


def check() -> list[str]:
    """What the plugin registered; raises the load error if it failed, or if stepcredit's adapter
    module (imported lazily, on an estimator's first call) does not import."""
    if LOAD_ERROR is not None:
        raise RuntimeError("stepcredit's verl plugin failed to load") from LOAD_ERROR
    try:
        import stepcredit.integrations.verl.estimators  # noqa: F401
    except Exception as err:
        raise RuntimeError("stepcredit's verl plugin cannot import its estimators") from err
    return list(REGISTERED)


load()

if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in the tests
    try:
        print("\n".join(check()))
    except RuntimeError as err:
        print(f"{err}: {err.__cause__}", file=sys.stderr)
        sys.exit(1)
