"""The policy protocol: what the rollout engine asks of any policy, scripted or a language model.

The engine keeps, for every live trajectory, a ``Context``: the chat so far (``messages``), the same
context as token ids when a tokenizer is in play (``token_ids``, built by concatenation so every token
the model generated keeps its id), the environment's last ``info`` and the task id. Once per round it
hands the contexts of *all* live trajectories to ``Policy.act`` in one batch and gets one
``Generation`` per context: the action text, and for language models the generated token ids (ending
with the end-of-action token) and their log-probabilities under the sampling policy (``π_old``).

Scripted policies (``stepcredit.generation.scripted``) read ``info["expert"]`` / ``info["mistakes"]``,
the environment's ground truth; a language model policy (``HFPolicy``) reads only the tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["Context", "Generation", "Policy"]


@dataclass
class Context:
    """What a policy sees before one step of one trajectory."""

    task: str  # the environment's task id, e.g. "calculator/train/7"
    messages: list[dict[str, str]]  # chat so far: {"role": "user"|"assistant"|"tool", "content": ...}
    info: dict[str, Any] = field(default_factory=dict)  # the environment's last info (ground truth: scripted only)
    token_ids: list[int] | None = None  # the whole context as token ids, ending with the assistant header
    step: int = 0  # how many steps this trajectory has taken
    key: str = ""  # the decision point (the env's state_key): equal keys, the same situation


@dataclass
class Generation:
    """One generated action."""

    text: str
    token_ids: list[int] | None = None  # generated ids, the end-of-action token included
    logprobs: list[float] | None = None  # log π_old of each generated token


@runtime_checkable
class Policy(Protocol):
    """Anything with ``act(contexts) -> generations`` (one per context, in order)."""

    def act(self, contexts: Sequence[Context]) -> list[Generation]: ...
