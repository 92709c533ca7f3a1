"""stepcredit inside real verl 0.9.1: the registered estimators through verl's own ``compute_advantage``,
the adapter against stepcredit's direct path, the v1 trainer mode's ``_compute_advantage`` over a real
TransferQueue on a local Ray cluster, the entry point inside a Ray worker, and a broken plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stepcredit import Recipe, build
from stepcredit.core.registry import get
from stepcredit.integrations.verl.estimators import REWARD_ONLY, StepcreditOptions, rows_from_verl, session_keys
from stepcredit.io import from_trainer_tensors
from tests.integrations.verl.verl_batch import CALLS, CLOSE, OPEN, make_batch, tensors, tokenizer

pytestmark = pytest.mark.verl

RECIPES = [
    "grpo",
    "call_consensus",
    "action_anchor",
    {"credit": [{"grpo": {}}, {"toolpo": {"weight": 0.5}}]},
    {"selection": [{"zero_variance_filter": {}}], "credit": [{"action_anchor": {}}]},
    {"credit": [{"per_turn": {}}]},
    {"credit": [{"gigpo": {"gamma": 1.0}}]},
]


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    return tokenizer()


def random_batch(seed: int, b: int = 24, t: int = 40, group: int = 4):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.rand(b, t, generator=gen) < 0.7).long()
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    mask = mask * (torch.arange(t)[None] < lengths[:, None])
    mask[:, 0] = 1
    rewards = torch.zeros(b, t)
    rewards[torch.arange(b), lengths - 1] = torch.randint(0, 2, (b,), generator=gen).float()
    uid = np.array([f"u{i // group}" for i in range(b)], dtype=object)
    return rewards, mask, uid


# ------------------------------------------------------------------ registered estimators
@pytest.mark.parametrize("name", REWARD_ONLY)
def test_registered_estimator_through_verl_equals_direct(name: str) -> None:
    import verl  # noqa: F401  (loads the plugin through its entry point)
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import compute_advantage

    for seed in range(3):
        rewards, mask, uid = random_batch(seed)
        data = DataProto.from_dict(
            tensors={"token_level_rewards": rewards, "response_mask": mask}, non_tensors={"uid": uid}
        )
        out = compute_advantage(data, adv_estimator=f"stepcredit_{name}", config={"stepcredit_params": {}})
        rows = from_trainer_tensors(mask, uid, token_level_rewards=rewards)
        expected = get("credit", name).fn(rows).to_tokens(rows)
        torch.testing.assert_close(out.batch["advantages"], expected, rtol=0, atol=0)
        assert bool((out.batch["advantages"][mask == 0] == 0).all())


def test_stepcredit_grpo_equals_verls_grpo() -> None:
    from verl.trainer.ppo import core_algos

    for seed in range(3):
        rewards, mask, uid = random_batch(seed)
        ours, _ = core_algos.get_adv_estimator_fn("stepcredit_grpo")(rewards, mask, uid, None)
        ref, _ = core_algos.compute_grpo_outcome_advantage(rewards, mask.float(), uid)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_estimator_params_come_from_the_config() -> None:
    from omegaconf import OmegaConf
    from verl.trainer.ppo import core_algos

    rewards, mask, uid = random_batch(5)
    fn = core_algos.get_adv_estimator_fn("stepcredit_grpo")
    mean_only, _ = fn(rewards, mask, uid, OmegaConf.create({"stepcredit_params": {"norm": "mean"}}))
    rows = from_trainer_tensors(mask, uid, token_level_rewards=rewards)
    torch.testing.assert_close(mean_only, get("credit", "grpo").fn(rows, norm="mean").to_tokens(rows))
    # verl's Dr.GRPO switch reaches the registered estimators as it reaches verl's own
    drgrpo, _ = fn(rewards, mask, uid, OmegaConf.create({"norm_adv_by_std_in_grpo": False}))
    torch.testing.assert_close(drgrpo, mean_only)
    with pytest.raises(ValueError, match="norm"):
        fn(rewards, mask, uid, OmegaConf.create({"stepcredit_params": {"norm": "median"}}))
    with pytest.raises(Exception, match="uid"):
        fn(rewards, mask, None, None)


def test_v1_multi_trajectory_path_calls_the_registered_estimator() -> None:
    from verl import DataProto
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    rewards, mask, uid = random_batch(7)
    keys = [f"{u}_{i % 4}_0" for i, u in enumerate(uid)]
    data = DataProto.from_dict(
        tensors={"token_level_rewards": rewards, "response_mask": mask}, non_tensors={"uid": uid}
    )
    out = compute_advantage_for_multi_trajectories(data, keys, adv_estimator="stepcredit_rloo", config={})
    rows = from_trainer_tensors(mask, uid, token_level_rewards=rewards)
    torch.testing.assert_close(out.batch["advantages"], get("credit", "rloo").fn(rows).to_tokens(rows))


# ------------------------------------------------------------------ the adapter vs the direct path
def _direct(records, recipe):  # type: ignore[no-untyped-def]
    r = build(records, states="distinct")
    return Recipe.load(recipe).run(r)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r if isinstance(r, str) else "+".join(
    next(iter(x)) for k in ("selection", "credit") for x in r.get(k, [])))
def test_adapter_equals_stepcredit_on_records(tok, recipe) -> None:  # type: ignore[no-untyped-def]
    ids = (tok.encode(OPEN, add_special_tokens=False), tok.encode(CLOSE, add_special_tokens=False))
    for seed in range(3):
        rows, records, where = make_batch(tok, seed)
        # verl's _balance_batch reorders rows: sessions' rows need not be adjacent or in index order
        perm = np.random.default_rng(seed).permutation(len(rows))
        back = np.argsort(perm)
        shuffled = [rows[i] for i in perm]
        t = tensors(shuffled, pad=3)
        batch = rows_from_verl(
            t["response_mask"], t["uid"], t["token_level_rewards"], responses=t["responses"],
            keys=[r.key for r in shuffled], tool_call=ids, call_identity="text", decode=tok.batch_decode,
            markers=(OPEN, CLOSE), tool_rewards=[r.tool_rewards for r in shuffled],
        )
        got = batch.run(recipe)
        adv = got.advantages[torch.as_tensor(back)]  # back in make_batch's row order
        want = _direct(records, recipe)
        kept_list = want.kept.tolist()
        per_step, per_call = want.credit.per_step(want.rollouts), want.credit.per_call(want.rollouts)
        soff, coff = want.rollouts.step_offsets.tolist(), want.rollouts.call_offsets.tolist()
        # the calls' token spans, from the adapter's row-level batch, in make_batch's row order
        rr = batch.rows
        assert rr.num_calls == 0 or rr.call_token_start is not None
        spans_of_row: dict[int, list[tuple[int, int]]] = {}
        for c in range(rr.num_calls):
            row = int(perm[int(rr.call_traj[c])])
            spans_of_row.setdefault(row, []).append((int(rr.call_token_start[c]), int(rr.call_token_end[c])))
        covered = torch.zeros_like(adv, dtype=torch.bool)
        for traj, places in enumerate(where):
            for k, (row, start, end) in enumerate(places):
                covered[row, start:end] = True
                if traj not in kept_list:
                    assert bool((adv[row, start:end] == 0).all())
                    continue
                s = soff[kept_list.index(traj)] + k
                calls = [(a, b) for a, b in spans_of_row.get(row, []) if start <= a < end]
                assert len(calls) == coff[s + 1] - coff[s]
                plain = torch.ones(end - start, dtype=torch.bool)
                for j, (a, b) in enumerate(calls):  # each call's tokens carry that call's credit
                    torch.testing.assert_close(adv[row, a:b], per_call[coff[s] + j].expand(b - a))
                    plain[a - start : b - start] = False
                # the step's other tokens carry the step's credit
                torch.testing.assert_close(adv[row, start:end][plain], per_step[s].expand(int(plain.sum())))
        assert bool((adv[~covered] == 0).all())
        assert got.kept.shape == (len(rows),)


def test_call_credit_lands_on_each_calls_tokens(tok) -> None:  # type: ignore[no-untyped-def]
    rows, records, _ = make_batch(tok, 11)
    t = tensors(rows)
    ids = (tok.encode(OPEN, add_special_tokens=False), tok.encode(CLOSE, add_special_tokens=False))
    batch = rows_from_verl(t["response_mask"], t["uid"], t["token_level_rewards"], responses=t["responses"],
                           keys=[r.key for r in rows], tool_call=ids, call_identity="text",
                           decode=tok.batch_decode, markers=(OPEN, CLOSE))
    got = batch.run("call_consensus")
    want = _direct(records, "call_consensus")
    per_call = want.credit.per_call(want.rollouts)
    rows_r = batch.rows
    assert rows_r.call_token_start is not None and rows_r.call_token_end is not None
    assert batch.call_of is not None
    # call c of the trajectories is row-level call call_of[c]: its tokens carry per_call[c]
    for c in range(want.rollouts.num_calls):
        rc = int(batch.call_of[c])
        row = int(rows_r.call_traj[rc])
        s, e = int(rows_r.call_token_start[rc]), int(rows_r.call_token_end[rc])
        torch.testing.assert_close(got.advantages[row, s:e], per_call[c].expand(e - s))
    # the names were read from the decoded JSON, argument order canonicalised
    assert set(batch.rollouts.texts.call_name.to_pylist()) == {n for n, _ in CALLS}


def test_token_identity_tells_reordered_arguments_apart(tok) -> None:  # type: ignore[no-untyped-def]
    rows, _, _ = make_batch(tok, 3)
    t = tensors(rows)
    ids = (tok.encode(OPEN, add_special_tokens=False), tok.encode(CLOSE, add_special_tokens=False))
    kw = dict(responses=t["responses"], keys=[r.key for r in rows], tool_call=ids, decode=tok.batch_decode,
              markers=(OPEN, CLOSE))
    by_text = rows_from_verl(t["response_mask"], t["uid"], t["token_level_rewards"], call_identity="text", **kw)
    by_tokens = rows_from_verl(t["response_mask"], t["uid"], t["token_level_rewards"], call_identity="tokens", **kw)
    text_keys = by_text.rollouts.texts.call_arguments.to_pylist()
    token_keys = by_tokens.rollouts.texts.call_arguments.to_pylist()
    names = by_text.rollouts.texts.call_name.to_pylist()
    full_text = [f"{n} {a}" for n, a in zip(names, text_keys, strict=True)]
    assert len(set(token_keys)) > len(set(full_text))  # the same call written two ways: two token keys
    # equal token keys always mean equal calls
    seen: dict[str, str] = {}
    for tk, tx in zip(token_keys, full_text, strict=True):
        assert seen.setdefault(tk, tx) == tx


def test_bad_verl_input_is_named(tok) -> None:  # type: ignore[no-untyped-def]
    rows, _, _ = make_batch(tok, 4)
    t = tensors(rows)
    ids = (tok.encode(OPEN, add_special_tokens=False), tok.encode(CLOSE, add_special_tokens=False))
    keys = [r.key for r in rows]
    lying = [list(r.tool_rewards) for r in rows]
    victim = next(i for i, r in enumerate(rows) if r.tool_rewards)
    lying[victim].append(1.0)
    # verl rewards only the calls it executed: a row whose rewards do not match its calls gets none
    tolerant = rows_from_verl(t["response_mask"], t["uid"], t["token_level_rewards"], responses=t["responses"],
                              keys=keys, tool_call=ids, tool_rewards=lying)
    assert tolerant.notes["stepcredit/tool_reward_mismatch_rows"] == 1.0
    assert tolerant.run("grpo").metrics["stepcredit/tool_reward_mismatch_rows"] == 1.0
    vrow = tolerant.rows
    assert float(vrow.reward[vrow.step_offsets[victim] : vrow.step_offsets[victim + 1]].abs().sum()) == 0.0
    exact = rows_from_verl(t["response_mask"], t["uid"], t["token_level_rewards"], responses=t["responses"],
                           keys=keys, tool_call=ids, tool_rewards=[r.tool_rewards for r in rows])
    assert float(exact.rows.reward.abs().sum()) > 0 and exact.notes["stepcredit/tool_reward_mismatch_rows"] == 0
    with pytest.raises(Exception, match="tool_call patterns"):
        rows_from_verl(t["response_mask"], t["uid"], t["token_level_rewards"], tool_rewards=lying)
    with pytest.raises(Exception, match=r"uid.*session.*index"):
        session_keys(["no-index-here"])
    nan = [list(r.tool_rewards) for r in rows]
    nan[victim][0] = float("nan")
    with pytest.raises(Exception, match=f"finite.*{keys[victim]}|{keys[victim]}.*finite"):
        rows_from_verl(t["response_mask"], t["uid"], t["token_level_rewards"], responses=t["responses"], keys=keys,
                       tool_call=ids, tool_rewards=nan)
    mixed = list(t["uid"])
    split = next(i for i, r in enumerate(rows) if r.key.endswith("_1"))
    mixed[split] = "another-task"
    with pytest.raises(Exception, match="share a group"):
        rows_from_verl(t["response_mask"], np.array(mixed, dtype=object), t["token_level_rewards"], keys=keys)
    with pytest.raises(ValueError, match="unknown"):
        StepcreditOptions.from_config({"tool_call_begin": "<x>"})
    with pytest.raises(ValueError, match="call_identity"):
        StepcreditOptions.from_config({"call_identity": "vibes"})


def test_rows_without_sessions_are_trajectories() -> None:
    rewards, mask, uid = random_batch(9)
    batch = rows_from_verl(mask, uid, rewards)
    assert batch.rollouts is batch.rows and batch.step_of is None
    out = batch.run("grpo")
    rows = from_trainer_tensors(mask, uid, token_level_rewards=rewards)
    torch.testing.assert_close(out.advantages, get("credit", "grpo").fn(rows).to_tokens(rows))
    assert set(out.metrics) >= {"stepcredit/adv_abs_mean", "stepcredit/failed_positive_steps"}


# ------------------------------------------------------------------ Ray + TransferQueue: the trainer mode
@pytest.fixture(scope="module")
def ray_tq(tmp_path_factory):  # type: ignore[no-untyped-def]
    ray = pytest.importorskip("ray")
    import transfer_queue as tq
    from omegaconf import OmegaConf

    temp = Path("/tmp") / f"sc-ray-{os.getpid()}"
    ray.init(num_cpus=2, _temp_dir=str(temp), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[3])}})
    # the controller and one storage unit take a CPU each: fits the 2-CPU cluster
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    yield ray, tq
    tq.close()
    ray.shutdown()


def _verl_config(mode: str, **algorithm):  # type: ignore[no-untyped-def]
    """verl's own default PPO config (the generated one main_ppo composes), with our overrides."""
    import verl
    from omegaconf import OmegaConf, open_dict

    cfg = OmegaConf.load(Path(verl.__file__).parent / "trainer/config/_generated_ppo_trainer.yaml")
    with open_dict(cfg):
        cfg.trainer.v1.trainer_mode = mode
        for key, value in algorithm.items():
            cfg.algorithm[key] = value
    return cfg


