"""A Hugging Face ``transformers`` language model as a rollout ``Policy``, plus tiny local models for tests.

* ``train_tokenizer`` trains a small byte-level BPE tokenizer on a corpus of strings (locally, with
  ``tokenizers``; nothing is downloaded) whose special tokens are the chat format's role markers
  (``<|pad|>`` has id 0; ``<|end|>`` is the end-of-action token and the tokenizer's eos). Digits are
  split one per token, so numbers such as ``add(a=15, b=12)`` or ``answer 29`` tokenise uniformly.
* ``tiny_model`` builds a randomly initialised Qwen2 or Llama causal LM sized for that tokenizer,
  seeded without disturbing the global RNG.
* ``HFPolicy`` samples actions from any causal LM: it reads each ``Context.token_ids``, left-pads the
  batch, and decodes with its own loop over the KV cache (attention mask and position ids corrected for
  the padding), with temperature and nucleus (top-p) sampling, or greedily at temperature 0. Each row
  stops at ``<|end|>``. Sampling draws only from the policy's own ``torch.Generator``, so a policy with a
  given seed is reproducible. The reported log-probabilities are ``log_softmax(logits / temperature)`` at
  the sampled tokens — the temperature-scaled distribution *before* top-p truncation, as verl and vLLM
  report ``π_old`` (at temperature 0, the plain ``log_softmax``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # type: ignore[import-untyped]
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from stepcredit.generation.chat_format import ASSISTANT, BOS, END, PAD, SPECIAL_TOKENS, TOOL, USER, ChatFormat
from stepcredit.generation.policy import Context, Generation

__all__ = ["HFPolicy", "tiny_model", "train_tokenizer"]


def train_tokenizer(corpus: Iterable[str], *, vocab_size: int = 512, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``corpus``, with the chat format's markers as special tokens.

    The special tokens take ids ``0 .. len(SPECIAL_TOKENS) - 1`` in ``SPECIAL_TOKENS`` order (``<|pad|>``
    is 0); the 256 byte symbols follow, so any text can be encoded; merges fill the rest of
    ``vocab_size``. Digits are always single tokens. The same corpus gives the same vocabulary.
    """
    texts = [str(t) for t in corpus]
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size must be at least {len(SPECIAL_TOKENS) + 256} (specials + bytes)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    fast: PreTrainedTokenizerFast = cast(Any, PreTrainedTokenizerFast)(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=END,
        additional_special_tokens=[USER, ASSISTANT, TOOL],
        clean_up_tokenization_spaces=False,
    )
    fast.padding_side = "left"
    return fast


def tiny_model(
    tokenizer: Any,
    *,
    arch: Literal["qwen2", "llama"] = "qwen2",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    max_positions: int = 1024,
    seed: int = 0,
) -> PreTrainedModel:
    """A randomly initialised causal LM (``Qwen2ForCausalLM`` or ``LlamaForCausalLM``) for ``tokenizer``.

    Embeddings are tied; the vocabulary is ``len(tokenizer)``; the weights depend only on the sizes and
    ``seed`` (the global RNG is left as it was). Nothing is downloaded.
    """
    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_positions,
        "tie_word_embeddings": True,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: Any  # transformers' model constructors are untyped
        if arch == "qwen2":
            model = cast(Any, Qwen2ForCausalLM)(Qwen2Config(**common))
        elif arch == "llama":
            model = cast(Any, LlamaForCausalLM)(LlamaConfig(**common))
        else:
            raise ValueError(f"unknown arch {arch!r}; expected 'qwen2' or 'llama'")
    model.eval()
    return cast(PreTrainedModel, model)


def _load_tokenizer(path: Path) -> Any:
    """The tokenizer saved in ``path``, local files only.

    A tokenizer saved as the generic fast class (``train_tokenizer``'s) is loaded as that class: with the
    folder's ``config.json`` saying ``model_type: qwen2``, ``AutoTokenizer`` in transformers 5 would
    substitute ``Qwen2Tokenizer``, which adds an ``<|endoftext|>`` token (growing the vocabulary by one).
    Anything else (a real checkpoint's tokenizer) goes through ``AutoTokenizer``.
    """
    config_file = path / "tokenizer_config.json"
    if config_file.is_file():
        cls_name = json.loads(config_file.read_text(encoding="utf-8")).get("tokenizer_class")
        if cls_name in _GENERIC_TOKENIZER_CLASSES:
            return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


_GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


