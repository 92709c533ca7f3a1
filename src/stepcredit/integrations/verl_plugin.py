"""The ``verl.plugins`` entry point: importing this module registers stepcredit with verl.

verl imports every ``verl.plugins`` entry point on ``import verl`` (in the driver and in every Ray
worker; ``VERL_USE_EXTERNAL_PLUGINS`` = "auto" | "none" | names) and logs a failing plugin at *debug*
level only, so a broken install would pass silently and a run would fall back to nothing. This module
therefore reports its own failure: an ERROR log line on the ``stepcredit.verl`` logger and a
``RuntimeWarning``, both saying what is missing; ``check()`` raises it, and
``python -m stepcredit.integrations.verl_plugin`` prints what is registered (exit 1 on failure).

Registered: the advantage estimators ``stepcredit_<name>`` for ``name`` in ``REWARD_ONLY`` and the v1
trainer mode ``stepcredit``.
"""

from __future__ import annotations

import logging
import sys
import warnings

__all__ = ["LOAD_ERROR", "REGISTERED", "check", "load"]

log = logging.getLogger("stepcredit.verl")

LOAD_ERROR: BaseException | None = None
REGISTERED: list[str] = []


def _register_estimators() -> list[str]:
    # every import inside the guarded part: a failure in stepcredit's own modules is reported too
    from verl.trainer.ppo import core_algos

    import stepcredit.estimators  # noqa: F401  (fills stepcredit's registry)
    from stepcredit.integrations.verl import REWARD_ONLY, verl_estimator

    names = []
    for name in REWARD_ONLY:
        key = f"stepcredit_{name}"
        existing = core_algos.ADV_ESTIMATOR_REGISTRY.get(key)
        if existing is not None and getattr(existing, "__stepcredit__", False):
            names.append(key)  # this process already loaded the plugin (e.g. a re-import)
            continue
        fn = verl_estimator(name)
        fn.__stepcredit__ = True  # type: ignore[attr-defined]
        core_algos.register_adv_est(key)(fn)
        names.append(key)
    return names


def _register_trainer() -> list[str]:
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

    import stepcredit.integrations.verl_trainer as trainer

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
    """What the plugin registered; raises the load error if it failed."""
    if LOAD_ERROR is not None:
        raise RuntimeError("stepcredit's verl plugin failed to load") from LOAD_ERROR
    return list(REGISTERED)


load()

if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in the tests
    try:
        print("\n".join(check()))
    except RuntimeError as err:
        print(f"{err}: {err.__cause__}", file=sys.stderr)
        sys.exit(1)
