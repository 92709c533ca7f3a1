"""The tiny training setting of the trainer's integration tests (seconds per run on 2 cores)."""

TINY = {
    "env": "calculator",
    "depth": 2,
    "env_options": {"shape": "chain", "max_operand": 9, "echo": True},
    "sft_demos": 16,
    "sft_epochs": 1,
    "groups_per_step": 2,
    "group_size": 2,
    "eval_tasks": 3,
    "eval_every": 1,
    "max_new_tokens": 10,
    "max_steps": 4,
}