class HFPolicy:
    """Samples actions from a ``transformers`` causal LM, batched over contexts (see the module doc)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 48,
        seed: int = 0,
        device: str | torch.device | None = None,
    ) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.tokenizer = tokenizer
        self.format = ChatFormat.attach(tokenizer)
        net: Any = model  # transformers' module methods are partly untyped
        if len(tokenizer) > net.get_input_embeddings().weight.shape[0]:
            # new rows are drawn at random: seed them, and leave the global RNG as it was
            on = next(net.parameters()).device
            with torch.random.fork_rng(devices=[on] if on.type == "cuda" else []):
                torch.manual_seed(seed)
                net.resize_token_embeddings(len(tokenizer))
        if device is not None:
            net.to(torch.device(device))
        self.model: Any = net
        self.device: torch.device = next(net.parameters()).device
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.max_new_tokens = int(max_new_tokens)
        self.generator = torch.Generator(device=self.device)
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the policy's sampling stream from ``seed``."""
        self.seed = int(seed)
        self.generator.manual_seed(self.seed)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kw: Any) -> HFPolicy:
        """Load model and tokenizer from a local folder (written by ``save_pretrained``); ``kw`` go to ``HFPolicy``."""
        tokenizer = _load_tokenizer(Path(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
        return cls(model, tokenizer, **kw)

    def save_pretrained(self, path: str | Path) -> None:
        """Write model and tokenizer to ``path``."""
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))

    def _sample(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Next tokens ``[B]`` and their log-probs ``[B]`` from last-position logits ``[B, V]``."""
        logits = logits.float()
        if self.temperature == 0.0:
            tokens = logits.argmax(dim=-1)
            logp = torch.log_softmax(logits, dim=-1)
            return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
        logp = torch.log_softmax(logits / self.temperature, dim=-1)
        probs = logp.exp()
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            mass_before = sorted_p.cumsum(dim=-1) - sorted_p
            keep_sorted = mass_before < self.top_p
            keep_sorted[:, 0] = True  # the most likely token always survives
            keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
            probs = probs.masked_fill(~keep, 0.0)
        tokens = torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)

    def act(self, contexts: Sequence[Context]) -> list[Generation]:
        """One sampled action per context, in order (each context must carry ``token_ids``)."""
        if not contexts:
            return []
        rows: list[list[int]] = []
        for i, ctx in enumerate(contexts):
            if ctx.token_ids is None:
                raise ValueError(
                    f"HFPolicy needs Context.token_ids (context {i}, task {ctx.task!r} has none); "
                    "encode the context with ChatFormat"
                )
            if len(ctx.token_ids) == 0:
                raise ValueError(f"context {i} (task {ctx.task!r}) has empty token_ids")
            rows.append(list(ctx.token_ids))
        pad_id, end_id = self.format.pad_id, self.format.end_id
        width = max(len(r) for r in rows)
        batch = len(rows)
        ids = torch.full((batch, width), pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        next_pos = mask.sum(dim=-1, keepdim=True)  # [B, 1]: each row's first generated position

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model(
                    input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
                )
                past = out.past_key_values
                logits = out.logits[:, -1, :]
                finished = torch.zeros(batch, dtype=torch.bool, device=self.device)
                gen_tokens: list[torch.Tensor] = []
                gen_logps: list[torch.Tensor] = []
                gen_valid: list[torch.Tensor] = []
                for step in range(self.max_new_tokens):
                    tokens, logps = self._sample(logits)
                    tokens = tokens.masked_fill(finished, pad_id)
                    gen_tokens.append(tokens)
                    gen_logps.append(logps)
                    gen_valid.append(~finished)
                    finished = finished | (tokens == end_id)
                    if step == self.max_new_tokens - 1 or bool(finished.all()):
                        break
                    mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=self.device)], dim=-1)
                    out = self.model(
                        input_ids=tokens[:, None],
                        attention_mask=mask,
                        position_ids=next_pos,
                        past_key_values=past,
                        use_cache=True,
                    )
                    past = out.past_key_values
                    logits = out.logits[:, -1, :]
                    next_pos = next_pos + 1
        finally:
            self.model.train(was_training)

        all_tokens = torch.stack(gen_tokens, dim=1).cpu().tolist()
        all_logps = torch.stack(gen_logps, dim=1).float().cpu().tolist()
        all_valid = torch.stack(gen_valid, dim=1).cpu().tolist()
        generations: list[Generation] = []
        for toks, lps, valid in zip(all_tokens, all_logps, all_valid, strict=True):
            n = sum(bool(v) for v in valid)
            token_ids = [int(t) for t in toks[:n]]
            generations.append(
                Generation(
                    text=self.format.decode_action(token_ids),
                    token_ids=token_ids,
                    logprobs=[float(x) for x in lps[:n]],
                )
            )
        return generations
