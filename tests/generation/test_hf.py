"""HFPolicy, the local tokenizer and the tiny models: sampling is batched over left-padded contexts with a KV
cache, so the returned log-probs must match a plain teacher-forced forward pass over each row alone."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads; make sure nothing tries

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from stepcredit.generation.chat_format import SPECIAL_TOKENS, ChatFormat  # noqa: E402
from stepcredit.generation.hf import HFPolicy, tiny_model, train_tokenizer  # noqa: E402
from stepcredit.generation.policy import Context, Generation, Policy  # noqa: E402

CORPUS = (
    [f"What is {a} plus {b}? Use the calculator." for a in range(0, 40, 3) for b in range(1, 30, 7)]
    + [f"add(a={a}, b={b})" for a in range(25) for b in range(0, 25, 4)]
    + [f"mul(a={a}, b={b})" for a in range(12) for b in range(3, 9)]
    + [f"answer {n}" for n in range(60)]
    + [f'{{"result": {n}}}' for n in range(40)]
    + ['{"error": "unknown tool"}'] * 4
)
PROMPTS = ["What is 3 plus 4 or 5?", "What is 15 plus 12? Use the calculator.", "hi", "mul(a=7, b=8) then answer"]


@pytest.fixture(scope="module")
def tok() -> Any:
    return train_tokenizer(CORPUS, vocab_size=384)


@pytest.fixture(scope="module")
def fmt(tok: Any) -> ChatFormat:
    return ChatFormat.attach(tok)


@pytest.fixture(scope="module")
def models(tok: Any) -> dict[str, Any]:
    return {
        arch: tiny_model(tok, arch=arch, hidden_size=48, intermediate_size=96, seed=1) for arch in ("qwen2", "llama")
    }


def contexts(fmt: ChatFormat) -> list[Context]:
    """Contexts of different lengths, one of them multi-turn (prompt, action, observation)."""
    out = [Context(task=f"calc/{i}", messages=[], token_ids=fmt.encode_prompt(p)) for i, p in enumerate(PROMPTS)]
    long = (
        fmt.encode_prompt(PROMPTS[1]) + fmt.encode_action("add(a=15, b=12)") + fmt.encode_observation('{"result": 27}')
    )
    out.append(Context(task="calc/long", messages=[], token_ids=long, step=1))
    assert len({len(c.token_ids or []) for c in out}) >= 4
    return out


@pytest.fixture()
def end_bias(models: dict[str, Any], fmt: ChatFormat) -> Iterator[None]:
    """Raise the end-of-action logit so rows finish at different lengths (teacher forcing sees it too)."""
    end = fmt.end_id

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        output = output.clone()
        output[..., end] += 4.0
        return output

    handles = [m.get_output_embeddings().register_forward_hook(hook) for m in models.values()]
    yield
    for h in handles:
        h.remove()


def teacher_logits(model: Any, ids: list[int]) -> Any:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def check_row(model: Any, ctx: Context, gen: Generation, temperature: float) -> None:
    assert gen.token_ids is not None and gen.logprobs is not None and ctx.token_ids is not None
    n = len(ctx.token_ids)
    logits = teacher_logits(model, ctx.token_ids + gen.token_ids)[n - 1 : n - 1 + len(gen.token_ids)]
    scaled = logits / temperature if temperature > 0 else logits
    expected = torch.log_softmax(scaled, dim=-1).gather(-1, torch.tensor(gen.token_ids)[:, None]).squeeze(-1)
    torch.testing.assert_close(torch.tensor(gen.logprobs), expected, atol=1e-4, rtol=0)


# --- tokenizer -------------------------------------------------------------------------------------------


def test_special_tokens_are_single_tokens_with_fixed_ids(tok: Any, fmt: ChatFormat) -> None:
    for i, special in enumerate(SPECIAL_TOKENS):
        assert tok.convert_tokens_to_ids(special) == i
        assert tok.encode(special, add_special_tokens=False) == [i]
    assert tok.pad_token_id == 0
    assert tok.eos_token_id == fmt.end_id
    assert tok.decode(tok.encode("<|user|>hi<|end|>", add_special_tokens=False)) == "<|user|>hi<|end|>"


def test_tokenizer_roundtrip_and_digits(tok: Any, fmt: ChatFormat) -> None:
    for action in ["add(a=15, b=12)", "answer 29", '{"result": 27}', "mul(a=123, b=4567)", "ünïcode ✓"]:
        ids = fmt.encode_action(action)
        assert ids[-1] == fmt.end_id
        assert fmt.decode_action(ids) == action
    pieces = tok.tokenize("add(a=15, b=12)")
    assert "1" in pieces and "5" in pieces and "2" in pieces  # digits are single tokens
    assert len(pieces) <= 12


def test_tokenizer_is_deterministic() -> None:
    a, b = train_tokenizer(CORPUS, vocab_size=384), train_tokenizer(list(CORPUS), vocab_size=384)
    assert a.get_vocab() == b.get_vocab()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()


def test_tiny_model_is_seeded_and_leaves_global_rng(tok: Any) -> None:
    state = torch.get_rng_state()
    m1, m2 = tiny_model(tok, hidden_size=32, seed=5), tiny_model(tok, hidden_size=32, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2)
    m3 = tiny_model(tok, hidden_size=32, seed=6)
    assert not torch.equal(m1.get_input_embeddings().weight, m3.get_input_embeddings().weight)
    assert m1.get_input_embeddings().weight.shape[0] == len(tok)
    assert m1.get_output_embeddings().weight.data_ptr() == m1.get_input_embeddings().weight.data_ptr()
    with pytest.raises(ValueError, match="arch"):
        tiny_model(tok, arch="gpt2")  # type: ignore[arg-type]


# --- sampling --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_logprobs_match_teacher_forcing(arch: str, models: dict[str, Any], fmt: ChatFormat, end_bias: None) -> None:
    model = models[arch]
    policy = HFPolicy(model, fmt.tokenizer, temperature=0.9, top_p=0.95, max_new_tokens=16, seed=2)
    assert isinstance(policy, Policy)
    ctxs = contexts(fmt)
    gens = policy.act(ctxs)
    assert len(gens) == len(ctxs)
    lengths = {len(g.token_ids or []) for g in gens}
    assert len(lengths) > 1  # rows stopped at different steps
    for ctx, gen in zip(ctxs, gens, strict=True):
        check_row(model, ctx, gen, temperature=0.9)


def test_rows_stop_at_end_id(models: dict[str, Any], fmt: ChatFormat, end_bias: None) -> None:
    policy = HFPolicy(models["qwen2"], fmt.tokenizer, temperature=1.0, max_new_tokens=12, seed=0)
    ctxs = contexts(fmt) * 2
    gens = policy.act(ctxs)
    ended = 0
    for gen in gens:
        ids = gen.token_ids
        assert ids is not None and gen.logprobs is not None and 1 <= len(ids) <= 12
        assert len(gen.logprobs) == len(ids)
        assert fmt.end_id not in ids[:-1]
        assert ids[-1] == fmt.end_id or len(ids) == 12
        ended += ids[-1] == fmt.end_id
        assert gen.text == fmt.decode_action(ids)
        assert all(lp <= 0 for lp in gen.logprobs)
    assert ended > 0


def test_seed_reproducible(models: dict[str, Any], fmt: ChatFormat) -> None:
    model, ctxs = models["llama"], contexts(fmt)
    state = torch.get_rng_state()
    a = HFPolicy(model, fmt.tokenizer, temperature=1.5, max_new_tokens=8, seed=11).act(ctxs)
    b_policy = HFPolicy(model, fmt.tokenizer, temperature=1.5, max_new_tokens=8, seed=11)
    b = b_policy.act(ctxs)
    c = HFPolicy(model, fmt.tokenizer, temperature=1.5, max_new_tokens=8, seed=12).act(ctxs)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never used
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.logprobs for g in a] == [g.logprobs for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]
    assert [g.token_ids for g in b_policy.act(ctxs)] != [g.token_ids for g in a]  # the stream moves on
    b_policy.reseed(11)
    assert [g.token_ids for g in b_policy.act(ctxs)] == [g.token_ids for g in a]


def greedy_rows(model: Any, fmt: ChatFormat, **kw: Any) -> list[Generation]:
    return HFPolicy(model, fmt.tokenizer, max_new_tokens=10, **kw).act(contexts(fmt))


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_temperature_zero_is_greedy(arch: str, models: dict[str, Any], fmt: ChatFormat) -> None:
    model = models[arch]
    gens = greedy_rows(model, fmt, temperature=0.0, seed=0)
    for ctx, gen in zip(contexts(fmt), gens, strict=True):
        assert ctx.token_ids is not None and gen.token_ids is not None
        n = len(ctx.token_ids)
        logits = teacher_logits(model, ctx.token_ids + gen.token_ids)[n - 1 : n - 1 + len(gen.token_ids)]
        assert logits.argmax(-1).tolist() == gen.token_ids
        check_row(model, ctx, gen, temperature=0.0)
    assert [g.token_ids for g in gens] == [g.token_ids for g in greedy_rows(model, fmt, temperature=0.0, seed=9)]


def test_tiny_top_p_picks_the_greedy_tokens(models: dict[str, Any], fmt: ChatFormat) -> None:
    model = models["qwen2"]
    greedy = greedy_rows(model, fmt, temperature=0.0)
    nucleus = greedy_rows(model, fmt, temperature=0.7, top_p=1e-6, seed=4)
    assert [g.token_ids for g in nucleus] == [g.token_ids for g in greedy]
    for ctx, gen in zip(contexts(fmt), nucleus, strict=True):
        check_row(model, ctx, gen, temperature=0.7)  # log-probs of the untruncated, temperature-scaled policy


def test_missing_token_ids_is_a_clear_error(models: dict[str, Any], fmt: ChatFormat) -> None:
    policy = HFPolicy(models["qwen2"], fmt.tokenizer)
    with pytest.raises(ValueError, match="token_ids"):
        policy.act([*contexts(fmt)[:1], Context(task="calc/x", messages=[{"role": "user", "content": "hi"}])])
    assert policy.act([]) == []


@pytest.mark.parametrize("kw", [{"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"max_new_tokens": 0}])
def test_bad_arguments(models: dict[str, Any], fmt: ChatFormat, kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        HFPolicy(models["qwen2"], fmt.tokenizer, **kw)


def test_training_mode_restored_and_embeddings_resized(fmt: ChatFormat) -> None:
    tok = train_tokenizer(CORPUS, vocab_size=384)
    model = tiny_model(tok, hidden_size=32, intermediate_size=64)
    tok.add_tokens(["<|extra|>"])
    model.train()
    state = torch.get_rng_state()
    policy = HFPolicy(model, tok, max_new_tokens=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    gens = policy.act(contexts(ChatFormat.attach(tok))[:2])
    assert model.training
    assert all(g.token_ids and len(g.token_ids) <= 4 for g in gens)


def test_save_and_load_round_trip(models: dict[str, Any], fmt: ChatFormat, tmp_path: Any) -> None:
    policy = HFPolicy(models["qwen2"], fmt.tokenizer, temperature=0.0, max_new_tokens=10)
    policy.save_pretrained(tmp_path)
    loaded = HFPolicy.from_pretrained(tmp_path, temperature=0.0, max_new_tokens=10)
    assert loaded.format.end_id == fmt.end_id and loaded.format.pad_id == 0
    assert len(loaded.tokenizer) == len(fmt.tokenizer)  # AutoTokenizer would load a qwen2 folder as Qwen2Tokenizer
    assert loaded.tokenizer.backend_tokenizer.to_str() == fmt.tokenizer.backend_tokenizer.to_str()
    assert loaded.model.get_input_embeddings().weight.shape == policy.model.get_input_embeddings().weight.shape
    ctxs = contexts(fmt)
    a, b = policy.act(ctxs), loaded.act(ctxs)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    torch.testing.assert_close(
        torch.tensor([x for g in a for x in g.logprobs or []]), torch.tensor([x for g in b for x in g.logprobs or []])
    )


def test_position_ids_count_real_tokens_only(models: dict[str, Any], fmt: ChatFormat) -> None:
    """RoPE is shift-invariant, so teacher forcing cannot see the left-padding offset; check the ids directly."""
    model, ctxs = models["llama"], contexts(fmt)[:3]
    seen: list[tuple[Any, Any]] = []

    def hook(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        seen.append((kwargs["position_ids"].clone(), kwargs["attention_mask"].clone()))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        gens = HFPolicy(model, fmt.tokenizer, temperature=0.0, max_new_tokens=3).act(ctxs)
    finally:
        handle.remove()
    lengths = [len(c.token_ids or []) for c in ctxs]
    width = max(lengths)
    (pos0, mask0), *steps = seen
    for i, n in enumerate(lengths):
        assert mask0[i].tolist() == [0] * (width - n) + [1] * n
        assert pos0[i, width - n :].tolist() == list(range(n))
    for k, (pos, mask) in enumerate(steps):
        assert pos[:, 0].tolist() == [n + k for n in lengths]
        assert mask.shape == (len(ctxs), width + k + 1)
    assert len(seen) == max(len(g.token_ids or []) for g in gens)
