"""verl v1 trainer mode ``stepcredit``: the synchronous PPO trainer with its advantage step replaced by
any stepcredit recipe, fed the per-turn fields verl's own step does not fetch.

Select it with ``trainer.v1.trainer_mode=stepcredit`` and ``+algorithm.stepcredit_recipe=<name|path>``
(options: ``+algorithm.stepcredit_options.<name>=...``, see ``StepcreditOptions``). Everything else —
rollout, reward, KL in reward, rollout correction, the actor update — is verl's ``PPOTrainerSync``.
``algorithm.adv_estimator`` is not used in this mode: the recipe is the estimator.

Importing this module needs verl's v1 trainer (verl 0.9.1 with TransferQueue); the ``verl.plugins``
entry point imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import transfer_queue as tq
from omegaconf import DictConfig, open_dict
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.protocol import DataProto
from verl.trainer.ppo.ray_trainer import apply_kl_penalty
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.workers.utils.padding import response_to_nested

if TYPE_CHECKING:  # stepcredit's credit pipeline is imported on the trainer's first batch, not on `import verl`
    from stepcredit.integrations.verl.estimators import StepcreditOptions
    from stepcredit.recipe import Recipe

__all__ = ["StepcreditTrainer"]

_FIELDS = ["uid", "response_mask", "rm_scores", "responses", "extra_fields", "rollout_log_probs", "old_log_probs",
           "ref_log_prob"]


@register_trainer("stepcredit")
class StepcreditTrainer(PPOTrainerSync):
    """``PPOTrainerSync`` whose ``_compute_advantage`` runs a stepcredit recipe over whole agent
    sessions (rows ``{uid}_{session}_{index}`` of one session are one trajectory), with tool calls
    located by their token markers and named by their decoded JSON, and tool rewards as step rewards
    when asked. Rows a recipe's selection drops get zero advantage (verl expects every row back).
    Credit metrics are logged under ``stepcredit/``."""

    _stepcredit: tuple[Recipe, StepcreditOptions] | None = None

    def __init__(self, config: DictConfig) -> None:
        # verl branches on the mode's *name* ("sync" or an async mode) when it builds the replay buffer,
        # refills the dataloader and restores checkpoints; this mode is the sync trainer, so it runs
        # under that name (main_ppo has already picked the class by "stepcredit")
        with open_dict(config):
            config.trainer.v1.trainer_mode = "sync"
        super().__init__(config)
        with open_dict(config):  # what the user asked for stays in the (logged, saved) config
            config.trainer.v1.trainer_mode = "stepcredit"

    def stepcredit_setup(self) -> tuple[Recipe, StepcreditOptions]:
        """The recipe and options from ``config.algorithm`` (read once)."""
        if self._stepcredit is None:
            algo = self.config.algorithm
            spec = algo.get("stepcredit_recipe")
            if not spec:
                raise ValueError(
                    "trainer mode 'stepcredit' needs a recipe: +algorithm.stepcredit_recipe=<built-in name or .yaml>"
                )
            from stepcredit.integrations.verl.estimators import StepcreditOptions
            from stepcredit.recipe import Recipe

            options = StepcreditOptions.from_config(algo.get("stepcredit_options"))
            self._stepcredit = (Recipe.load(str(spec), allow_imports=options.allow_imports), options)
        return self._stepcredit

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict[str, Any]) -> KVBatchMeta:
        recipe, options = self.stepcredit_setup()
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=_FIELDS)
        response_mask = data["response_mask"]
        uid = np.array(data.pop("uid").tolist(), dtype=object)
        extra = data.pop("extra_fields").tolist() if "extra_fields" in data else None
        proto = DataProto(batch=data.to_padded_tensor())
        proto.batch["token_level_scores"] = proto.batch["rm_scores"]
        proto.non_tensor_batch["uid"] = uid

        # turns and calls are read from the mask as generated: rollout correction may reject single
        # tokens (rollout_rs=token_*), which must not split a turn or hide a call; its mask is applied
        # to the advantages at the end
        generated = proto.batch["response_mask"].clone()
        algo = self.config.algorithm
        if algo.use_kl_in_reward:
            proto, kl_metrics = apply_kl_penalty(proto, kl_ctrl=self.kl_ctrl_in_reward, kl_penalty=algo.kl_penalty)
            metrics.update(kl_metrics)
        else:
            proto.batch["token_level_rewards"] = proto.batch["token_level_scores"]
        corr = algo.get("rollout_correction", None)
        correction = corr is not None and "rollout_log_probs" in proto.batch and not corr.get("bypass_mode", False)
        if correction:
            proto, is_metrics = compute_rollout_correction_and_add_to_batch(proto, corr)
            metrics.update(is_metrics)

        tool_rewards = None
        if options.tool_rewards:
            if extra is None:
                raise ValueError("stepcredit_options.tool_rewards is on, but the batch has no extra_fields")
            tool_rewards = [e.get("tool_rewards") if isinstance(e, dict) else None for e in extra]
        from stepcredit.integrations.verl.estimators import rows_from_verl

        rows = rows_from_verl(
            generated,
            uid,
            proto.batch["token_level_rewards"],
            responses=proto.batch["responses"],
            keys=list(batch.keys),
            tool_call=options.patterns(self._encode),
            call_identity=options.call_identity,
            decode=self.tokenizer.batch_decode,
            markers=(options.tool_call_start, options.tool_call_end),
            tool_rewards=tool_rewards,
        )
        out = rows.run(recipe)
        metrics.update(out.metrics)
        advantages = out.advantages.to(proto.batch["token_level_rewards"].dtype) * proto.batch["response_mask"]
        proto.batch["advantages"] = advantages
        proto.batch["returns"] = advantages

        names = ["advantages", "returns"]
        if algo.use_kl_in_reward:
            names.append("token_level_rewards")
        if correction:
            names.append("response_mask")
            if "rollout_is_weights" in proto.batch:
                names.append("rollout_is_weights")
        nested = {name: response_to_nested(proto.batch[name], response_mask) for name in names}
        return tq.kv_batch_put(
            keys=batch.keys, partition_id=batch.partition_id, fields=TensorDict(nested, batch_size=len(batch))
        )