def _trainer(tok, recipe, options):  # type: ignore[no-untyped-def]
    from stepcredit.integrations.verl.trainer import StepcreditTrainer

    trainer = StepcreditTrainer(_verl_config("stepcredit", stepcredit_recipe=recipe, stepcredit_options=options))
    trainer.tokenizer = tok  # init() would load it from the model path
    return trainer


def test_trainer_mode_runs_as_the_sync_trainer() -> None:
    from verl.trainer.ppo.v1 import get_trainer_cls

    from stepcredit.integrations.verl.trainer import StepcreditTrainer

    assert get_trainer_cls("stepcredit") is StepcreditTrainer
    ours = StepcreditTrainer(_verl_config("stepcredit", stepcredit_recipe="grpo"))
    sync = get_trainer_cls("sync")(_verl_config("sync"))
    # verl branches on the mode's name (replay buffer, refills, checkpoints): ours must take the sync branches
    assert ours.trainer_mode == "sync"
    assert type(ours.replay_buffer) is type(sync.replay_buffer)
    with pytest.raises(ValueError, match="stepcredit_recipe"):
        StepcreditTrainer(_verl_config("stepcredit")).stepcredit_setup()


def test_trainer_mode_compute_advantage_over_transfer_queue(ray_tq, tok) -> None:  # type: ignore[no-untyped-def]
    _, tq = ray_tq
    from transfer_queue import KVBatchMeta
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    rows, _, _ = make_batch(tok, 21)
    for r in rows:  # one group where every session succeeded: the filter must drop it, rows come back 0
        r.score = 1.0 if r.uid == "task0" else r.score
    fields = []
    for r in rows:  # what verl's agent loop puts per output (AgentLoopOutput.as_dict + keys)
        scores = torch.zeros(len(r.ids))
        scores[-1] = r.score
        fields.append({
            "uid": r.uid, "prompts": torch.tensor([1, 2, 3]), "responses": torch.tensor(r.ids),
            "response_mask": torch.tensor(r.mask), "rm_scores": scores, "num_turns": 2 * len(r.spans) + 1,
            "extra_fields": {"tool_rewards": r.tool_rewards, "turn_scores": []},
        })
    keys = [r.key for r in rows]
    for i, recipe in enumerate(["call_consensus", "grpo", "tests/integrations/recipe_zvf.yaml"]):
        partition = f"train{i}"
        tq.kv_batch_put(keys=keys, fields=list_of_dict_to_tensordict(fields), partition_id=partition)
        options = {"tool_rewards": True} if recipe == "grpo" else {}
        spec = str(Path(__file__).parents[3] / recipe) if recipe.endswith(".yaml") else recipe
        trainer = _trainer(tok, spec, options)
        metrics: dict[str, float] = {}
        meta = KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id=partition)
        trainer._compute_advantage(meta, metrics)
        got = tq.kv_batch_get(keys=keys, partition_id=partition, select_fields=["advantages", "returns"])
        t = tensors(rows)
        expected = rows_from_verl(
            t["response_mask"], t["uid"], t["token_level_rewards"], responses=t["responses"], keys=keys,
            tool_call=(tok.encode(OPEN, add_special_tokens=False), tok.encode(CLOSE, add_special_tokens=False)),
            call_identity="text", decode=tok.batch_decode, markers=(OPEN, CLOSE),
            tool_rewards=[r.tool_rewards for r in rows] if options else None,
        ).run(Recipe.load(spec))
        for j, r in enumerate(rows):  # nested rows, each its own length
            adv = got["advantages"][j]
            assert adv.shape == (len(r.ids),)
            torch.testing.assert_close(adv, expected.advantages[j, : len(r.ids)].to(adv.dtype))
            torch.testing.assert_close(got["returns"][j], adv)
        assert metrics["stepcredit/trajectories"] == len({k.rsplit("_", 1)[0] for k in keys})
        if recipe.endswith(".yaml"):
            assert metrics["stepcredit/kept_fraction"] < 1.0  # the filter dropped task0
            dropped = [j for j, r in enumerate(rows) if r.uid == "task0"]
            assert all(bool((got["advantages"][j] == 0).all()) for j in dropped)


