"""Slow, obviously-correct loop versions of the structural estimators, written from the papers' and
reference code's descriptions (shared/research). Tests compare against them; benchmarks time them."""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from stepcredit import Rollouts


def _norm(xs: list[float], x: float, *, eps: float = 1e-6, singleton_raw: bool = True) -> float:
    if len(xs) == 1:
        return x / (1 + eps) if singleton_raw else 0.0
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((v - mean) ** 2 for v in xs) / (len(xs) - 1))
    if max(xs) == min(xs):
        return 0.0
    return (x - mean) / (std + eps)


def _rows(r: Rollouts):
    off = r.step_offsets.tolist()
    group, outcome, state = r.group.tolist(), r.outcome.tolist(), r.state.tolist()
    tree = r.tree.tolist() if r.tree is not None else list(range(len(outcome)))
    paths = [[state[s] for s in range(off[i], off[i + 1])] for i in range(len(outcome))]
    return group, outcome, tree, paths


def tree_grpo_loop(r: Rollouts) -> torch.Tensor:
    """Tree-GRPO's ``adv_estimator == 'tree'``: dicts keyed by uid and tree uid, GRPO each, summed."""
    group, outcome, tree, _ = _rows(r)
    by_uid, by_tree = defaultdict(list), defaultdict(list)
    for g, t, x in zip(group, tree, outcome, strict=True):
        by_uid[g].append(x)
        by_tree[(g, t)].append(x)
    return torch.tensor(
        [_norm(by_uid[g], x) + _norm(by_tree[(g, t)], x) for g, t, x in zip(group, tree, outcome, strict=True)]
    )


def _leaves(group, paths):
    leaves = defaultdict(set)
    for i, path in enumerate(paths):
        for node in path:
            leaves[(group[i], node)].add(i)
    return leaves


def treerl_loop(r: Rollouts) -> torch.Tensor:
    """Per step: ([V(n) − V(root)] + [V(n) − V(parent)]) / sqrt(|leaves(n)|), V = mean leaf outcome."""
    group, outcome, _, paths = _rows(r)
    leaves = _leaves(group, paths)
    by_group = defaultdict(list)
    for g, x in zip(group, outcome, strict=True):
        by_group[g].append(x)

    def value(key):
        return sum(outcome[j] for j in leaves[key]) / len(leaves[key])

    out = []
    for i, path in enumerate(paths):
        root = sum(by_group[group[i]]) / len(by_group[group[i]])
        for t, node in enumerate(path):
            v = value((group[i], node))
            parent = root if t == 0 else value((group[i], path[t - 1]))
            out.append(((v - root) + (v - parent)) / math.sqrt(len(leaves[(group[i], node)])))
    return torch.tensor(out)


def treepo_loop(r: Rollouts, *, whiten: bool = True) -> torch.Tensor:
    """Mean over the distinct leaf sets on a leaf's path (the task group always; a node's set only if
    it holds >1 leaf and differs from its parent's) of R_i − mean(set); then batch whitening."""
    group, outcome, _, paths = _rows(r)
    leaves = _leaves(group, paths)
    members = defaultdict(set)
    for i, g in enumerate(group):
        members[g].add(i)
    adv = []
    for i, path in enumerate(paths):
        root = members[group[i]]
        diffs = [outcome[i] - (sum(outcome[j] for j in root) / len(root) if len(root) > 1 else 0.0)]
        parent = root
        for node in path:
            s = leaves[(group[i], node)]
            if len(s) > 1 and s != parent:
                diffs.append(outcome[i] - sum(outcome[j] for j in s) / len(s))
            parent = s
        adv.append(sum(diffs) / len(diffs))
    x = torch.tensor(adv, dtype=torch.float64)
    if not whiten:
        return x.float()
    n = len(adv)
    mean = x.sum() / (n + 1e-8)
    var = ((x - mean) ** 2).sum() / (n + 1e-8) * (n / (n - 1) if n > 1 else 1.0)
    return ((x - mean) / torch.sqrt(var + 1e-8)).float()


