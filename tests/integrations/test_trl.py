"""StepcreditGRPOTrainer: real TRL 1.16 GRPO steps with tool calls on a tiny local model (no downloads).

The tokenizer is a byte-level BPE trained here on rendered ``add`` tool conversations, with the qwen2_5
chat template (TRL recognises it and attaches its tool-call parser); its merges are allowed to run
across spaces, so the whole tool-call JSON of one ``(a, b)`` is one token and the completion
``<tool_call> \\n {json} \\n </tool_call> <|im_end|> [tool result] The answer is … <|im_end|>`` is short. A
tiny Qwen2 is warmed up for a few seconds of plain next-token training on those conversations, so
that TRL's own sampling makes (mostly well-formed) tool calls, which TRL parses and runs.
"""

from __future__ import annotations

import importlib
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
import trl
from datasets import Dataset
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from trl import GRPOConfig
from trl.chat_template_utils import qwen2_5_chat_template
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.utils import nanstd

import stepcredit.integrations.trl as sc_trl
from stepcredit.integrations.calls import name_calls
from stepcredit.integrations.rows import TrainerRows
from stepcredit.integrations.trl import (
    StepcreditGRPOTrainer,
    check_trl_version,
    combined_rewards,
    well_formed_calls,
)
from stepcredit.io.tensors import from_trainer_tensors
from stepcredit.recipe import Recipe, RecipeError

MARKERS = ("<tool_call>", "</tool_call>")
NUM_GENERATIONS = 4
TRL_GRPO = {"credit": [{"grpo": {"norm": "std", "eps": 1e-4}}]}


def add(a: int, b: int) -> int:
    """
    Add two integers.

    Args:
        a: The first integer.
        b: The second integer.

    Returns:
        The sum of a and b.
    """
    return a + b


def _conversation(a: int, b: int) -> list[dict[str, Any]]:
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": a, "b": b}}}
    return [
        {"role": "user", "content": f"What is {a} plus {b}?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": "add", "content": str(a + b)},
        {"role": "assistant", "content": f"The answer is {a + b}."},
    ]


def _tokenizer(corpus: list[str], vocab_size: int) -> Any:
    tk = Tokenizer(models.BPE())
    # "\n" on its own, so a role header tokenises alike whatever follows it (TRL splices tool results in as
    # ids); no regex split otherwise, so the repeated system prompt and each call's JSON become few tokens
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                   use_regex=False)]
    )
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus, trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    ))
    tags = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t in tags])  # atomic, not special
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    tok.chat_template = qwen2_5_chat_template  # this exact string: TRL attaches its qwen tool-call parser
    return tok


