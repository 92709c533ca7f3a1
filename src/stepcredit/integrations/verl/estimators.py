"""verl (0.9.1) adapters: its batch → ``TrainerRows`` → any recipe → ``(B, T)`` advantages.

Two ways in, both loaded by the ``verl.plugins`` entry point (``stepcredit.integrations.verl.plugin``):

* **registered estimators** ``stepcredit_<name>`` for the estimators that need only what verl hands a
  registered estimator — ``token_level_rewards``, ``response_mask``, ``index`` (the uid) — selected
  with ``algorithm.adv_estimator=stepcredit_<name>`` (parameters: ``+algorithm.stepcredit_params``);
* the **trainer mode** ``stepcredit`` (``trainer.v1.trainer_mode=stepcredit``), which fetches the
  per-turn fields verl's own advantage step leaves behind (token ids, session keys, tool rewards) and
  runs any recipe (``+algorithm.stepcredit_recipe=grpo|path.yaml``).

verl's layout: ``response_mask`` is 1 on model tokens and 0 on tool output and padding, so each run of
ones is a turn (a step); a tool call is a span between open / close token patterns (``<tool_call>`` …
``</tool_call>`` in Hermes-style templates); the outcome is the row sum of ``token_level_rewards``
(verl puts the score on the last response token). Rows of one agent session (keys
``{uid}_{session}_{index}``) form one trajectory, concatenated in ``index`` order.

Nothing here imports verl: these functions take tensors and numpy arrays.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from stepcredit.core import Rollouts, segments
from stepcredit.core.errors import RolloutError
from stepcredit.core.registry import get
from stepcredit.integrations.calls import CallIdentity, Decode, name_calls, well_formed_calls
from stepcredit.integrations.rows import TrainerRows
from stepcredit.io.tensors import from_trainer_tensors

__all__ = [
    "REWARD_ONLY",
    "StepcreditOptions",
    "rows_from_verl",
    "session_keys",
    "verl_estimator",
]

# Estimators that need nothing but rewards, the response mask and the uid (steps are mask runs). Left
# out: those that would silently reduce to one of these without the fields verl does not pass a
# registered estimator (ms_grpo and step_grpo without step rewards, gigpo without anchor states,
# mt_grpo*, toolpo, action_anchor, call_consensus and call_evidence without tool calls, the tree
# estimators without trees, brier / prm_step / oracle without their columns): the trainer mode has them.
REWARD_ONLY: tuple[str, ...] = ("grpo", "rloo", "reinforce_pp_baseline", "per_turn", "per_turn_index")


def session_keys(keys: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Split verl's row keys ``{uid}_{session}_{index}`` into the session ``{uid}_{session}`` and the
    output index of each row."""
    sessions, index = [], []
    for key in keys:
        parts = str(key).rsplit("_", 2)
        if len(parts) != 3 or not parts[2].isdigit():
            raise RolloutError(f"expected a row key '{{uid}}_{{session}}_{{index}}', got {key!r}", field="keys")
        sessions.append(f"{parts[0]}_{parts[1]}")
        index.append(int(parts[2]))
    return sessions, np.asarray(index, dtype=np.int64)


def _step_rewards_from_calls(
    rows: Rollouts, tool_rewards: Sequence[Sequence[float] | None], names: Sequence[str]
) -> tuple[Tensor, int]:
    """``[S]`` step rewards (the sum of each step's tool rewards, one reward per call found, in order)
    and how many rows had a different number of rewards than calls. verl appends a reward per call it
    *executed* (by default only a turn's first call, and none for a call its parser rejects or a tool
    that returns no reward), so such rows are ordinary sampled output: their calls get no tool reward
    (0) rather than a guess at which reward went to which call."""
    n = rows.num_trajectories
    if len(tool_rewards) != n:
        raise RolloutError(
            f"expected {n} tool-reward lists (one per row), got {len(tool_rewards)}", field="tool_rewards"
        )
    counts = [0 if v is None else len(v) for v in tool_rewards]
    calls = rows.calls_per_trajectory.tolist()
    aligned = [counts[i] == calls[i] for i in range(n)]
    values: list[float] = []
    for i, (row, ok) in enumerate(zip(tool_rewards, aligned, strict=True)):
        if not ok or not row:
            continue
        for x in row:
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
                raise RolloutError(f"expected finite numbers as tool rewards, got {x!r}", trajectory=names[i],
                                   field="tool_rewards")
            values.append(float(x))
    flat = torch.tensor(values, dtype=torch.float64, device=rows.device)
    per_call = torch.zeros(rows.num_calls, dtype=torch.float64, device=rows.device)
    per_call[torch.tensor(aligned, device=rows.device)[rows.call_traj]] = flat
    return segments.segment_sum(per_call, rows.call_step, rows.num_steps).to(torch.float32), aligned.count(False)