def gigpo_oracle(r: Rollouts, *, step_weight, mode, gamma, eps, episode_weighting):
    """One row per step, dict loops, as verl-agent: episode score per row = the episode's total
    reward; episode stats over step rows (or each trajectory once); singleton episode group → mean 0,
    std 1; step return G_t discounted within the trajectory; step groups by (group, state); singleton
    step group → A_S = 0; A = A_E + w · A_S."""
    offsets = r.step_offsets.tolist()
    outcome, reward = r.outcome.tolist(), r.reward.tolist()
    group, state = r.group.tolist(), r.state.tolist()
    n = len(outcome)
    total = [outcome[i] + sum(reward[offsets[i] : offsets[i + 1]]) for i in range(n)]
    scores = defaultdict(list)
    for i in range(n):
        copies = offsets[i + 1] - offsets[i] if episode_weighting == "steps" else 1
        scores[group[i]].extend([total[i]] * copies)
    episode = []
    for i in range(n):
        xs = scores[group[i]]
        if len(xs) <= 1:
            mean, std = 0.0, 1.0
        else:
            mean = sum(xs) / len(xs)
            std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
        episode.append(total[i] - mean if mode == "mean_norm" else (total[i] - mean) / (std + eps))
    returns = [0.0] * offsets[-1]
    for i in range(n):
        g = 0.0
        for s in reversed(range(offsets[i], offsets[i + 1])):
            g = reward[s] + (outcome[i] if s == offsets[i + 1] - 1 else 0.0) + gamma * g
            returns[s] = g
    members = defaultdict(list)
    step_traj = [i for i in range(n) for _ in range(offsets[i], offsets[i + 1])]
    for s in range(offsets[-1]):
        members[(group[step_traj[s]], state[s])].append(returns[s])
    out = []
    for s in range(offsets[-1]):
        xs = members[(group[step_traj[s]], state[s])]
        if len(xs) == 1:
            a_s = 0.0
        else:
            mean = sum(xs) / len(xs)
            std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
            a_s = returns[s] - mean if mode == "mean_norm" else (returns[s] - mean) / (std + eps)
        out.append(episode[step_traj[s]] + step_weight * a_s)
    return torch.tensor(out, dtype=torch.float64)


def gigpo_verl_agent_style(r: Rollouts, *, step_weight, mode, gamma, eps, episode_weighting):
    """The same computation in the *cost structure* of verl-agent's reference code: one row per step,
    per-row torch scalars gathered into dicts, ``torch.mean`` / ``torch.std`` per group, per-row
    tensor writes (the token broadcast ``scores[:, None] * mask`` is left out). Used by the benchmark
    as the reference implementation's speed; tests check it agrees."""
    offsets = r.step_offsets.tolist()
    n, s_total = r.num_trajectories, offsets[-1]
    step_traj = r.step_traj.tolist()
    group = r.group.tolist()
    index = [group[i] for i in step_traj]
    total = (r.outcome + torch.zeros(n).index_add_(0, r.step_traj, r.reward)).double()
    scores = total[r.step_traj].clone()
    remove_std = mode == "mean_norm"
    id2score = defaultdict(list)
    seen = set()
    for i in range(s_total):
        if (index[i], step_traj[i]) in seen:
            continue
        id2score[index[i]].append(scores[i])
        if episode_weighting == "trajectories":
            seen.add((index[i], step_traj[i]))
    id2mean, id2std = {}, {}
    for idx, xs in id2score.items():
        if len(xs) == 1:
            id2mean[idx], id2std[idx] = torch.tensor(0.0), torch.tensor(1.0)
        else:
            id2mean[idx], id2std[idx] = torch.mean(torch.tensor(xs)), torch.std(torch.tensor([xs]))
    episode = scores.clone()
    for i in range(s_total):
        if remove_std:
            episode[i] = scores[i] - id2mean[index[i]]
        else:
            episode[i] = (scores[i] - id2mean[index[i]]) / (id2std[index[i]] + eps)
    rewards = r.reward.double().clone()
    last = r.step_offsets[1:][r.steps_per_trajectory > 0] - 1
    rewards[last] += r.outcome[r.steps_per_trajectory > 0].double()
    returns = torch.zeros(s_total, dtype=torch.float64)
    for i in range(n):
        g = 0.0
        for t in reversed(range(offsets[i], offsets[i + 1])):
            g = float(rewards[t]) + gamma * g
            returns[t] = g
    state = r.state.tolist()
    uid = {}
    step_uid = [uid.setdefault((index[i], state[i]), len(uid)) for i in range(s_total)]
    id2score = defaultdict(list)
    for i in range(s_total):
        id2score[step_uid[i]].append(returns[i])
    id2mean, id2std = {}, {}
    for idx, xs in id2score.items():
        id2mean[idx] = torch.mean(torch.tensor(xs))
        id2std[idx] = torch.tensor(1.0) if len(xs) == 1 else torch.std(torch.tensor([xs]))
    step = returns.clone()
    for i in range(s_total):
        if remove_std:
            step[i] = returns[i] - id2mean[step_uid[i]]
        else:
            step[i] = (returns[i] - id2mean[step_uid[i]]) / (id2std[step_uid[i]] + eps)
    return episode + step_weight * step
