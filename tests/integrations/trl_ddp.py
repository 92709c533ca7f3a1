"""Run by ``test_trl.py`` under ``torch.distributed.run --nproc_per_node 2`` (gloo, CPU): one group of
8 generations spans both processes, so the recipe needs the gathered batch. Prints one line per
generation batch and rank: whether the (B, T) advantage equals TRL's own broadcast (the grpo recipe
with TRL's conventions)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trl import GRPOConfig

from tests.integrations import test_trl as T

torch.set_num_threads(1)
rank = int(os.environ.get("RANK", "0"))
tiny = T.Tiny()
args = GRPOConfig(
    output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
    save_strategy="no", max_steps=2, per_device_train_batch_size=4, num_generations=8, max_completion_length=32,
    max_tool_calling_iterations=1, logging_steps=1, learning_rate=1e-3, seed=0, disable_dropout=True, disable_tqdm=True,
)
trainer = T.Recorded(model=tiny.model(), reward_funcs=T.reward, args=args, train_dataset=tiny.dataset,
                     processing_class=tiny.tok, tools=[T.add], recipe=T.TRL_GRPO)
trainer.train()
for batch, theirs in zip(trainer.batches, trainer.trl_batches, strict=True):
    expected = theirs["advantages"][:, None] * T._model_mask(batch)
    match = torch.allclose(batch["advantages"], expected, atol=1e-5)
    print(f"RESULT rank={rank} rows={batch['advantages'].shape[0]} match={match}", flush=True)