class Tiny:
    """The tokenizer, and a warmed-up model's config and weights."""

    def __init__(self) -> None:
        pairs = [(a, b) for a in range(10) for b in range(10)]
        boot = _tokenizer(["hello world"], 300)  # only renders the template to text
        corpus = [boot.apply_chat_template(_conversation(a, b), tools=[add], tokenize=False) for a, b in pairs]
        self.tok = tok = _tokenizer(corpus * 3, 1200)
        im_end = tok.convert_tokens_to_ids("<|im_end|>")
        self.config = Qwen2Config(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=None,
            eos_token_id=im_end, pad_token_id=tok.pad_token_id,
        )
        rng = random.Random(0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = Qwen2ForCausalLM(self.config)
            self._warm_up(model, pairs, rng)
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.dataset = Dataset.from_list(
            [{"prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}], "answer": a + b}
             for a, b in rng.sample(pairs, 8)]
        )

    def _warm_up(self, model: Any, pairs: list[tuple[int, int]], rng: random.Random) -> None:
        """Next-token training on the model's turns of whole tool conversations (tool results are context)."""
        tok = self.tok
        rows = []
        for a, b in pairs:
            conv = _conversation(a, b)
            full = tok.apply_chat_template(conv, tools=[add], tokenize=True, return_dict=False)
            train = torch.zeros(len(full), dtype=torch.bool)
            for k in (1, 3):  # the assistant turns: each ends where the rendered prefix up to it ends
                start = len(tok.apply_chat_template(conv[:k], tools=[add], add_generation_prompt=True,
                                                    tokenize=True, return_dict=False))
                end = len(tok.apply_chat_template(conv[: k + 1], tools=[add], tokenize=True, return_dict=False))
                train[start:end] = True
            rows.append((torch.tensor(full), train))
        opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
        model.train()
        for _ in range(90):
            batch = rng.sample(rows, 16)
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((16, width), tok.pad_token_id)
            labels = torch.full((16, width), -100)
            attention = torch.zeros((16, width), dtype=torch.long)
            for i, (x, train) in enumerate(batch):
                ids[i, : len(x)] = x
                attention[i, : len(x)] = 1
                labels[i, : len(x)] = torch.where(train, x, torch.full_like(x, -100))
            model(input_ids=ids, attention_mask=attention, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()

    def model(self) -> Any:
        model = Qwen2ForCausalLM(self.config)
        model.load_state_dict(self.state)
        model.generation_config.eos_token_id = self.config.eos_token_id
        model.generation_config.pad_token_id = self.tok.pad_token_id
        return model


def reward(completions: list[list[dict[str, Any]]], answer: list[int], **_: Any) -> list[float]:
    """0.2 for calling the tool, less 0.02 per unit its arguments' sum misses the answer by; +0.3 when the
    final answer repeats the tool's result, +1 when it is correct. (Shaped so that a weak model's groups
    seldom tie.)"""
    out = []
    for messages, ans in zip(completions, answer, strict=True):
        results = [m["content"] for m in messages if m["role"] == "tool"]
        calls = [c["function"]["arguments"] for m in messages for c in m.get("tool_calls") or []]
        last = messages[-1]
        final = (last.get("content") or "") if last["role"] == "assistant" and not last.get("tool_calls") else ""
        r = 0.2 if results else 0.0
        if results and isinstance(calls[0], dict):
            r -= 0.02 * abs(sum(v for v in calls[0].values() if isinstance(v, int)) - ans)
        r += 0.3 if results and final and results[-1] in final else 0.0
        r += 1.0 if final and str(ans) in final else 0.0
        out.append(r)
    return out


class _TRLRecorder(GRPOTrainer):
    """Sits between StepcreditGRPOTrainer and GRPOTrainer in the MRO: sees TRL's own batch dict."""

    def _generate_and_score_completions(self, inputs: Any) -> Any:
        out = super()._generate_and_score_completions(inputs)
        self.trl_batches.append({k: v.clone() if torch.is_tensor(v) else v for k, v in out.items()})
        return out


class Recorded(StepcreditGRPOTrainer, _TRLRecorder):
    """Records TRL's batches, the gathered rewards, stepcredit's batches and what the loss receives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.trl_batches: list[dict[str, Any]] = []
        self.batches: list[dict[str, Any]] = []
        self.rewards: list[torch.Tensor] = []
        self.loss_inputs: list[dict[str, Any]] = []
        super().__init__(*args, **kwargs)

    def _calculate_rewards(self, *args: Any) -> Any:
        out = super()._calculate_rewards(*args)
        self.rewards.append(out.clone())
        return out

    def _generate_and_score_completions(self, inputs: Any) -> Any:
        out = super()._generate_and_score_completions(inputs)
        self.batches.append({k: v.clone() if torch.is_tensor(v) else v for k, v in out.items()})
        return out

    def _compute_loss(self, model: Any, inputs: Any) -> Any:
        self.loss_inputs.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in inputs.items()})
        return super()._compute_loss(model, inputs)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tensors this small gain nothing from threads, and on a busy machine OpenMP's spinning threads
    cost several times the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    return Tiny()


def _train(tiny: Tiny, out: Path, recipe: Any, *, steps: int = 2, **kwargs: Any) -> Recorded:
    args = GRPOConfig(
        output_dir=str(out), use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
        save_strategy="no", max_steps=steps, per_device_train_batch_size=8, num_generations=NUM_GENERATIONS,
        max_completion_length=32, max_tool_calling_iterations=1, logging_steps=1, learning_rate=1e-3, seed=0,
        disable_dropout=True,
    )
    trainer = Recorded(
        model=tiny.model(), reward_funcs=reward, args=args, train_dataset=tiny.dataset, processing_class=tiny.tok,
        tools=[add], recipe=recipe, **kwargs,
    )
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def consensus_run(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    return _train(tiny, tmp_path_factory.mktemp("trl_consensus"), "call_consensus")


@pytest.fixture(scope="module")
def grpo_run(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    return _train(tiny, tmp_path_factory.mktemp("trl_grpo"), TRL_GRPO, call_identity="tokens")


def _model_mask(batch: dict[str, Any]) -> torch.Tensor:
    return (batch["completion_mask"] * batch["tool_mask"]).bool()


def test_trains_with_real_tool_calls(consensus_run: Recorded) -> None:
    tr = consensus_run
    assert tr.state.global_step == 2
    assert len(tr.batches) == 2 and len(tr.loss_inputs) == 2
    for batch in tr.batches:
        tool_tokens = (batch["completion_mask"] == 1) & (batch["tool_mask"] == 0)
        assert int(tool_tokens.any(dim=1).sum()) >= 2, "tool results spliced into completions"
        assert batch["advantages"].shape == batch["completion_ids"].shape
    logged = [h for h in tr.state.log_history if "stepcredit/trajectories" in h]
    assert len(logged) == 2 and logged[0]["stepcredit/trajectories"] == 8.0
    assert logged[0]["tools/call_frequency"] > 0
    # per-token credit: a call and the answer after its result are credited apart
    assert any(h["stepcredit/step_spread"] > 0 for h in logged)


def _recompute(tok: Any, batch: dict[str, Any], rewards_per_func: torch.Tensor, recipe: Any,
               identity: Any) -> tuple[torch.Tensor, list[str]]:
    """stepcredit's advantages from the recorded batch, without the trainer, and the calls' names."""
    ids, mask = batch["completion_ids"], _model_mask(batch)
    outcome = rewards_per_func[:, 0]  # one reward function, weight 1
    group = torch.arange(ids.shape[0]) // NUM_GENERATIONS
    start, end = (tok.encode(m, add_special_tokens=False) for m in MARKERS)
    rows = from_trainer_tensors(mask, group, outcome=outcome, responses=well_formed_calls(ids, mask, start, end),
                                tool_call_start=start, tool_call_end=end)
    rows = name_calls(rows, ids, identity, decode=tok.batch_decode, markers=MARKERS)
    assert rows.texts is not None
    return TrainerRows.from_rows(rows).run(recipe).advantages, rows.texts.call_name.to_pylist()


def _loss_rows(batch: dict[str, Any], inputs: dict[str, Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each row the loss saw (TRL shuffles the generation batch) with the batch's advantages of the rows
    that hold the same prompt and completion."""
    key = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    for i, row in enumerate(torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)):
        same = (key == row).all(dim=1)
        assert same.any()
        yield inputs["advantages"][i], batch["advantages"][same]


def test_loss_gets_stepcredit_advantages(consensus_run: Recorded, tiny: Tiny) -> None:
    tr = consensus_run
    names = []
    for batch, rewards, inputs in zip(tr.batches, tr.rewards, tr.loss_inputs, strict=True):
        expected, batch_names = _recompute(tiny.tok, batch, rewards, "call_consensus", "text")
        names += batch_names
        adv = batch["advantages"]
        assert adv.dtype == torch.float32 and adv.shape == batch["completion_ids"].shape
        torch.testing.assert_close(adv, expected)
        assert bool((adv[~_model_mask(batch)] == 0).all())
        for got, want in _loss_rows(batch, inputs):
            for w in want:
                torch.testing.assert_close(got, w)
    assert names.count("add") >= 4  # calls read from their JSON


def test_trl_grpo_recipe_equals_trl_advantage(grpo_run: Recorded) -> None:
    tr = grpo_run
    assert tr.state.global_step == 2
    for trl_batch, batch in zip(tr.trl_batches, tr.batches, strict=True):
        mask = _model_mask(batch)
        assert trl_batch["advantages"].dim() == 1
        expected = trl_batch["advantages"][:, None] * mask
        torch.testing.assert_close(batch["advantages"], expected, atol=1e-5, rtol=1e-5)
    assert any(bool(b["advantages"].abs().sum() > 0) for b in tr.trl_batches)


def test_without_call_markers_steps_are_turns(consensus_run: Recorded) -> None:
    batch, rewards = consensus_run.batches[0], consensus_run.rewards[0]
    bare = object.__new__(StepcreditGRPOTrainer)  # only what _run_recipe reads
    bare.stepcredit_call_patterns, bare.stepcredit_recipe = None, Recipe.load("call_consensus")
    mask = _model_mask(batch)
    group = torch.arange(mask.shape[0]) // NUM_GENERATIONS
    credit = bare._run_recipe(batch["completion_ids"], mask, group, rewards[:, 0])
    rows = credit.result.rollouts
    assert rows.num_calls == 0
    assert rows.num_steps == int((torch.diff(mask.int(), dim=1, prepend=torch.zeros(8, 1)) == 1).sum())


def test_combined_rewards_match_trl() -> None:
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(8, 3, generator=g)
    rewards[1, 0] = rewards[5, :] = float("nan")  # a None; an unscorable row
    weights = torch.tensor([1.0, 0.5, -2.0])
    total = combined_rewards(rewards, weights, 4)
    want = (rewards * weights).nansum(dim=1)
    assert torch.isnan(total[5])
    torch.testing.assert_close(total[[0, 1, 2, 3, 4, 6, 7]], want[[0, 1, 2, 3, 4, 6, 7]])
    # normalize_then_sum: TRL's per-function group z-score (its code, grpo_trainer.py), before its batch z-score
    grouped = rewards.view(-1, 4, 3)
    z = ((grouped - torch.nanmean(grouped, dim=1, keepdim=True)) / (nanstd(grouped, dim=1, keepdim=True) + 1e-4))
    want = (z.view(-1, 3) * weights).nansum(dim=1)
    total = combined_rewards(rewards, weights, 4, "normalize_then_sum")
    torch.testing.assert_close(total[[0, 1, 2, 3, 4, 6, 7]], want[[0, 1, 2, 3, 4, 6, 7]])
    with pytest.raises(ValueError, match="multi_objective_aggregation"):
        combined_rewards(rewards, weights, 4, "mean")


def test_malformed_calls_are_ignored() -> None:
    o, c = 7, 8
    ids = torch.tensor([
        [o, 1, c, 2, o, 3, 3, 3],  # a call, then one cut off by the budget
        [c, o, o, 1, c, 2, 0, 0],  # a stray close, then a nested open: only the inner pair is a call
        [o, 1, 5, 5, c, 2, 0, 0],  # the close lies in a tool result (mask 0 at 2..3 splits the turn)
    ])
    mask = torch.tensor([[1] * 8, [1] * 6 + [0] * 2, [1, 1, 0, 0, 1, 1, 0, 0]])
    clean = well_formed_calls(ids, mask, [o], [c])
    assert clean.tolist() == [
        [o, 1, c, 2, -1, 3, 3, 3],
        [-1, -1, o, 1, c, 2, 0, 0],
        [-1, 1, 5, 5, -1, 2, 0, 0],
    ]
    rows = from_trainer_tensors(mask, [0, 0, 0], outcome=torch.zeros(3), responses=clean, tool_call_start=[o],
                                tool_call_end=[c])
    assert rows.calls_per_trajectory.tolist() == [1, 1, 0]


def test_bad_setup_fails_clearly(tiny: Tiny, tmp_path: Path) -> None:
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", num_generations=4,
                      per_device_train_batch_size=4)
    common: dict[str, Any] = {"model": None, "reward_funcs": reward, "args": args, "train_dataset": tiny.dataset,
                              "processing_class": tiny.tok}
    with pytest.raises(RecipeError, match="unknown recipe 'no_such_recipe'"):
        StepcreditGRPOTrainer(**common, recipe="no_such_recipe")
    with pytest.raises(ValueError, match="call_identity"):
        StepcreditGRPOTrainer(**common, call_identity="json")
    with pytest.raises(ValueError, match="tool_call_markers"):
        StepcreditGRPOTrainer(**common, tool_call_markers=("<tool_call>", ""))


def test_trl_version_is_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    check_trl_version(trl.__version__)
    with pytest.raises(ImportError, match=r"trl==1\.16\.0 \(installed: 1\.17\.0\)"):
        check_trl_version("1.17.0")
    monkeypatch.setattr(trl, "__version__", "1.15.2")
    with pytest.raises(ImportError, match=r"installed: 1\.15\.2"):
        importlib.reload(sc_trl)


def test_groups_split_across_two_processes_are_gathered() -> None:
    """Two CPU processes (gloo), 4 completions each, one group of 8: the recipe sees the whole group
    (its advantage equals TRL's own, which TRL computes on the gathered rewards)."""
    import os
    import re
    import subprocess
    import sys

    script = Path(__file__).with_name("trl_ddp.py")
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = re.findall(r"RESULT rank=(\d) rows=\d+ match=(True|False)", out.stdout)
    assert {rank for rank, _ in found} == {"0", "1"} and len(found) >= 4, out.stdout[-2000:]
    assert all(match == "True" for _, match in found), found
