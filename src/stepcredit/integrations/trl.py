"""TRL (1.16.0) adapter: ``StepcreditGRPOTrainer``, a ``GRPOTrainer`` whose advantage is any stepcredit
recipe's per-token credit.

TRL's own advantage is one number per completion: the combined reward, normalised within its group
(``(r − mean_g) / (std_g + 1e-4)``), broadcast by ``_compute_loss`` to every token. Here the same rewards
go through a recipe instead, and the trainer gets a ``(B, T)`` tensor: each model turn of a multi-turn
tool-using completion (a run of ``completion_mask * tool_mask``) is a step, each ``<tool_call>`` …
``</tool_call>`` span inside it a call, and the recipe (``grpo``, ``call_consensus``, ``action_anchor``,
``toolpo``, …) decides what every step and call earns. Tool results and padding get 0 (TRL masks them
anyway). The loss is TRL's, untouched: every ``loss_type`` takes ``(B, T)`` advantages.

What happens per generation batch (``_generate_and_score_completions``):

1. TRL generates, runs the tools and scores as usual (its own ``(B,)`` advantage is computed and dropped).
2. The per-function rewards TRL gathered over all processes are combined exactly as TRL combines them:
   ``sum_then_normalize`` (default): ``Σ_k w_k r_k`` (``nansum``, ``reward_weights``);
   ``normalize_then_sum``: ``Σ_k w_k (r_k − mean_g r_k) / (std_g r_k + 1e-4)`` — TRL's value before its
   final batch z-score, which the recipe replaces. That is each trajectory's outcome. A completion whose
   every reward function returned ``None`` is left out of the recipe's batch and gets 0 (as in TRL).
3. ``completion_ids`` and ``completion_mask * tool_mask`` are gathered from all processes (padded to the
   widest), because the ``num_generations`` completions of a prompt may sit on different processes:
   groups are consecutive blocks of ``num_generations`` rows of the global batch (the layout of TRL's
   ``RepeatSampler``, which TRL's own group statistics rely on too).
4. Tool calls are found by their marker token ids (malformed ones — never closed, nested, crossing a
   tool result — are ignored rather than fatal, since a sampled completion may be cut anywhere) and
   named by their decoded JSON (``call_identity="text"``) or token ids (``"tokens"``).
5. The recipe runs on the trajectories (``TrainerRows``); this process keeps its rows and its completion
   width, and ``out["advantages"]`` becomes that ``(B, T)`` float32 tensor. stepcredit's metrics are
   logged next to TRL's (``stepcredit/...``), and the completions table's ``advantages`` column shows
   each completion's mean token advantage.

``GRPOConfig.scale_rewards`` has no effect on the advantage (the recipe normalises); TRL still uses it
for its ``frac_reward_zero_std`` metric.

Private methods overridden: ``_generate_and_score_completions`` (to replace the advantage) and
``_calculate_rewards`` (to keep the gathered per-function rewards it returns). Their signatures and
the layout of the batch dict are TRL internals, which is why this module checks for exactly TRL 1.16.0
at import.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import trl
from torch import Tensor
from trl.trainer.grpo_trainer import GRPOTrainer

from stepcredit.integrations.calls import CallIdentity, name_calls, well_formed_calls
from stepcredit.integrations.rows import RowCredit, TrainerRows
from stepcredit.io.tensors import from_trainer_tensors
from stepcredit.recipe import Recipe

__all__ = ["TRL_VERSION", "StepcreditGRPOTrainer", "check_trl_version", "combined_rewards", "well_formed_calls"]

TRL_VERSION = "1.16.0"
TRL_EPS = 1e-4
"""The ε TRL adds to a group's std (``grpo_trainer.py``: ``advantages / (std_rewards + 1e-4)``)."""

logger = logging.getLogger(__name__)


def check_trl_version(version: str) -> None:
    """Raise ``ImportError`` unless ``version`` is the TRL release this adapter was written against."""
    if version != TRL_VERSION:
        raise ImportError(
            f"stepcredit.integrations.trl needs trl=={TRL_VERSION} (installed: {version}): it overrides "
            "GRPOTrainer's private _generate_and_score_completions and _calculate_rewards, which change "
            f"between releases; install it with `pip install trl=={TRL_VERSION}` (or stepcredit[trl])"
        )


check_trl_version(str(trl.__version__))

