"""SRL's expert similarity + step GRPO; ReasonFlux-PRM mixing, PRM step credit and the HF scorer."""

from __future__ import annotations

import difflib
import json

import pytest
import torch

from stepcredit import Recipe, RolloutError, Rollouts
from stepcredit.core import Texts
from stepcredit.envs import make_rollouts
from stepcredit.estimators import prm_step, step_grpo
from stepcredit.shaping import expert_similarity, prm_mix


def tool_batch():
    """Task "t": two trajectories of two steps; calls search(q) then book(x)."""
    names = ["search", "book", "search", "book"]
    args = ['{"q":"a"}', '{"x":1}', '{"q":"b"}', "{x:"]  # the last is malformed JSON
    return Rollouts(
        group=[0, 0],
        outcome=[1.0, 0.0],
        step_offsets=[0, 2, 4],
        kind=[1, 1, 1, 1],
        call_offsets=[0, 1, 2, 3, 4],
        call_ok=[1, 1, 1, 0],
        texts=Texts.create(2, 1, 4, 4, group_names=["t"], call_name=names, call_arguments=args),
    )


EXPERT = {"t": [{"name": "search", "arguments": {"q": "a"}}, 'book {"x":1}']}


def test_expert_similarity_by_hand(tmp_path):
    r = expert_similarity(tool_batch(), experts=EXPERT)
    ratio = difflib.SequenceMatcher(None, 'search {"q":"b"}', 'search {"q":"a"}').ratio()
    assert r.reward.tolist() == pytest.approx([1.0, 1.0, ratio, -1.0])
    assert r.outcome.tolist() == [1.0, 0.0]  # outcome untouched
    no_penalty = expert_similarity(tool_batch(), experts=EXPERT, format_penalty=False)
    assert no_penalty.reward[3].item() == pytest.approx(
        difflib.SequenceMatcher(None, "book {x:", 'book {"x":1}').ratio()
    )
    short = expert_similarity(tool_batch(), experts={"t": ['search {"q":"a"}']})
    assert short.reward[1].item() == 0.0  # past the end of the expert trajectory
    path = tmp_path / "experts.json"
    path.write_text(json.dumps(EXPERT))
    assert torch.equal(expert_similarity(tool_batch(), experts=str(path)).reward, r.reward)


def test_expert_similarity_errors(tmp_path):
    with pytest.raises(RolloutError, match="no expert trajectory"):
        expert_similarity(tool_batch(), experts={"other": []})
    with pytest.raises(RolloutError, match="expected an expert action"):
        expert_similarity(tool_batch(), experts={"t": [3]})
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(RolloutError, match=r"bad\.json: invalid JSON"):
        expert_similarity(tool_batch(), experts=str(bad))


def test_step_grpo_by_position_and_recipe():
    shaped = expert_similarity(tool_batch(), experts=EXPERT)
    credit = step_grpo(shaped)
    first = shaped.reward[[0, 2]]
    second = shaped.reward[[1, 3]]
    norm = lambda x: (x - x.mean()) / (x.std() + 1e-6)  # noqa: E731
    want = torch.stack([norm(first)[0], norm(second)[0], norm(first)[1], norm(second)[1]])
    assert torch.allclose(credit.per_step(shaped), want)
    result = Recipe.from_dict(
        {"shaping": [{"expert_similarity": {"experts": EXPERT}}], "credit": [{"step_grpo": {"key": "position"}}]}
    ).run(tool_batch())
    assert torch.allclose(result.credit.per_step(result.rollouts), want)
    with pytest.raises(ValueError, match="key"):
        step_grpo(shaped, key="turn")  # type: ignore[arg-type]


def prm_batch():
    return Rollouts(
        group=[0, 0],
        outcome=[1.0, 0.0],
        step_offsets=[0, 3, 5],
        prm=[0.9, 0.2, 0.7, 0.4, 0.6],
        abandoned=[False, True, False, False, False],
    )


