"""The rollout engine: G chains per task, or Tree-GRPO trees, from any policy, in batches.

Every live trajectory (a *thread*: its own environment, its context, its path of nodes) advances one
step per round; each round asks the policy once for the actions of *all* live threads (split into
``batch_size`` pieces), so an LM policy generates for a whole batch at a time, not one env at a time.

**Nodes.** Each step taken is a node: the action, the observation and tool calls it caused, its labels
(from the environment), the generated token ids and log-probs, the environment's snapshot after it.
A trajectory is a root→leaf path of nodes.

**Chains** (``rollout_chains``): ``group_size`` independent runs per task.

**Trees** (``rollout_trees``, Tree-GRPO, Ji et al. 2025, arXiv:2509.21240): per task, ``trees`` (M)
trees each start as one chain; then for ``iterations`` (L) rounds, in every tree, ``expand`` (N) nodes
are picked uniformly at random (with replacement) among the root and the non-leaf nodes, and from each
a new branch is generated to termination (the environment restored at the node, the context continued
from it); optionally ``keep`` (K) leaves per tree are kept at random. ``expand_from="tool"`` picks only
among nodes right after a tool result (the root included), in the spirit of ARPO's branching after tool
calls (ARPO's entropy trigger is not modelled: any such node is a candidate). A shared prefix is
generated once; every leaf through it repeats its tokens in the batch (Tree-GRPO's credit mechanism).

**Malformed calls.** An action the environment cannot parse but that opens as a call of one of its
tools (``div(a=5, b=``…) is recorded as a *failed call* of that tool — its raw text as the arguments,
the error observation as the result, ``call_ok`` error, label 0 — as the log loaders keep a call whose
arguments are not JSON: a format error is the model's, and call-level credit must be able to reach it.

**Output** (``TrainingBatch``): a ``Rollouts`` with one group per task, ``tree`` ids (trees only), the
environment's labels (``label``, ``call_label``), ``tool_ok``, and ``state`` = the node id of every step
for trees (steps on a shared prefix share it, as ``tree_grpo`` expects) or history-derived keys for
chains; with a ``ChatFormat``, the token columns (``response_mask``, step and call token spans) plus,
beside the ``Rollouts``, what only training needs: prompt ids, response ids and old log-probs. Token
budget: ``generated_tokens`` counts every generated token once (a shared prefix once), and
``tokens_per_trajectory`` divides it by the trajectories kept.

Every random choice (environment seeds, node picks, leaf sampling) comes from ``seed``; policies own
their generators. The same seed, policy seed and inputs give the same batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from stepcredit.core import (
    TOOL_ERROR,
    TOOL_OK,
    CallRecord,
    Rollouts,
    StepRecord,
    TrajectoryRecord,
    build,
    segments,
)
from stepcredit.envs.actions import attempted_call, call_spans
from stepcredit.envs.base import Snapshot, ToolEnv
from stepcredit.generation.chat_format import ChatFormat
from stepcredit.generation.policy import Context, Generation, Policy

__all__ = ["Node", "TrainingBatch", "rollout_chains", "rollout_trees"]

EnvFactory = Callable[[], ToolEnv]
Progress = Callable[[int], None]


@dataclass
class Node:
    """One step taken: what was done and seen, and the state after it."""

    id: int
    parent: int | None  # None: the first step (taken from the root, the reset state)
    step: StepRecord
    context: Context  # the context after the step (what the next step would see)
    snapshot: Snapshot | None  # the environment after the step; None at a leaf
    terminal: bool
    outcome: float
    gen_ids: list[int] | None = None
    logprobs: list[float] | None = None
    obs_ids: list[int] | None = None
    has_tool_result: bool = False


@dataclass
class Root:
    task: int
    tree: str
    snapshot: Snapshot
    context: Context
    prompt_ids: list[int] | None
    children: int = 0
    reference: str | None = None  # the verifier's answer (``ToolEnv.reference_answer``), for critics and judges


@dataclass
class _Thread:
    env: ToolEnv
    context: Context
    root: Root
    path: list[int] = field(default_factory=list)


@dataclass
class TrainingBatch:
    """Rollouts for the credit layer, and beside them what only training needs (token ids, log-probs).

    ``prompt_ids`` are per trajectory (lists); ``response_ids`` / ``old_logprobs`` are ``(N, T)`` aligned
    with ``rollouts.response_mask`` (0 / 0.0 outside generated tokens); all three are None without a
    ``ChatFormat``. ``nodes`` maps node id → ``Node``; ``paths`` the node ids of each trajectory.
    """

    rollouts: Rollouts
    paths: list[list[int]]
    nodes: dict[int, Node]
    generated_tokens: int
    prompt_ids: list[list[int]] | None = None
    response_ids: Tensor | None = None
    old_logprobs: Tensor | None = None
    off_policy: Tensor | None = None  # (N,) bool: trajectories not sampled from the policy on their prompt
    references: list[str | None] | None = None  # per trajectory, the verifier's answer (None: the family has none)
    stats: dict[str, float] = field(default_factory=dict)  # generation-side methods' counters

    def context_ids(self, trajectory: int, step: int) -> list[int]:
        """The ids the policy saw before step ``step`` of ``trajectory``: its prompt, then every earlier
        action and observation, ending with the assistant marker (needs a ``ChatFormat``)."""
        if self.prompt_ids is None:
            raise ValueError("no token ids: roll out with a ChatFormat")
        path = self.paths[trajectory]
        ids = self.prompt_ids[trajectory] if step == 0 else self.nodes[path[step - 1]].context.token_ids
        assert ids is not None
        return list(ids)

    @property
    def tokens_per_trajectory(self) -> float:
        """Generated tokens (a shared prefix counted once) per kept trajectory."""
        return self.generated_tokens / max(self.rollouts.num_trajectories, 1)

    @property
    def success_rate(self) -> float:
        return float(self.rollouts.outcome.mean()) if self.rollouts.num_trajectories else math.nan


class Engine:
    def __init__(
        self,
        make_env: EnvFactory,
        policy: Policy,
        chat_format: ChatFormat | None,
        seed: int,
        batch_size: int | None,
        progress: Progress | None,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size!r}")
        self.make_env, self.policy, self.format = make_env, policy, chat_format
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.batch_size = batch_size
        self.progress = progress
        self.nodes: dict[int, Node] = {}
        self.generated = 0

    # ------------------------------------------------------------------ roots and threads
    def root(self, task: int, tree: str) -> Root:
        env = self.make_env()
        env_seed = int(self.rng.integers(2**31))
        obs, info = env.reset(seed=env_seed, options={"task": task})
        prompt_ids = self.format.encode_prompt(obs) if self.format else None
        context = Context(
            task=str(info["task"]),
            messages=[{"role": "user", "content": obs}],
            info=info,
            token_ids=list(prompt_ids) if prompt_ids is not None else None,
            key=str(info["state_key"]),
        )
        reference = getattr(getattr(env, "unwrapped", env), "reference_answer", None)
        return Root(task, tree, env.snapshot(), context, prompt_ids, reference=reference() if reference else None)

    def thread_from(self, root: Root, node: Node | None) -> _Thread:
        env = self.make_env()
        env.reset(options={"task": root.task})
        snapshot = root.snapshot if node is None else node.snapshot
        assert snapshot is not None, "cannot branch from a leaf"
        env.restore(snapshot)
        context = root.context if node is None else node.context
        path = [] if node is None else self.path_to(node.id)
        return _Thread(env, _copy_context(context), root, path)

    def path_to(self, node_id: int) -> list[int]:
        path = []
        current: int | None = node_id
        while current is not None:
            path.append(current)
            current = self.nodes[current].parent
        return path[::-1]

    # ------------------------------------------------------------------ playing
    def generate(self, contexts: list[Context]) -> list[Generation]:
        size = self.batch_size or len(contexts)
        out: list[Generation] = []
        for start in range(0, len(contexts), size):
            chunk = contexts[start : start + size]
            gens = list(self.policy.act(chunk))
            if len(gens) != len(chunk):
                raise ValueError(f"the policy returned {len(gens)} generations for {len(chunk)} contexts")
            out.extend(gens)
        return out

    def play(self, threads: list[_Thread]) -> list[list[int]]:
        """Run every thread to termination, all live threads one step per round; their paths."""
        done: list[list[int]] = []
        live = threads
        while live:
            gens = self.generate([t.context for t in live])
            still = []
            for thread, gen in zip(live, gens, strict=True):
                node = self.advance(thread, gen)
                thread.path.append(node.id)
                if node.terminal:
                    done.append(thread.path)
                    if self.progress is not None:
                        self.progress(1)
                else:
                    still.append(thread)
            live = still
        return done

    def advance(self, thread: _Thread, gen: Generation) -> Node:
        obs, reward, terminated, truncated, info = thread.env.step(gen.text)
        terminal = bool(terminated or truncated)
        calls = [
            CallRecord(c["name"], c["arguments"], c["result"], TOOL_OK if c["ok"] else TOOL_ERROR, int(c["label"]))
            for c in info["calls"]
        ]
        if info.get("error") is not None and not calls:
            attempt = self._attempted_call(thread, gen.text)
            if attempt is not None:  # a malformed call is a failed call of that tool (label 0: it changed nothing)
                calls = [CallRecord(attempt, gen.text, obs, TOOL_ERROR, 0)]
        step = StepRecord(action=gen.text, observation=obs, calls=calls, label=int(info["label"]))
        gen_ids = obs_ids = None
        context = thread.context
        messages = [
            *context.messages,
            {"role": "assistant", "content": gen.text},
            {"role": "tool", "content": obs},
        ]
        token_ids = None
        if self.format is not None:
            gen_ids = list(gen.token_ids) if gen.token_ids is not None else self.format.encode_action(gen.text)
            obs_ids = [] if terminal else self.format.encode_observation(obs)
            assert context.token_ids is not None
            token_ids = [*context.token_ids, *gen_ids, *obs_ids]
            self.generated += len(gen_ids)
        node = Node(
            id=len(self.nodes),
            parent=thread.path[-1] if thread.path else None,
            step=step,
            context=Context(
                task=context.task,
                messages=messages,
                info=info,
                token_ids=token_ids,
                step=context.step + 1,
                key=str(info["state_key"]),
            ),
            snapshot=None if terminal else thread.env.snapshot(),
            terminal=terminal,
            outcome=float(reward) if terminal else 0.0,
            gen_ids=gen_ids,
            logprobs=list(gen.logprobs) if gen.logprobs is not None else None,
            obs_ids=obs_ids,
            has_tool_result=bool(calls),
        )
        self.nodes[node.id] = node
        thread.context = node.context
        return node

    # ------------------------------------------------------------------ output
    def batch(self, paths: list[tuple[Root, list[int]]], *, trees: bool) -> TrainingBatch:
        records = []
        for k, (root, path) in enumerate(paths):
            steps = []
            for node_id in path:
                step = self.nodes[node_id].step
                steps.append(
                    StepRecord(
                        action=step.action,
                        observation=step.observation,
                        calls=step.calls,
                        label=step.label,
                        state=node_id if trees else None,
                    )
                )
            records.append(
                TrajectoryRecord(
                    id=f"{root.context.task}#{root.tree}.{k}" if trees else f"{root.context.task}#{root.tree}",
                    group=root.context.task,
                    outcome=self.nodes[path[-1]].outcome,
                    steps=steps,
                    prompt=root.context.messages[0]["content"],
                    tree=root.tree if trees else None,
                )
            )
        if self.format is None:
            return TrainingBatch(build(records), [p for _, p in paths], self.nodes, self.generated,
                                references=[root.reference for root, _ in paths])
        return self._with_tokens(records, paths)

    def _with_tokens(self, records: list[TrajectoryRecord], paths: list[tuple[Root, list[int]]]) -> TrainingBatch:
        assert self.format is not None
        responses: list[list[int]] = []
        logprobs: list[list[float]] = []
        masks: list[list[bool]] = []
        step_spans: list[tuple[int, int]] = []
        call_spans_all: list[tuple[int, int]] = []
        for _, path in paths:
            ids: list[int] = []
            lps: list[float] = []
            mask: list[bool] = []
            for node_id in path:
                node = self.nodes[node_id]
                assert node.gen_ids is not None and node.obs_ids is not None
                start = len(ids)
                ids.extend(node.gen_ids)
                lps.extend(node.logprobs if node.logprobs is not None else [0.0] * len(node.gen_ids))
                mask.extend([True] * len(node.gen_ids))
                step_spans.append((start, len(ids)))
                call_spans_all.extend(self._call_token_spans(node, start))
                ids.extend(node.obs_ids)
                lps.extend([0.0] * len(node.obs_ids))
                mask.extend([False] * len(node.obs_ids))
            responses.append(ids)
            logprobs.append(lps)
            masks.append(mask)
        # one flat tensor per column, placed at (trajectory, position) in one indexing step
        lengths = torch.tensor([len(r) for r in responses], dtype=torch.int64)
        n, width = len(responses), int(lengths.max()) if responses else 0
        rows = segments.segment_ids(torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)]))
        cols = segments.ranges(torch.zeros_like(lengths), lengths)
        response_ids = torch.full((n, width), self.format.pad_id, dtype=torch.int64)
        old_logprobs = torch.zeros((n, width), dtype=torch.float32)
        response_mask = torch.zeros((n, width), dtype=torch.bool)
        response_ids[rows, cols] = torch.tensor([t for r in responses for t in r], dtype=torch.int64)
        old_logprobs[rows, cols] = torch.tensor([x for r in logprobs for x in r], dtype=torch.float32)
        response_mask[rows, cols] = torch.tensor([m for r in masks for m in r], dtype=torch.bool)
        base = build(records)
        steps = torch.tensor(step_spans, dtype=torch.int64).reshape(-1, 2)
        calls = torch.tensor(call_spans_all, dtype=torch.int64).reshape(-1, 2)
        rollouts = replace(
            base,
            response_mask=response_mask,
            step_token_start=steps[:, 0],
            step_token_end=steps[:, 1],
            call_token_start=calls[:, 0],
            call_token_end=calls[:, 1],
        )
        return TrainingBatch(
            rollouts,
            [p for _, p in paths],
            self.nodes,
            self.generated,
            prompt_ids=[list(root.prompt_ids or []) for root, _ in paths],
            response_ids=response_ids,
            old_logprobs=old_logprobs,
            references=[root.reference for root, _ in paths],
        )

    @staticmethod
    def _attempted_call(thread: _Thread, action: str) -> str | None:
        """The tool a malformed action set out to call (``name(``…), if the environment offers it (any
        name where the environment lists no tools)."""
        name = attempted_call(action)
        tools = getattr(getattr(thread.env, "unwrapped", thread.env), "tools", None)
        if name is None or tools is None:
            return name
        return name if name in {t.name for t in tools} else None

    def _call_token_spans(self, node: Node, start: int) -> list[tuple[int, int]]:
        """Token spans of the node's calls: the tokens covering each call's text when the action is a
        compact call list, else the whole step (chat-format calls, or calls the text does not show)."""
        assert self.format is not None and node.gen_ids is not None
        n_calls = len(node.step.calls)
        whole = (start, start + len(node.gen_ids))
        if n_calls == 1:  # an action with one call is that call, up to the end-of-action token
            ends_with_end = bool(node.gen_ids) and node.gen_ids[-1] == self.format.end_id
            return [(start, max(start + 1, whole[1] - int(ends_with_end)))]
        spans = call_spans(node.step.action) if n_calls else None
        if spans is None or len(spans) != n_calls:
            return [whole] * n_calls
        # character offset at which each generated token ends (the action text is decoded from them)
        ends, text = [], ""
        for i in range(len(node.gen_ids)):
            text = self.format.tokenizer.decode(node.gen_ids[: i + 1], skip_special_tokens=True)
            ends.append(len(text))
        lead = len(text) - len(text.lstrip())
        out = []
        for a, b in spans:
            first = next((i for i, e in enumerate(ends) if e > a + lead), len(ends) - 1)
            last = next((i for i, e in enumerate(ends) if e >= b + lead), len(ends) - 1)
            out.append((start + first, start + last + 1))
        return out


def _copy_context(context: Context) -> Context:
    return Context(
        task=context.task,
        messages=list(context.messages),
        info=context.info,
        token_ids=list(context.token_ids) if context.token_ids is not None else None,
        step=context.step,
        key=context.key,
    )


def rollout_chains(
    make_env: EnvFactory,
    policy: Policy,
    tasks: Sequence[int],
    *,
    group_size: int = 8,
    chat_format: ChatFormat | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> TrainingBatch:
    """``group_size`` independent runs of each task in ``tasks`` (task indices of ``make_env()``'s split)."""
    if group_size < 1:
        raise ValueError(f"group_size must be positive, got {group_size!r}")
    engine = Engine(make_env, policy, chat_format, seed, batch_size, progress)
    threads = []
    for task in tasks:
        for k in range(group_size):
            root = engine.root(int(task), f"c{k}")
            threads.append(engine.thread_from(root, None))
    roots = [t.root for t in threads]
    paths = engine.play(threads)
    by_root = {id(t.root): t.path for t in threads}
    del paths
    return engine.batch([(root, by_root[id(root)]) for root in roots], trees=False)


def rollout_trees(
    make_env: EnvFactory,
    policy: Policy,
    tasks: Sequence[int],
    *,
    trees: int = 2,
    expand: int = 2,
    iterations: int = 1,
    keep: int | None = None,
    expand_from: Literal["any", "tool"] = "any",
    chat_format: ChatFormat | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> TrainingBatch:
    """Tree-GRPO rollouts (see the module docstring): ``trees`` = M, ``expand`` = N, ``iterations`` = L,
    ``keep`` = K leaves per tree (all when None). Each tree yields at most ``1 + N·L`` leaves."""
    for name, value in (("trees", trees), ("expand", expand)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value!r}")
    if iterations < 0:
        raise ValueError(f"iterations must be non-negative, got {iterations!r}")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be positive, got {keep!r}")
    if expand_from not in ("any", "tool"):
        raise ValueError(f"expand_from must be 'any' or 'tool', got {expand_from!r}")
    engine = Engine(make_env, policy, chat_format, seed, batch_size, progress)
    roots = [engine.root(int(task), f"t{m}") for task in tasks for m in range(trees)]
    leaves: dict[int, list[list[int]]] = {id(r): [] for r in roots}
    threads = [engine.thread_from(r, None) for r in roots]
    engine.play(threads)
    for t in threads:
        leaves[id(t.root)].append(t.path)
    for _ in range(iterations):
        threads = []
        for root in roots:
            inner = sorted({n for path in leaves[id(root)] for n in path if not engine.nodes[n].terminal})
            if expand_from == "tool":
                inner = [n for n in inner if engine.nodes[n].has_tool_result]
            candidates: list[Node | None] = [None, *(engine.nodes[n] for n in inner)]
            for pick in engine.rng.integers(len(candidates), size=expand):
                threads.append(engine.thread_from(root, candidates[int(pick)]))
        engine.play(threads)
        for t in threads:
            leaves[id(t.root)].append(t.path)
    kept: list[tuple[Root, list[int]]] = []
    for root in roots:
        paths = leaves[id(root)]
        if keep is not None and keep < len(paths):
            chosen = sorted(engine.rng.choice(len(paths), size=keep, replace=False).tolist())
            paths = [paths[i] for i in chosen]
        kept.extend((root, p) for p in paths)
    return engine.batch(kept, trees=True)