RecipeSpec = str | Path | Mapping[str, Any] | Recipe


def _nanstd(x: Tensor, dim: int) -> Tensor:
    """TRL's ``nanstd``: Bessel-corrected std ignoring NaNs (NaN with fewer than two values)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    var = var * torch.where(count > 1, count / (count - 1), torch.full_like(var, float("nan")))
    return var.sqrt()


def combined_rewards(
    rewards_per_func: Tensor,
    weights: Tensor,
    num_generations: int,
    aggregation: str = "sum_then_normalize",
) -> Tensor:
    """``[N]`` outcome of each completion from TRL's gathered ``rewards_per_func (N, K)`` (NaN: the
    function returned ``None``), combined as TRL's ``multi_objective_aggregation`` does before its own
    normalisation:

        sum_then_normalize:  R_i = Σ_k w_k r_ik                                  (nansum)
        normalize_then_sum:  R_i = Σ_k w_k (r_ik − mean_g r_k) / (std_g r_k + 1e-4)

    with ``g`` the group of ``num_generations`` consecutive rows. A row where every function returned
    ``None`` is NaN (unscorable: TRL keeps it out of its baselines and gives it advantage 0)."""
    w = weights.to(device=rewards_per_func.device, dtype=rewards_per_func.dtype)[None, :]
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    if aggregation == "sum_then_normalize":
        rewards = (rewards_per_func * w).nansum(dim=1)
    elif aggregation == "normalize_then_sum":
        k = rewards_per_func.shape[1]
        grouped = rewards_per_func.view(-1, num_generations, k)
        mean = torch.nanmean(grouped, dim=1, keepdim=True)
        std = _nanstd(grouped, dim=1) if num_generations > 1 else torch.zeros_like(mean)
        rewards = (((grouped - mean) / (std + TRL_EPS)).view(-1, k) * w).nansum(dim=1)
    else:
        raise ValueError(
            f"multi_objective_aggregation {aggregation!r} is not supported; expected 'sum_then_normalize' or "
            "'normalize_then_sum'"
        )
    return torch.where(unscorable, torch.full_like(rewards, float("nan")), rewards)


class StepcreditGRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` with its advantage replaced by a stepcredit recipe's ``(B, T)`` token credit.

    Takes every ``GRPOTrainer`` argument, plus (keyword-only):

    Args:
        recipe: what ``Recipe.load`` takes: a built-in name (``"grpo"``, ``"call_consensus"``, …), a YAML
            path, a dict, or a ``Recipe``. Checked here, before the model is set up.
        call_identity: how two tool calls are told to be the same call: ``"text"`` (decode the span
            with the processing class's tokenizer and read its JSON ``{"name", "arguments"}``) or ``"tokens"``
            (identical token ids).
        tool_call_markers: the strings that open and close a tool call, encoded with the tokenizer
            (``add_special_tokens=False``); ``None``: no call detection (steps only).
        allow_imports: let the recipe name user code (``"module:function"``).

    See the module docstring for what is gathered and how the outcome is formed.
    """

    def __init__(
        self,
        *args: Any,
        recipe: RecipeSpec = "grpo",
        call_identity: CallIdentity = "text",
        tool_call_markers: tuple[str, str] | None = ("<tool_call>", "</tool_call>"),
        allow_imports: bool = False,
        **kwargs: Any,
    ) -> None:
        if call_identity not in ("text", "tokens"):
            raise ValueError(f'call_identity must be "text" or "tokens", got {call_identity!r}')
        if tool_call_markers is not None and (
            len(tool_call_markers) != 2 or not all(isinstance(m, str) and m for m in tool_call_markers)
        ):
            raise ValueError(f"tool_call_markers must be two non-empty strings (open, close) or None, "
                             f"got {tool_call_markers!r}")
        self.stepcredit_recipe = Recipe.load(recipe, allow_imports=allow_imports)
        self.stepcredit_call_identity: CallIdentity = call_identity
        self.stepcredit_markers = tool_call_markers
        self._stepcredit_rewards: Tensor | None = None
        super().__init__(*args, **kwargs)
        self.stepcredit_call_patterns = self._encode_markers(tool_call_markers)
        if self.scale_rewards != "group":
            logger.warning(
                "GRPOConfig.scale_rewards=%r does not change the advantage of StepcreditGRPOTrainer: "
                "the recipe %r normalises", self.scale_rewards, self.stepcredit_recipe.name
            )

    def _encode_markers(self, markers: tuple[str, str] | None) -> tuple[list[int], list[int]] | None:
        if markers is None:
            return None
        start, end = (list(self._tokenizer.encode(m, add_special_tokens=False)) for m in markers)
        if not start or not end:
            raise ValueError(f"the tool-call markers {markers[0]!r} / {markers[1]!r} encode to no tokens")
        if start == end:
            raise ValueError(f"the tool-call markers {markers[0]!r} / {markers[1]!r} encode to the same tokens")
        return start, end

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> Tensor:
        rewards_per_func: Tensor = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._stepcredit_rewards = rewards_per_func  # (global N, K): gathered by TRL
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._stepcredit_rewards = None
        out: dict[str, Any] = super()._generate_and_score_completions(inputs)
        rewards_per_func, self._stepcredit_rewards = self._stepcredit_rewards, None
        if rewards_per_func is None:
            raise RuntimeError("GRPOTrainer scored the batch without _calculate_rewards: not TRL 1.16.0's flow")
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        outcome = combined_rewards(
            rewards_per_func, self.reward_weights, num_generations, self.multi_objective_aggregation
        )
        out["advantages"] = self._stepcredit_advantages(out, outcome, num_generations, mode)
        return out

    def _stepcredit_advantages(
        self, out: Mapping[str, Any], outcome: Tensor, num_generations: int, mode: str
    ) -> Tensor:
        """This process's ``(B, T)`` advantages from the recipe run on the global batch."""
        ids: Tensor = out["completion_ids"]
        local = out["completion_mask"] if out.get("tool_mask") is None else out["completion_mask"] * out["tool_mask"]
        b, t = ids.shape
        acc = self.accelerator
        pad = self._tokenizer.pad_token_id
        all_ids = acc.gather(acc.pad_across_processes(ids, dim=1, pad_index=0 if pad is None else int(pad)))
        all_mask = acc.gather(acc.pad_across_processes(local.long(), dim=1, pad_index=0)).bool()
        n = all_ids.shape[0]
        if outcome.numel() != n:
            raise RuntimeError(f"{outcome.numel()} gathered rewards for {n} gathered completions")
        group = torch.arange(n, device=all_ids.device) // num_generations
        scorable = ~torch.isnan(outcome)
        advantages = torch.zeros(all_mask.shape, dtype=torch.float32, device=all_ids.device)
        if bool(scorable.any()):
            rows = torch.nonzero(scorable).flatten()
            credit = self._run_recipe(all_ids[rows], all_mask[rows], group[rows], outcome[rows])
            advantages[rows] = credit.advantages.to(device=advantages.device, dtype=torch.float32)
            for name, value in credit.metrics.items():
                self._metrics[mode][name].append(value)
        self._log_completion_advantages(advantages, all_mask)
        p = acc.process_index
        return advantages[p * b : (p + 1) * b, :t].contiguous()

    def _run_recipe(self, ids: Tensor, mask: Tensor, group: Tensor, outcome: Tensor) -> RowCredit:
        patterns = self.stepcredit_call_patterns
        if patterns is None:
            rows = from_trainer_tensors(mask, group, outcome=outcome)
        else:
            start, end = patterns
            rows = from_trainer_tensors(
                mask, group, outcome=outcome, responses=well_formed_calls(ids, mask, start, end),
                tool_call_start=start, tool_call_end=end,
            )
            assert self.stepcredit_markers is not None
            rows = name_calls(
                rows, ids, self.stepcredit_call_identity, decode=self._tokenizer.batch_decode,
                markers=self.stepcredit_markers,
            )
        return TrainerRows.from_rows(rows).run(self.stepcredit_recipe)

    def _log_completion_advantages(self, advantages: Tensor, mask: Tensor) -> None:
        """The completions table shows, per completion, the mean advantage of its model tokens (TRL
        logged its own, now unused, ``(B,)`` value just before)."""
        logged = self._logs.get("advantages")
        if not isinstance(logged, deque):
            return
        per_row = (advantages * mask).sum(1) / mask.sum(1).clamp_min(1)
        for _ in range(min(per_row.numel(), len(logged))):
            logged.pop()
        logged.extend(per_row.tolist())
