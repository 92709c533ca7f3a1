"""Streamed credit and audit of Parquet datasets: chunk by chunk equals the whole log at once, and the
Ray Data engine equals the local one bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from stepcredit import RolloutError, Rollouts
from stepcredit.auditing import audit
from stepcredit.auditing import metrics as M
from stepcredit.envs.synthetic import make_rollouts
from stepcredit.io import credit_table, iter_group_chunks, to_arrow, write_credit_parquet, write_parquet
from stepcredit.recipe import Recipe
from stepcredit.streaming import AuditWork, CreditWork, map_chunks, stream_audit, stream_credit
from tests.support.cli import run as cli

# group-local recipes: each trajectory's credit depends on its group only
RECIPES = ["grpo", "gigpo", "toolpo", "mt_grpo", "call_consensus", "grpo_roc"]


def as_json(a) -> str:
    """An audit's figures as text (repr of every float: equal text = equal bits, NaN included)."""
    d = a.to_dict()
    d.pop("seconds")
    d.pop("chunks")
    return json.dumps(d, sort_keys=True)


@pytest.fixture(scope="module")
def log() -> Rollouts:
    return make_rollouts(40, 8, seed=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, log: Rollouts) -> Path:
    """Three files (split by groups), the last cut mid-group into a file of its own, small row groups:
    chunks span files and row groups."""
    folder = tmp_path_factory.mktemp("dataset")
    parts = log.split_groups(3)
    write_parquet(parts[0], folder / "a.parquet")
    write_parquet(parts[1], folder / "b.parquet")
    last = parts[2]
    cut = last.num_trajectories - 3
    pq.write_table(to_arrow(last.select(list(range(cut)))), folder / "c.parquet", row_group_size=5)
    pq.write_table(to_arrow(last.select(list(range(cut, last.num_trajectories)))), folder / "d.parquet")
    return folder


@pytest.fixture(scope="module")
def whole(dataset: Path) -> Rollouts:
    return Rollouts.concat(list(iter_group_chunks(dataset, 10_000)))


def test_one_chunk_is_the_in_memory_audit(dataset, whole):
    assert as_json(stream_audit(dataset, RECIPES, chunk_groups=10_000, bootstrap=100)) == as_json(
        audit(whole, RECIPES, bootstrap=100)
    )


def same_to_last_bits(a: dict, b: dict) -> None:
    """Equal keys; numbers equal to 1e-12 relative, anything else (``None``, text) exactly."""
    assert a.keys() == b.keys()
    for key, x in b.items():
        if isinstance(x, float):
            assert a[key] == pytest.approx(x, rel=1e-12, nan_ok=True), key
        else:
            assert a[key] == x, key


