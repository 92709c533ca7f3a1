"""Tree-structured credit: Tree-GRPO, TreeRL, TreePO.

A rollout tree is given by ``Rollouts.tree`` (which tree of its group a trajectory belongs to; each
trajectory is one root→leaf path) and ``Rollouts.state`` (the node id of every step, shared by all
leaves whose paths pass through that node). A trajectory without a tree is a chain: a tree with one
leaf. Nodes are identified by ``(group, state)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from stepcredit.core import Rollouts, segments
from stepcredit.core.credit import Credit
from stepcredit.core.registry import register
from stepcredit.core.segments import Norm, Singleton
from stepcredit.estimators.outcome import Weighting, token_weights


class Nodes:
    """The tree nodes of a batch: every step's node, and each node's set of leaves (trajectories)."""

    def __init__(self, rollouts: Rollouts) -> None:
        r = rollouts
        self.of_step, self.count = r.decision_points
        # (node, leaf) pairs, each counted once even if a path visits a node twice
        self.pair_of_step, num_pairs = segments.unique_pairs(self.of_step, r.step_traj, a_size=self.count)
        self.pair_node, self.pair_leaf = segments.pair_members(self.pair_of_step, num_pairs, self.of_step, r.step_traj)
        self.leaves = segments.segment_count(self.pair_node, self.count)
        self.value = segments.segment_mean(r.outcome[self.pair_leaf], self.pair_node, self.count)

    def parent_value_and_leaves(self, rollouts: Rollouts) -> tuple[Tensor, Tensor]:
        """Per step: V and leaf count of its parent node (the previous step's node; the group, i.e.
        the root, for a trajectory's first step)."""
        r = rollouts
        group_value = segments.segment_mean(r.outcome, r.group, r.num_groups)
        group_size = segments.segment_count(r.group, r.num_groups)
        first = torch.zeros(r.num_steps, dtype=torch.bool, device=r.device)
        first[r.step_offsets[:-1][r.steps_per_trajectory > 0]] = True
        prev = (torch.arange(r.num_steps, device=r.device) - 1).clamp_min(0)
        prev_node = self.of_step[prev]
        value = torch.where(first, group_value[r.step_group], self.value[prev_node])
        leaves = torch.where(first, group_size[r.step_group], self.leaves[prev_node])
        return value, leaves


def _tree_ids(rollouts: Rollouts) -> tuple[Tensor, int]:
    r = rollouts
    tree = r.tree if r.tree is not None else torch.arange(r.num_trajectories, device=r.device)
    return segments.unique_pairs(r.group, tree)


@register("credit")
def tree_grpo(
    rollouts: Rollouts,
    *,
    norm: Norm = "std",
    eps: float = 1e-6,
    intra_singleton: Singleton = "raw",
    prefix: Literal["duplicate", "sum"] = "duplicate",
) -> Credit:
    """Tree-GRPO: inter-tree plus intra-tree group-relative advantages of each leaf, summed.

        A(τ) = (R_τ − mean_{g} R) / (std_{g} R + ε)  +  (R_τ − mean_{tree} R) / (std_{tree} R + ε)

    ``g``: all leaves of the task (every tree); ``tree``: the leaves of τ's own tree. A(τ) goes to
    every step (token) of leaf τ. Shared prefixes appear once per leaf, so in training the tokens of an
    internal node receive the *sum* of its leaves' advantages — the step-level preference signal of
    the paper. ``prefix="sum"`` reports that sum directly: each step gets Σ_{leaves τ' through its
    node} A(τ'), the effective credit of the node (use it for audits of logs; keep "duplicate" when
    each leaf row is trained on, or the prefix would be counted twice).

    Ji et al. 2025, arXiv:2509.21240 (code: AMAP-ML/Tree-GRPO, ``adv_estimator == 'tree'``). As in the
    reference, a singleton tree uses mean 0 / std 1 (``intra_singleton="raw"``: A_intra = R / (1 + ε));
    with ``intra_singleton="zero"`` and one leaf per tree this is exactly ``grpo``.
    """
    r = rollouts
    inter = segments.group_normalize(r.outcome, r.group, r.num_groups, norm=norm, eps=eps)
    tree, num_trees = _tree_ids(r)
    intra = segments.group_normalize(r.outcome, tree, num_trees, norm=norm, eps=eps, singleton=intra_singleton)
    adv = inter + intra
    if prefix == "duplicate":
        return Credit(adv)
    nodes = Nodes(r)
    total = segments.segment_sum(adv[nodes.pair_leaf], nodes.pair_node, nodes.count)
    return Credit(adv, step=total[nodes.of_step] - adv[r.step_traj])


@register("credit")
def treerl(rollouts: Rollouts, *, divide_by_leaves: bool = True) -> Credit:
    """TreeRL process reward of each node, given to the tokens of its step.

        V(n) = mean outcome of the leaves under n
        R(n) = [V(n) − V(root)] + [V(n) − V(parent(n))]        (global + local advantage)
        R(n) ← R(n) / sqrt(|leaves(n)|)                          (divide_by_leaves)

    The root is the task (all leaves of the group); the parent of a trajectory's first step is the
    root. Dividing by sqrt(#leaves) keeps shared prefixes, which appear once per leaf, from being
    over-weighted. Hou et al. 2025 (ACL), arXiv:2506.11902. On a chain (every node with one leaf) a
    step gets R − V(root) (Dr.GRPO), its first step twice that; a task with a single trajectory has
    V(root) = R and gets 0.
    """
    r = rollouts
    nodes = Nodes(r)
    root = segments.segment_mean(r.outcome, r.group, r.num_groups)[r.step_group]
    value = nodes.value[nodes.of_step]
    parent_value, _ = nodes.parent_value_and_leaves(r)
    reward = (value - root) + (value - parent_value)
    if divide_by_leaves:
        reward = reward / nodes.leaves[nodes.of_step].to(reward.dtype).sqrt()
    return Credit(torch.zeros_like(r.outcome), step=reward)


@register("credit")
def treepo(
    rollouts: Rollouts,
    *,
    whiten: bool = True,
    weighting: Weighting = "auto",
) -> Credit:
    """TreePO: the mean, over the subgroups a leaf belongs to, of its outcome minus the subgroup mean,
    then batch whitening (REINFORCE++-baseline style).

        A_i = (1 / |S_i|) Σ_{S ∈ S_i} (R_i − mean_{j∈S} R_j)

    ``S_i``: the task's group (the root, always) and the leaf sets of the nodes on i's path that hold
    more than one leaf; a node with the same leaves as its parent is the same subgroup and counts once.
    ``whiten`` then standardises A over the batch, each trajectory weighted by its tokens
    (``weighting`` as in ``reinforce_pp_baseline``). Li et al. 2025, arXiv:2508.17445 (code:
    ``compute_tree_reinforce_plus_plus_baseline_outcome_advantage``; like verl's REINFORCE++ baseline, a
    task with a single trajectory uses mean 0 for its root group). On chains this is
    ``reinforce_pp_baseline`` (``whiten=False``: Dr.GRPO).
    """
    r = rollouts
    nodes = Nodes(r)
    _, parent_leaves = nodes.parent_value_and_leaves(r)
    # one (node, leaf) pair per pair id: take the first step of each pair for its parent's leaf count
    first_step = segments.segment_first(nodes.pair_of_step, nodes.pair_node.numel())
    leaves = nodes.leaves[nodes.pair_node]
    keep = (leaves > 1) & (leaves < parent_leaves[first_step])
    diff = r.outcome[nodes.pair_leaf] - nodes.value[nodes.pair_node]
    n = r.num_trajectories
    total = segments.segment_sum(torch.where(keep, diff, torch.zeros_like(diff)), nodes.pair_leaf, n)
    count = segments.segment_sum(keep.to(diff.dtype), nodes.pair_leaf, n)
    root = segments.group_normalize(r.outcome, r.group, r.num_groups, norm="mean")  # a lone leaf: mean 0
    adv = (root + total) / (1 + count)
    if not whiten:
        token_weights(r, weighting)  # still reject a bad weighting
        return Credit(adv)
    return Credit(segments.whiten(adv, token_weights(r, weighting)))