def test_entry_point_loads_inside_a_ray_worker(ray_tq) -> None:  # type: ignore[no-untyped-def]
    ray, _ = ray_tq

    @ray.remote(num_cpus=0)
    def registered() -> tuple[list[str], bool]:
        import verl  # noqa: F401  (the worker imports verl: the entry point runs there)
        from verl.trainer.ppo import core_algos
        from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

        names = sorted(k for k in core_algos.ADV_ESTIMATOR_REGISTRY if k.startswith("stepcredit_"))
        return names, "stepcredit" in TRAINER_REGISTRY

    names, mode = ray.get(registered.remote(), timeout=120)
    assert names == sorted(f"stepcredit_{n}" for n in REWARD_ONLY)
    assert mode


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_plugin_is_discovered_by_verl_and_checkable() -> None:
    out = subprocess.run([sys.executable, "-m", "stepcredit.integrations.verl.plugin"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "stepcredit_per_turn" in out.stdout and "trainer_mode=stepcredit" in out.stdout


def test_a_broken_plugin_is_reported_loudly() -> None:
    # another plugin took one of stepcredit's names first: verl would hide the failure at debug level
    code = (
        "import verl\n"
        "from verl.trainer.ppo import core_algos\n"
        "core_algos.register_adv_est('stepcredit_grpo')(lambda *a, **k: None)\n"
        "import stepcredit.integrations.verl.plugin as p\n"
        "p.check()\n"
    )
    out = _python(code, VERL_USE_EXTERNAL_PLUGINS="none")
    assert out.returncode != 0
    assert "stepcredit's verl plugin failed to load" in out.stderr
    assert "already been registered" in out.stderr


def test_plugin_reports_a_missing_verl_dependency() -> None:
    # a verl install without its v1 trainer's TransferQueue: the entry point must say so, not go quiet
    code = (
        "import sys\n"
        "sys.modules['transfer_queue'] = None\n"  # import transfer_queue now raises ImportError
        "import verl\n"
        "import stepcredit.integrations.verl.plugin as p\n"
        "print('LOADED', p.REGISTERED)\n"
    )
    out = _python(code)
    assert "stepcredit's verl plugin failed to load" in out.stderr
    assert "transfer_queue" in out.stderr


def test_a_response_cut_off_mid_call_does_not_stop_training(tok) -> None:  # type: ignore[no-untyped-def]
    rows, _, _ = make_batch(tok, 5)
    open_id = tok.encode(OPEN, add_special_tokens=False)
    victim = next(i for i, r in enumerate(rows) if len(r.spans) > 1)
    cut = rows[victim]
    last_open = max(j for j, x in enumerate(cut.ids) if [x] == open_id)
    cut.ids, cut.mask = cut.ids[: last_open + 2], cut.mask[: last_open + 2]  # max length hit inside the call
    t = tensors(rows)
    ids = (open_id, tok.encode(CLOSE, add_special_tokens=False))
    batch = rows_from_verl(t["response_mask"], t["uid"], t["token_level_rewards"], responses=t["responses"],
                           keys=[r.key for r in rows], tool_call=ids, decode=tok.batch_decode, markers=(OPEN, CLOSE))
    out = batch.run("call_consensus")
    mask = t["response_mask"].bool()
    assert bool(torch.isfinite(out.advantages).all()) and bool((out.advantages[~mask] == 0).all())
    # the unfinished call is no call: the row's calls are the whole ones before it
    whole = cut.ids[:last_open].count(open_id[0])
    assert int(batch.rows.calls_per_trajectory[victim]) == whole


def test_the_plugin_registers_the_adapters_estimators_without_importing_them() -> None:
    import stepcredit.integrations.verl.plugin as plugin

    assert plugin.REWARD_ONLY == REWARD_ONLY
    out = _python("import json, sys, verl\n"
                  "print(json.dumps([m for m in sys.modules if m.startswith('stepcredit.')]))")
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "stepcredit.integrations.verl.plugin" in loaded
    for heavy in ("stepcredit.estimators", "stepcredit.recipe", "stepcredit.train", "stepcredit.envs",
                  "stepcredit.auditing", "stepcredit.integrations.verl.estimators"):
        assert heavy not in loaded, heavy


def test_a_failing_stepcredit_module_is_reported_too() -> None:
    code = (
        "import sys\n"
        "sys.modules['stepcredit.integrations.verl.estimators'] = None\n"  # the adapter module cannot be imported
        "import verl\n"
    )
    out = _python(code)
    assert "stepcredit's verl plugin failed to load the stepcredit_* advantage estimators" in out.stderr


def test_rollout_correction_does_not_split_turns(ray_tq, tok, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Token-level rejection (rollout_rs=token_*) zeroes single tokens of the response mask: turns and
    calls are read from the generated mask, the rejected tokens get 0."""
    _, tq = ray_tq
    from transfer_queue import KVBatchMeta
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    import stepcredit.integrations.verl.trainer as mode

    rows, _, _ = make_batch(tok, 8)
    fields = []
    for r in rows:
        scores = torch.zeros(len(r.ids))
        scores[-1] = r.score
        fields.append({"uid": r.uid, "responses": torch.tensor(r.ids), "response_mask": torch.tensor(r.mask),
                       "rm_scores": scores, "rollout_log_probs": torch.zeros(len(r.ids)),
                       "extra_fields": {"tool_rewards": r.tool_rewards}})
    keys = [r.key for r in rows]
    victim = next(i for i, r in enumerate(rows) if len(r.spans) > 1)
    a, b = rows[victim].spans[0]
    reject = (victim, (a + b) // 2)  # a token inside the first turn (inside its call)

    def correction(data, config):  # type: ignore[no-untyped-def]
        data.batch["response_mask"] = data.batch["response_mask"].clone()
        data.batch["response_mask"][reject] = 0
        return data, {"rollout_corr/rejected": 1.0}

    monkeypatch.setattr(mode, "compute_rollout_correction_and_add_to_batch", correction)
    tq.kv_batch_put(keys=keys, fields=list_of_dict_to_tensordict(fields), partition_id="rc")
    trainer = _trainer(tok, "call_consensus", {})
    from omegaconf import OmegaConf, open_dict

    with open_dict(trainer.config):
        trainer.config.algorithm.rollout_correction = OmegaConf.create({"bypass_mode": False})
    metrics: dict[str, float] = {}
    trainer._compute_advantage(KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="rc"), metrics)
    got = tq.kv_batch_get(keys=keys, partition_id="rc", select_fields=["advantages"])["advantages"]
    t = tensors(rows)
    expected = rows_from_verl(
        t["response_mask"], t["uid"], t["token_level_rewards"], responses=t["responses"], keys=keys,
        tool_call=(tok.encode(OPEN, add_special_tokens=False), tok.encode(CLOSE, add_special_tokens=False)),
        call_identity="text", decode=tok.batch_decode, markers=(OPEN, CLOSE),
    ).run("call_consensus").advantages
    expected[reject] = 0.0
    assert metrics["rollout_corr/rejected"] == 1.0
    for j, r in enumerate(rows):
        torch.testing.assert_close(got[j], expected[j, : len(r.ids)])