@pytest.mark.parametrize("chunk_groups", [1, 3, 16])
def test_chunks_of_group_local_recipes_give_the_whole_log_audit(dataset, whole, chunk_groups):
    """Headline, intervals, breakdown, counts: integer sums, exact; means and shares: sums in another
    order, equal to the last bits."""
    streamed = stream_audit(dataset, RECIPES, chunk_groups=chunk_groups, bootstrap=100, seed=4)
    at_once = audit(whole, RECIPES, bootstrap=100, seed=4)
    assert streamed.chunks == -(-40 // chunk_groups)
    assert (streamed.trajectories, streamed.groups, streamed.failed) == (
        at_once.trajectories, at_once.groups, at_once.failed)
    for a, b in zip(streamed.recipes, at_once.recipes, strict=True):
        assert json.dumps([a.metrics, a.intervals, a.breakdown, a.num_kept]) == json.dumps(
            [b.metrics, b.intervals, b.breakdown, b.num_kept]
        )
        same_to_last_bits(a.density, b.density)
        for row_a, row_b in zip(a.length_skew, b.length_skew, strict=True):
            same_to_last_bits(row_a, row_b)
        for label in a.mean_credit:
            for outcome in ("failure", "success"):
                x, y = a.mean_credit[label][outcome], b.mean_credit[label][outcome]
                assert x["n"] == y["n"] and x["mean"] == pytest.approx(y["mean"], nan_ok=True, rel=1e-12)
    # the report's sample is the first chunk, with each recipe's credit on it
    first = next(iter(iter_group_chunks(dataset, chunk_groups)))
    assert streamed.rollouts.equals(first)
    assert streamed.recipes[0].call_credit.shape == (first.num_calls,)


def test_the_bootstrap_resamples_groups_of_the_whole_log(dataset, whole):
    """Replicates drawn in chunks of replicates are the replicates drawn at once."""
    at_once = M.bootstrap_counts(40, 300, 9)
    assert torch.equal(torch.cat(list(M.bootstrap_count_chunks(40, 300, 9, rows=7))), at_once)
    u = M.units(whole, Recipe.builtin("gigpo").run(whole).credit)
    stats = M.group_sums(u, whole.num_groups)
    small = M.many_intervals([stats], samples=300, seed=9, chunk_elements=40 * 3)[0]  # 3 replicates per chunk
    assert json.dumps(small) == json.dumps(M.many_intervals([stats], samples=300, seed=9)[0])


def test_unit_stats_concatenate_to_the_whole_batch(whole):
    credit = Recipe.builtin("call_consensus").run(whole).credit
    u = M.units(whole, credit)
    parts = []
    for lo, hi in ((0, 13), (13, 14), (14, 40)):  # groups [lo, hi): the units of those groups, renumbered
        pick = (u.group >= lo) & (u.group < hi)
        part = u.subset(pick)
        parts.append(M.unit_stats(M.Units(part.kind, part.label, part.credit, part.failed, part.group - lo,
                                          part.traj), hi - lo))
    joined = M.UnitStats.concat(parts).group_stats()
    counts = M.bootstrap_counts(40, 50, 1)
    want = M.group_headline(M.group_sums(u, 40), counts)
    got = M.group_headline(joined, counts)
    for k in want:
        assert torch.equal(torch.nan_to_num(got[k], nan=-7.0), torch.nan_to_num(want[k], nan=-7.0))


def test_streamed_credit_file_equals_the_in_memory_one(dataset, whole, tmp_path):
    counts = stream_credit(dataset, "gigpo", tmp_path / "streamed.parquet", chunk_groups=6)
    result = Recipe.builtin("gigpo").run(whole)
    write_credit_parquet(result.rollouts, result.credit, tmp_path / "whole.parquet", "gigpo")
    assert pq.read_table(tmp_path / "streamed.parquet").equals(pq.read_table(tmp_path / "whole.parquet"))
    assert counts == {"chunks": 7, "trajectories": 320, "credited": 320, "steps": whole.num_steps,
                      "nonzero_steps": int((result.credit.per_step(result.rollouts) != 0).sum())}


def test_streamed_credit_never_overwrites_its_input(dataset):
    with pytest.raises(RolloutError, match="input"):
        stream_credit(dataset, "grpo", dataset / "a.parquet", chunk_groups=4)
    with pytest.raises(RolloutError, match="input"):
        stream_credit(dataset, "grpo", dataset / "credit.parquet", chunk_groups=4)  # inside an input folder


def test_work_travels_as_plain_data(dataset):
    """What the Ray engine ships to workers pickles without the loaded recipes, and does the same."""
    import pickle

    chunk = next(iter(iter_group_chunks(dataset, 5)))
    work = CreditWork(Recipe.builtin("toolpo").to_dict())
    table = work(0, chunk)[0]
    again = pickle.loads(pickle.dumps(work))
    assert again._loaded is None and again(0, chunk)[0].equals(table)
    result = Recipe.builtin("toolpo").run(chunk)
    assert table.equals(credit_table(result.rollouts, result.credit, "toolpo"))
    audit_work = pickle.loads(pickle.dumps(AuditWork([Recipe.builtin("grpo").to_dict()], sample=1)))
    part, first = audit_work(0, chunk)
    assert first is None and part.trajectories == chunk.num_trajectories  # not the sample chunk
    _, (sample, credited) = audit_work(1, chunk)
    assert sample is chunk and len(credited) == 1 and credited[0].kept.numel() == chunk.num_trajectories


def test_chunks_disagreeing_on_the_unit_are_refused(tmp_path, log):
    """One file has call labels, the other only step labels: refused (as different columns) rather
    than a mix of units; parts handed to ``finish`` by other means are checked too."""
    import dataclasses

    from stepcredit.auditing.run import batch_part, finish

    calls, steps = log.select(list(range(16))), dataclasses.replace(log.select(list(range(16, 32))), call_label=None)
    write_parquet(calls, tmp_path / "0.parquet")
    write_parquet(steps, tmp_path / "1.parquet")
    with pytest.raises(RolloutError, match=r"calls\.label is missing here"):
        stream_audit(tmp_path, ["grpo"], chunk_groups=2, bootstrap=0)
    grpo = [Recipe.builtin("grpo")]
    parts = [batch_part(calls, grpo)[0], batch_part(steps, grpo)[0]]
    assert [p.unit for p in parts] == ["call", "step"]
    with pytest.raises(ValueError, match="disagree on the audited unit"):
        finish(parts, grpo, calls, batch_part(calls, grpo, keep_credit=True)[1], seconds=0, bootstrap=0, seed=0,
               success_threshold=1.0)


def test_unknown_engine(dataset):
    with pytest.raises(ValueError, match="engine must be one of local, ray"):
        list(map_chunks(dataset, 4, lambda k, c: k, engine="spark"))  # type: ignore[arg-type]


def test_ray_engine_equals_the_local_engine(dataset, tmp_path):
    """On a local Ray cluster of 2 CPUs: the audit and the credit file, bit for bit."""
    ray = pytest.importorskip("ray")
    from stepcredit.streaming import RayOptions

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             _temp_dir=str(Path("/tmp") / f"rt{tmp_path.name[-6:]}"))
    try:
        recipes = ["grpo", "gigpo", "call_consensus"]
        local = stream_audit(dataset, recipes, chunk_groups=6, bootstrap=50, seed=2)
        on_ray = stream_audit(dataset, recipes, chunk_groups=6, bootstrap=50, seed=2, engine="ray",
                              ray=RayOptions())
        assert as_json(on_ray) == as_json(local)
        assert on_ray.chunks == local.chunks == 7
        for a, b in zip(on_ray.recipes, local.recipes, strict=True):
            assert torch.equal(torch.nan_to_num(a.call_credit, nan=9.0), torch.nan_to_num(b.call_credit, nan=9.0))
        stream_credit(dataset, "toolpo", tmp_path / "local.parquet", chunk_groups=6)
        stream_credit(dataset, "toolpo", tmp_path / "ray.parquet", chunk_groups=6, engine="ray")
        assert pq.read_table(tmp_path / "ray.parquet").equals(pq.read_table(tmp_path / "local.parquet"))
    finally:
        ray.shutdown()


