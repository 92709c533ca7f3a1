"""The text format a language-model policy reads and writes, and its token-level encoding.

A conversation is rendered with role markers (special tokens)::

    <|bos|><|user|>{task prompt}<|end|><|assistant|>{action}<|end|><|tool|>{observation}<|end|><|assistant|>…

The model generates an action's text and stops at ``<|end|>`` (the end-of-action token). Contexts are
kept as token ids and grown by *concatenation* — prompt ids, then the generated ids as they were sampled,
then the observation's ids — never by re-tokenising the whole text, so the ids a trainer scores are
exactly the ids the policy generated, and each step's tokens form one contiguous span.

Works with any Hugging Face tokenizer: ``ChatFormat.attach`` adds the markers as special tokens when the
tokenizer lacks them (then resize the model's embeddings; ``HFPolicy`` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ASSISTANT", "BOS", "END", "PAD", "SPECIAL_TOKENS", "TOOL", "USER", "ChatFormat"]

PAD, BOS, USER, ASSISTANT, TOOL, END = "<|pad|>", "<|bos|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>"
SPECIAL_TOKENS = (PAD, BOS, USER, ASSISTANT, TOOL, END)


@dataclass
class ChatFormat:
    """Encodes prompts and observations for one tokenizer (a ``transformers`` tokenizer)."""

    tokenizer: Any

    @classmethod
    def attach(cls, tokenizer: Any) -> ChatFormat:
        """The format for ``tokenizer``, adding the role markers as special tokens if it lacks them."""
        vocab = tokenizer.get_vocab()
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing})
        if tokenizer.pad_token is None:
            tokenizer.pad_token = PAD
        return cls(tokenizer)

    def id(self, token: str) -> int:
        value = self.tokenizer.convert_tokens_to_ids(token)
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"the tokenizer has no token {token!r}; use ChatFormat.attach")
        return value

    @property
    def end_id(self) -> int:
        return self.id(END)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_prompt(self, prompt: str) -> list[int]:
        """``<|bos|><|user|>{prompt}<|end|><|assistant|>`` as ids."""
        return [self.id(BOS), self.id(USER), *self._encode(prompt), self.end_id, self.id(ASSISTANT)]

    def encode_action(self, action: str) -> list[int]:
        """An action's ids as a model would generate them: the text, then ``<|end|>``."""
        return [*self._encode(action), self.end_id]

    def encode_observation(self, observation: str) -> list[int]:
        """``<|tool|>{observation}<|end|><|assistant|>`` as ids (what follows an action)."""
        return [self.id(TOOL), *self._encode(observation), self.end_id, self.id(ASSISTANT)]

    def encode_feedback(self, text: str) -> list[int]:
        """``<|user|>{text}<|end|><|assistant|>`` as ids: words put into a context after a turn (a
        critique, a hint), then the assistant's turn again."""
        return [self.id(USER), *self._encode(text), self.end_id, self.id(ASSISTANT)]

    def decode_action(self, ids: list[int]) -> str:
        """The text of generated ids, without the end-of-action token and anything after it."""
        end = self.end_id
        if end in ids:
            ids = ids[: ids.index(end)]
        return str(self.tokenizer.decode(ids, skip_special_tokens=True)).strip()
