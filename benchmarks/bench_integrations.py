"""What a trainer pays per batch for stepcredit credit through the integrations, vs verl and the floor.

Run: ``.venv/bin/python benchmarks/bench_integrations.py`` (one run, all sizes; ~2 minutes on 2 cores).

Inputs: a verl-layout multi-turn batch — rows of 2–6 model turns separated by tool outputs
(``response_mask`` 0), every turn but the last one tool call ``<tool_call> body </tool_call>`` whose body
is one of 64 token sequences (so calls repeat across the group), a 0/1 score on the last token, group
size 8, every fourth session split into two rows (``{uid}_{session}_{index}``). Methods, timed in one
process (median after a warm-up), each from the raw tensors to the ``(B, T)`` advantage:

* ``floor``: ``scores[:, None] * mask`` (scores summed beforehand);
* ``verl grpo_vectorized``: verl 0.9.1's fastest outcome estimator (no turns, no calls);
* ``stepcredit_grpo``: the registered estimator (steps from mask runs, groups from uids, broadcast);
* ``trainer mode: grpo`` / ``per_turn``: ``rows_from_verl`` (sessions joined) + the recipe, no calls;
* ``trainer mode: call_consensus (tokens)`` / ``(text)``: + tool calls found by their markers and named
  by token ids / by decoding their JSON with a tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from timing import median_ms, uid_index  # benchmarks/timing.py

SIZES = [(1024, 1024), (1024, 4096), (4096, 2048)]
GROUP = 8
OPEN, CLOSE = 5, 6  # marker ids in the synthetic vocabulary (the text variant maps them to strings)


def make_batch(b: int, t: int, seed: int = 0) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(10, 200, size=(b, t))
    mask = np.zeros((b, t), dtype=np.int64)
    bodies = rng.integers(10, 200, size=(64, 12))
    scores = np.zeros((b, t), dtype=np.float32)
    for i in range(b):  # building the synthetic input, not timed
        pos, turns = 0, int(rng.integers(2, 7))
        for k in range(turns):
            length = int(rng.integers(16, max(17, t // (2 * turns))))
            if pos + length >= t:
                break
            mask[i, pos : pos + length] = 1
            if k < turns - 1 and length >= 15:
                ids[i, pos], ids[i, pos + 1 : pos + 13], ids[i, pos + 13] = OPEN, bodies[rng.integers(64)], CLOSE
            pos += length + int(rng.integers(8, 32))  # the tool output
        last = int(np.nonzero(mask[i])[0][-1])
        scores[i, last] = float(rng.random() < 0.5)
    index = uid_index(b, GROUP, rng)
    keys, s = [], 0
    for i in range(b):  # every fourth session split over two rows
        if i % 4 == 1:
            keys.append(f"{index[i]}_{s - 1}_1")
        else:
            keys.append(f"{index[i]}_{s}_0")
            s += 1
    return {"responses": torch.from_numpy(ids), "mask": torch.from_numpy(mask), "rewards": torch.from_numpy(scores),
            "index": index, "keys": keys}


def decoder() -> Callable[[list[list[int]]], list[str]]:
    """A batch decoder that turns a call's ids into Hermes-style JSON text (stands in for a tokenizer's
    ``batch_decode``: the cost of decoding and parsing is what is measured)."""
    def decode(spans: list[list[int]]) -> list[str]:
        return [f'<tool_call>{{"name": "t{s[1] % 7}", "arguments": {{"x": {s[2:-1]}}}}}</tool_call>' for s in spans]

    return decode


def methods(batch: dict[str, object]) -> dict[str, Callable[[], object]]:
    from verl.trainer.ppo import core_algos

    import stepcredit.integrations.verl.plugin  # noqa: F401  (registers stepcredit_*)
    from stepcredit.integrations.verl.estimators import rows_from_verl

    mask, rewards, ids = batch["mask"], batch["rewards"], batch["responses"]
    assert isinstance(mask, torch.Tensor) and isinstance(rewards, torch.Tensor) and isinstance(ids, torch.Tensor)
    index, keys = batch["index"], batch["keys"]
    fmask = mask.float()
    scores = rewards.sum(-1)
    vec = core_algos.get_adv_estimator_fn("grpo_vectorized")
    ours = core_algos.get_adv_estimator_fn("stepcredit_grpo")

    def mode(recipe: str, calls: str | None) -> Callable[[], object]:
        def run() -> object:
            rows = rows_from_verl(
                mask, index, rewards, responses=ids, keys=keys,  # type: ignore[arg-type]
                tool_call=None if calls is None else ([OPEN], [CLOSE]),
                call_identity=calls or "tokens", decode=decoder(),
            )
            return rows.run(recipe).advantages
        return run

    return {
        "floor": lambda: scores[:, None] * fmask,
        "verl grpo_vectorized": lambda: vec(rewards, fmask, index),
        "stepcredit_grpo": lambda: ours(rewards, mask, index),
        "trainer mode: grpo": mode("grpo", None),
        "trainer mode: per_turn": mode("per_turn", None),
        "trainer mode: call_consensus (tokens)": mode("call_consensus", "tokens"),
        "trainer mode: call_consensus (text)": mode("call_consensus", "text"),
    }


def main() -> None:
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    header = "| B | T | method | ms | × floor | × verl vectorized |"
    print(header)
    print("|" + "---|" * 6)
    for b, t in SIZES:
        batch = make_batch(b, t)
        found = methods(batch)
        times = {name: median_ms(fn, repeats=5) for name, fn in found.items()}
        for name, ms in times.items():
            print(f"| {b} | {t} | {name} | {ms:.1f} | {ms / times['floor']:.1f} | "
                  f"{ms / times['verl grpo_vectorized']:.2f} |")


if __name__ == "__main__":
    main()