# ------------------------------------------------------------------------------------------ the CLI
def test_cli_streams_credit_and_audit_of_a_dataset_folder(dataset, whole, tmp_path):
    out = tmp_path / "credit.parquet"
    res = cli("credit", str(dataset), "--chunk-groups", "6", "-r", "gigpo", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert "credited 320 of 320 trajectories in 7 chunks" in " ".join(res.stdout.split())
    result = Recipe.builtin("gigpo").run(whole)
    write_credit_parquet(result.rollouts, result.credit, tmp_path / "whole.parquet", "gigpo")
    assert pq.read_table(out).equals(pq.read_table(tmp_path / "whole.parquet"))
    report = tmp_path / "report.html"
    res = cli("audit", str(dataset), "--chunk-groups", "6", "--recipes", "grpo,call_consensus", "--bootstrap", "40",
              "--json", "-o", str(report))
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    want = audit(whole, ["grpo", "call_consensus"], bootstrap=40).to_dict()
    assert data["chunks"] == 7 and data["trajectories"] == 320
    assert json.dumps(data["recipes"]["call_consensus"]["intervals"]) == json.dumps(
        want["recipes"]["call_consensus"]["intervals"])
    page = report.read_text()
    assert "audited in 7 chunks" in page and "320 trajectories" in page


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "ray"], "--engine ray streams the log: give --chunk-groups N too"),
        (["--chunk-groups", "4", "--engine", "spark"], "expected one of local, ray"),
        (["--chunk-groups", "4", "--references", "refs.json"], "--references labels a whole log as it loads"),
        (["--chunk-groups", "4", "--format", "chat"], "--chunk-groups streams Parquet"),
    ],
)
def test_cli_streaming_options_that_do_not_fit(dataset, tmp_path, args, message):
    res = cli("audit", str(dataset), "-o", str(tmp_path / "r.html"), *args)
    assert res.returncode == 2 and message in " ".join(res.stderr.split()), res.stderr


def test_cli_streaming_needs_parquet_and_a_parquet_output(tmp_path, log, dataset):
    from stepcredit.io import write_chat_jsonl

    write_chat_jsonl(log, tmp_path / "log.jsonl")
    res = cli("credit", str(tmp_path / "log.jsonl"), "--chunk-groups", "4", "-o", str(tmp_path / "c.parquet"))
    assert res.returncode == 2 and "convert the log first" in " ".join(res.stderr.split())
    res = cli("credit", str(dataset), "--chunk-groups", "4", "-o", str(tmp_path / "c.jsonl"))
    assert res.returncode == 2 and "name a .parquet output" in " ".join(res.stderr.split())
    res = cli("credit", str(tmp_path / "log.jsonl"), "-o", str(tmp_path / "c.parquet"))  # in memory: either
    assert res.returncode == 0, res.stderr
    assert pq.read_table(tmp_path / "c.parquet").num_rows == log.num_trajectories


def test_ray_engine_without_ray_data_says_what_to_install(dataset, tmp_path, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from stepcredit.cli import app
    from stepcredit.streaming.ray import import_ray_data

    monkeypatch.setitem(sys.modules, "ray.data", None)  # as without the ray[data] extra
    with pytest.raises(ImportError, match=r"pip install 'stepcredit\[ray\]'"):
        import_ray_data()
    res = CliRunner().invoke(app, ["audit", str(dataset), "--chunk-groups", "4", "--engine", "ray", "-o",
                                   str(tmp_path / "r.html")])
    assert res.exit_code == 2 and "stepcredit[ray]" in " ".join(res.output.split())


@pytest.mark.parametrize("content", [b"", b"not parquet at all"])
@pytest.mark.parametrize("command", [["audit", "-o", "report.html"], ["credit", "--recipe", "grpo", "-o", "c.parquet"]])
def test_a_bad_file_in_a_streamed_folder_is_named(tmp_path: Path, content: bytes, command: list[str]) -> None:
    from tests.support.cli import one_line_exit_2

    data = tmp_path / "data"
    data.mkdir()
    write_parquet(make_rollouts(6, 3, seed=0), data / "a.parquet")
    (data / "b.parquet").write_bytes(content)
    name, *rest = command
    res = cli(name, str(data), "--chunk-groups", "2", *[str(tmp_path / r) if "." in r else r for r in rest])
    one_line_exit_2(res, f"{data / 'b.parquet'}: cannot read Parquet")