def test_prm_mix_aggregates():
    r = prm_batch()
    assert prm_mix(r).outcome.tolist() == pytest.approx([0.25 + 0.75 * 0.8, 0.75 * 0.5])  # abandoned skipped
    assert prm_mix(r, skip_abandoned=False).outcome[0].item() == pytest.approx(0.25 + 0.75 * 0.6)
    assert prm_mix(r, aggregate="min").outcome.tolist() == pytest.approx([0.25 + 0.75 * 0.7, 0.75 * 0.4])
    assert prm_mix(r, aggregate="last").outcome.tolist() == pytest.approx([0.25 + 0.75 * 0.7, 0.75 * 0.6])
    assert prm_mix(r, beta=0.0).outcome.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="no PRM scores"):
        prm_mix(Rollouts(group=[0], outcome=[1.0], step_offsets=[0, 1]))
    with pytest.raises(ValueError, match="beta"):
        prm_mix(r, beta=2.0)


def constant_scorer(rollouts: Rollouts) -> torch.Tensor:
    return torch.full((rollouts.num_steps,), 0.5)


def test_prm_mix_with_scorer_callable_and_import_string():
    r = Rollouts(group=[0, 0], outcome=[1.0, 0.0], step_offsets=[0, 1, 3])
    for scorer in (constant_scorer, f"{__name__}:constant_scorer"):
        out = prm_mix(r, scorer=scorer)
        assert out.outcome.tolist() == pytest.approx([0.25 + 0.375, 0.375])
        assert out.prm.tolist() == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="finite scores"):
        prm_mix(r, scorer=lambda x: torch.zeros(2))


def test_prm_step_by_hand():
    r = prm_batch()
    credit = prm_step(r)
    mean_prm = sum([0.9, 0.2, 0.7, 0.4, 0.6]) / 5
    centered = torch.tensor([0.9, 0.2, 0.7, 0.4, 0.6]) - mean_prm
    centered[1] = max(centered[1].item(), 0.0)  # abandoned: not penalised
    want = 0.25 * torch.tensor([0.5, 0.5, 0.5, -0.5, -0.5]) + 0.75 * centered
    assert torch.allclose(credit.per_step(r), want)
    with pytest.raises(ValueError, match="prm_step needs PRM scores"):
        prm_step(Rollouts(group=[0], outcome=[1.0], step_offsets=[0, 1]))


def tiny_prm():
    """A locally built tokenizer and a 2-class token-classification Qwen2 (no downloads)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>", "<extra_0>"])
    corpus = ["search the flights", "book a seat for the user", 'search {"q":"a"}', "Task: make 2 changes."] * 20
    tok.train_from_iterator(corpus, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        num_labels=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    return transformers.Qwen2ForTokenClassification(config), tokenizer


def test_hf_scorer_shapes_and_determinism():
    from stepcredit.shaping.prm import HFProcessRewardScorer

    model, tokenizer = tiny_prm()
    r = Rollouts(
        group=[0, 0, 1],
        outcome=[1.0, 0.0, 1.0],
        step_offsets=[0, 2, 5, 6],
        texts=Texts.create(
            3,
            2,
            6,
            0,
            prompt=["Task: make 2 changes."] * 3,
            action=["search the flights", "book a seat", "search", "book", "book a seat", "x"],
        ),
    )
    scorer = HFProcessRewardScorer(model, tokenizer, batch_size=2)
    scores = scorer(r)
    assert scores.shape == (6,) and bool(((scores > 0) & (scores < 1)).all())
    assert torch.equal(scores, scorer(r))  # deterministic, and batching does not change it
    assert torch.allclose(scores, HFProcessRewardScorer(model, tokenizer, batch_size=1)(r), atol=1e-5)
    mixed = prm_mix(r, scorer=scorer)
    assert torch.equal(mixed.prm, scores)
    with pytest.raises(ValueError, match="one token"):
        HFProcessRewardScorer(model, tokenizer, separator="two words")
    with pytest.raises(ValueError, match="separators"):
        HFProcessRewardScorer(model, tokenizer, max_length=4)(r)


# ------------------------------------------------------------------- hostile input
def test_expert_file_that_is_not_utf8(tmp_path):
    from stepcredit.shaping import expert_similarity

    (tmp_path / "experts.json").write_bytes(b'{"g": ["\xff"]}')
    with pytest.raises(RolloutError, match="UTF-8"):
        expert_similarity(make_rollouts(2, 2, seed=0), experts=str(tmp_path / "experts.json"))