def rows_from_verl(
    response_mask: Tensor,
    index: Sequence[object] | np.ndarray,
    token_level_rewards: Tensor,
    *,
    responses: Tensor | None = None,
    keys: Sequence[str] | None = None,
    tool_call: tuple[Sequence[int], Sequence[int]] | None = None,
    call_identity: CallIdentity = "tokens",
    decode: Decode | None = None,
    markers: Sequence[str] = (),
    tool_rewards: Sequence[Sequence[float] | None] | None = None,
) -> TrainerRows:
    """A verl batch as trajectories.

    Args:
        response_mask, index, token_level_rewards: as verl holds them (``(B, T)``, uid object array,
            ``(B, T)``); each row's outcome is its reward sum.
        responses: ``(B, T)`` token ids (needed for tool calls).
        keys: verl v1's row keys ``{uid}_{session}_{index}``; rows of a session become one trajectory.
            ``None``: each row is a trajectory.
        tool_call: the token-id patterns that open and close a tool call; each call becomes a call row
            with its token span, named by ``call_identity`` (see ``stepcredit.integrations.calls``).
            Markers that are not part of a whole call inside one turn (a response cut off mid-call, a
            stray close) are ignored: that text stays part of its step.
        tool_rewards: per row, verl's ``extra_fields["tool_rewards"]`` — one reward per tool call, in
            order; each step's intermediate reward is the sum of its calls'. Needs ``tool_call``. A row
            with more or fewer rewards than calls gets none (counted in the batch's notes as
            ``stepcredit/tool_reward_mismatch_rows``).
    """
    ids = None if keys is None else [str(k) for k in keys]
    start, end = (None, None) if tool_call is None else tool_call
    notes: dict[str, float] = {}
    def read(tokens: Tensor | None) -> Rollouts:
        return from_trainer_tensors(
            response_mask, index, token_level_rewards=token_level_rewards, responses=tokens,
            tool_call_start=start, tool_call_end=end, ids=ids,
        )

    try:
        rows = read(responses)
    except RolloutError:
        if tool_call is None or responses is None:
            raise
        # a sampled response cut off mid-call (or a stray marker) is text, not a call: no reason to stop
        # training; its tokens keep their step's credit (checked only when a batch has such markers)
        responses = well_formed_calls(responses, response_mask, tool_call[0], tool_call[1])
        rows = read(responses)
    if tool_call is not None and responses is not None:
        rows = name_calls(rows, responses, call_identity, decode=decode, markers=markers)
    if tool_rewards is not None:
        if tool_call is None:
            raise RolloutError("tool rewards are per tool call: give the tool_call patterns too", field="tool_rewards")
        names = ids if ids is not None else [str(i) for i in range(rows.num_trajectories)]
        reward, mismatched = _step_rewards_from_calls(rows, tool_rewards, names)
        rows = replace(rows, reward=reward)
        notes["stepcredit/tool_reward_mismatch_rows"] = float(mismatched)
    if keys is None:
        batch = TrainerRows.from_rows(rows)
    else:
        sessions, order = session_keys(keys)
        batch = TrainerRows.from_rows(rows, sessions, order)
    return replace(batch, notes=notes)


def _config_get(config: Any, key: str) -> Any:
    if config is None:
        return None
    if isinstance(config, Mapping) or hasattr(config, "get"):
        try:
            return config.get(key)
        except Exception:  # a structured config without the key
            return getattr(config, key, None)
    return getattr(config, key, None)


def verl_estimator(name: str) -> Callable[..., tuple[Tensor, Tensor]]:
    """stepcredit's estimator ``name`` with verl's registered-estimator signature
    ``fn(token_level_rewards, response_mask, index, config, **kwargs) -> (advantages, returns)``.
    Parameters come from ``config.stepcredit_params`` (a mapping; checked like a recipe's); without a
    ``norm`` there, ``algorithm.norm_adv_by_std_in_grpo=False`` selects ``norm="mean"`` as for verl's own.

    verl hands a registered estimator rows, not sessions: each row is a trajectory here. For agent
    loops that emit several rows per session (``{uid}_{session}_{index}``), use the trainer mode,
    which joins them."""
    component = get("credit", name)
    takes_norm = set(inspect.signature(component.fn).parameters) & {"norm"}

    def estimator(
        token_level_rewards: Tensor,
        response_mask: Tensor,
        index: Sequence[object] | np.ndarray | None = None,
        config: Any = None,
        **_: Any,
    ) -> tuple[Tensor, Tensor]:
        if index is None:
            raise RolloutError(f"stepcredit_{name} needs the uid of every row (verl passes it as index)",
                               field="index")
        params = dict(_config_get(config, "stepcredit_params") or {})
        if "norm" in takes_norm and "norm" not in params and _config_get(config, "norm_adv_by_std_in_grpo") is False:
            params["norm"] = "mean"  # verl's Dr.GRPO switch, as its own estimators read it
        rows = from_trainer_tensors(response_mask, index, token_level_rewards=token_level_rewards)
        credit = component.fn(rows, **params).check(rows, f"stepcredit_{name}")
        adv = credit.to_tokens(rows).to(token_level_rewards.dtype)
        return adv, adv

    estimator.__name__ = f"stepcredit_{name}"
    estimator.__doc__ = f"stepcredit's ``{name}`` as a verl advantage estimator.\n\n{component.fn.__doc__ or ''}"
    return estimator


@dataclass(frozen=True)
class StepcreditOptions:
    """The trainer mode's options (``+algorithm.stepcredit_options.<name>=...``).

    * ``tool_call_start`` / ``tool_call_end``: the strings that open and close a tool call (encoded with
      the trainer's tokenizer; they must be single added tokens or tokenise the same in context);
      ``""`` turns call detection off;
    * ``call_identity``: "text" (decode and read the JSON call) or "tokens" (identical token ids);
    * ``tool_rewards``: use verl's per-call ``extra_fields["tool_rewards"]`` as intermediate step
      rewards (off by default: many reward functions already fold them into the score);
    * ``allow_imports``: let the recipe name user code (``module:function``).
    """

    tool_call_start: str = "<tool_call>"
    tool_call_end: str = "</tool_call>"
    call_identity: CallIdentity = "text"
    tool_rewards: bool = False
    allow_imports: bool = False

    @classmethod
    def from_config(cls, value: Any) -> StepcreditOptions:
        if value is None:
            return cls()
        items = dict(value.items()) if hasattr(value, "items") else None
        if items is None:
            raise ValueError(f"algorithm.stepcredit_options must be a mapping, got {type(value).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(items) - known)
        if unknown:
            raise ValueError(f"unknown algorithm.stepcredit_options {unknown}; known: {sorted(known)}")
        out = cls(**{k: v for k, v in items.items()})
        if out.call_identity not in ("text", "tokens"):
            raise ValueError(f'stepcredit_options.call_identity must be "text" or "tokens", got {out.call_identity!r}')
        for flag in ("tool_rewards", "allow_imports"):
            if not isinstance(getattr(out, flag), bool):
                raise ValueError(f"stepcredit_options.{flag} must be true or false, got {getattr(out, flag)!r}")
        return out

    def patterns(self, encode: Callable[[str], list[int]]) -> tuple[list[int], list[int]] | None:
        if not self.tool_call_start or not self.tool_call_end:
            return None
        start, end = encode(self.tool_call_start), encode(self.tool_call_end)
        if not start or not end:
            raise ValueError(
                f"the tool-call markers {self.tool_call_start!r} / {self.tool_call_end!r} encode to no tokens"
            )
        return start, end
