"""Streaming Parquet: group-aligned chunks of a dataset, and the chunk-by-chunk credit writer."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepcredit import RolloutError, Rollouts
from stepcredit.core import build
from stepcredit.core.credit import Credit
from stepcredit.envs.synthetic import make_records, make_rollouts
from stepcredit.io import (
    credit_records,
    from_arrow,
    from_trainer_tensors,
    read_parquet,
    to_arrow,
    write_parquet,
)
from stepcredit.io import (
    stream as _stream,
)
from stepcredit.io.stream import (
    CREDIT_SCHEMA,
    ParquetCreditWriter,
    credit_table,
    dataset_files,
    iter_group_chunks,
    plan_group_chunks,
    read_chunk,
    write_credit_parquet,
)


# ------------------------------------------------------------------------------------------ helpers
def write_slices(r: Rollouts, folder: Path, cuts: Sequence[int], *, row_group_size: int | None = None) -> list[Path]:
    """``r``'s rows ``[0, c1), [c1, c2), …`` as files ``part000.parquet``, … (a group may span files)."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = [0, *cuts, r.num_trajectories]
    paths = []
    for k, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        path = folder / f"part{k:03d}.parquet"
        pq.write_table(to_arrow(r.select(list(range(lo, hi)))), path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def group_names(chunk: Rollouts) -> list[str]:
    return chunk.texts.group_names.to_pylist()


def check_chunks(chunks: list[Rollouts], expected: Rollouts, chunk_groups: int) -> None:
    """Whole groups, at most ``chunk_groups`` each (exactly that many but for the last), every group in
    one chunk only, and together the expected batch."""
    assert chunks
    assert all(c.num_groups <= chunk_groups for c in chunks)
    assert all(c.num_groups == chunk_groups for c in chunks[:-1])  # greedy: a chunk is full unless last
    seen = [g for c in chunks for g in group_names(c)]
    assert len(seen) == len(set(seen)) == expected.num_groups
    assert Rollouts.concat(chunks).equals(expected)


def table_with(table: pa.Table, column: str, values: list[object], kind: pa.DataType) -> pa.Table:
    return table.set_column(table.schema.get_field_index(column), column, pa.array(values, type=kind))


@pytest.fixture(scope="module")
def log() -> Rollouts:
    return make_rollouts(7, 3, seed=5)  # 21 trajectories, groups task0..task6 of 3 rows


@pytest.fixture
def dataset(tmp_path: Path, log: Rollouts) -> Path:
    """Three files from ``split_groups`` and then the last part cut mid-group into two files, small
    row groups: groups span record batches, row groups and files."""
    folder = tmp_path / "data"
    folder.mkdir()
    parts = log.split_groups(3)
    for k, part in enumerate(parts[:-1]):
        write_parquet(part, folder / f"a{k}.parquet")
    last = parts[-1]
    write_slices(last, folder / "b", [last.num_trajectories - 2], row_group_size=2)  # 2 rows of a group apart
    return folder


# ------------------------------------------------------------------------------------------ reading
@pytest.mark.parametrize("chunk_groups", [1, 2, 3, 100])
@pytest.mark.parametrize("batch_size", [2, 4096])
def test_chunks_are_whole_groups_and_concat_to_the_dataset(dataset, log, chunk_groups, batch_size):
    files = dataset_files(dataset)
    assert [f.relative_to(dataset).as_posix() for f in files] == [
        "a0.parquet",
        "a1.parquet",
        "b/part000.parquet",
        "b/part001.parquet",
    ]
    assert pq.ParquetFile(files[-1]).metadata.num_row_groups == 1 and pq.ParquetFile(files[-2]).num_row_groups > 1
    chunks = list(iter_group_chunks(dataset, chunk_groups, batch_size=batch_size))
    assert len(chunks) == -(-log.num_groups // chunk_groups)
    check_chunks(chunks, log, chunk_groups)
    everything = from_arrow(pa.concat_tables(pq.read_table(f) for f in files))
    assert Rollouts.concat(chunks).equals(everything)


@pytest.mark.parametrize("chunk_groups", [1, 2, 3, 100])
def test_planned_chunks_read_on_their_own_equal_the_stream(dataset, chunk_groups):
    """An engine that reads chunks in other processes (Ray) reads exactly the chunks of the stream."""
    streamed = list(iter_group_chunks(dataset, chunk_groups, batch_size=2))
    plans = plan_group_chunks(dataset, chunk_groups, batch_size=3)
    assert [p.index for p in plans] == list(range(len(streamed)))
    assert [p.rows for p in plans] == [c.num_trajectories for c in streamed]
    for plan, chunk in zip(plans, streamed, strict=True):
        assert read_chunk(plan, batch_size=2).equals(chunk)
    spans = [s for p in plans for s in p.spans]  # the spans tile every file's rows in order
    for f in dataset_files(dataset):
        rows = [(lo, hi) for path, lo, hi in spans if path == str(f)]
        assert rows[0][0] == 0 and rows[-1][1] == pq.ParquetFile(f).metadata.num_rows
        assert all(a[1] == b[0] for a, b in itertools.pairwise(rows))


def test_planning_refuses_what_streaming_refuses(tmp_path, log):
    write_slices(log.select([0, 1, 3, 4, 2]), tmp_path, [])  # task0's third row after task1's
    with pytest.raises(RolloutError, match="not contiguous"):
        plan_group_chunks(tmp_path, 2)
    with pytest.raises(ValueError, match="positive integer chunk_groups"):
        plan_group_chunks(tmp_path, 0)


def test_a_plan_of_files_that_changed_is_refused(tmp_path, log):
    write_slices(log, tmp_path, [])
    plan = plan_group_chunks(tmp_path, 3)[0]
    write_slices(log.select(list(range(4))), tmp_path, [])
    with pytest.raises(RolloutError, match="files changed since the chunks were planned"):
        read_chunk(plan)


def test_one_file_equals_read_parquet(tmp_path, log):
    path = tmp_path / "one.parquet"
    pq.write_table(to_arrow(log), path, row_group_size=4)
    chunks = list(iter_group_chunks(path, 2, batch_size=3))
    check_chunks(chunks, read_parquet(path), 2)


def test_token_spans_and_differing_response_lengths(tmp_path):
    g = torch.Generator().manual_seed(0)

    def batch(groups: list[str], t: int, ids: str) -> Rollouts:
        mask = torch.rand(len(groups), t, generator=g) < 0.6
        mask[:, 0] = True
        outcome = torch.rand(len(groups), generator=g)
        return from_trainer_tensors(mask, groups, outcome=outcome, ids=[f"{ids}{i}" for i in range(len(groups))])

    a, b = batch(["a", "a", "b", "b", "b"], 6, "x"), batch(["c", "d", "d"], 9, "y")
    write_parquet(a, tmp_path / "0.parquet")
    write_parquet(b, tmp_path / "1.parquet")
    for chunk_groups in (1, 3, 4):
        chunks = list(iter_group_chunks(tmp_path, chunk_groups, batch_size=2))
        check_chunks(chunks, Rollouts.concat([a, b]), chunk_groups)  # concat pads to the longest responses
    one = list(iter_group_chunks(tmp_path, 4))
    assert one[0].response_mask is not None and one[0].response_mask.shape == (8, 9)


def test_reader_holds_one_chunk_and_one_batch(tmp_path, monkeypatch):
    """Structural bound on memory: when chunk k is yielded, the reader has read at most the rows of
    chunks 1..k plus one record batch, and it reads lazily (the first chunk comes before the rest of
    the dataset is touched)."""
    r = make_rollouts(40, 3, seed=1)
    write_slices(r, tmp_path, [25, 50, 89], row_group_size=7)
    read = {"rows": 0, "batches": 0}
    real = _stream._batches

    def counting(file, batch_size, columns=None):
        for b in real(file, batch_size, columns):
            read["rows"] += b.num_rows
            read["batches"] += 1
            assert b.num_rows <= batch_size
            yield b

    monkeypatch.setattr(_stream, "_batches", counting)
    emitted = 0
    stream = iter_group_chunks(tmp_path, 4, batch_size=5)
    assert read["rows"] == 0  # nothing read before the first chunk is asked for
    for chunk in stream:
        emitted += chunk.num_trajectories
        assert chunk.num_trajectories <= 4 * 3
        assert emitted <= read["rows"] <= emitted + 5  # one record batch ahead at most
        if emitted == 12:
            assert read["rows"] < r.num_trajectories
    assert emitted == read["rows"] == r.num_trajectories


def test_interleaved_groups_are_an_error_naming_file_row_and_group(tmp_path, log):
    order = [0, 1, 2, 3, 4, 5, 6, 7, 8]
    order = order[:4] + order[6:] + order[4:6]  # task1's last two rows after task2's
    path = tmp_path / "mixed.parquet"
    pq.write_table(to_arrow(log.select(order)), path)  # another writer's layout (write_parquet groups them)
    for chunk_groups in (1, 100):  # also when everything fits one chunk: from_arrow alone would merge them
        with pytest.raises(RolloutError, match="not contiguous") as info:
            list(iter_group_chunks(path, chunk_groups, batch_size=2))
        assert info.value.source == str(path) and info.value.group == "task1" and info.value.field == "group"
        assert (
            "row 7" in str(info.value) and "'task2'" in str(info.value) and "sort the log by group" in str(info.value)
        )


def test_interleaving_across_files(tmp_path, log):
    write_parquet(log.select([0, 1, 2, 3]), tmp_path / "0.parquet")  # task0, then task1's first row
    write_parquet(log.select([6, 4, 5]), tmp_path / "1.parquet")  # task2, then task1 again
    with pytest.raises(RolloutError, match=r"1\.parquet, group 'task1', field 'group': row 1: ") as info:
        list(iter_group_chunks(tmp_path, 10))
    assert info.value.source == str(tmp_path / "1.parquet")


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2", None])
def test_bad_chunk_groups(dataset, bad):
    with pytest.raises(ValueError, match="positive integer chunk_groups, got"):
        iter_group_chunks(dataset, bad)
    with pytest.raises(ValueError, match="positive integer batch_size"):
        iter_group_chunks(dataset, 2, batch_size=bad)


def test_missing_and_empty_sources(tmp_path, log):
    with pytest.raises(RolloutError, match="nope: no such file or folder"):
        iter_group_chunks(tmp_path / "nope", 1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    (tmp_path / "empty" / "_SUCCESS.parquet").write_text("")  # marker / hidden files are not data
    (tmp_path / "empty" / ".tmp.parquet").write_text("")
    with pytest.raises(RolloutError, match="empty: no Parquet files"):
        iter_group_chunks(tmp_path / "empty", 1)
    zero = tmp_path / "zero"
    zero.mkdir()
    pq.write_table(to_arrow(log).slice(0, 0), zero / "0.parquet")
    with pytest.raises(RolloutError, match=r"zero/0\.parquet: no trajectories: this file has no rows"):
        iter_group_chunks(zero / "0.parquet", 1)
    pq.write_table(to_arrow(log).slice(0, 0), zero / "1.parquet")
    with pytest.raises(RolloutError, match="the 2 Parquet files here have no rows"):
        iter_group_chunks(zero, 1)
    write_parquet(log, zero / "2.parquet")  # empty files beside data are fine
    check_chunks(list(iter_group_chunks(zero, 3)), log, 3)


def test_not_parquet_is_an_error_naming_the_file(dataset):
    bad = dataset / "a1.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(RolloutError, match="cannot read Parquet") as info:
        iter_group_chunks(dataset, 2)
    assert info.value.source == str(bad) and "magic bytes not found" in str(info.value)  # pyarrow's words


def test_damaged_data_pages_fail_while_streaming_naming_the_file(tmp_path, log):
    path = tmp_path / "d.parquet"
    pq.write_table(to_arrow(log), path, row_group_size=3, compression="snappy")
    raw = bytearray(path.read_bytes())
    raw[200:1400] = bytes(1200)  # zero the pages of the later row groups; the footer stays valid
    path.write_bytes(bytes(raw))
    stream = iter_group_chunks(path, 1, batch_size=3)  # the footer is fine
    with pytest.raises(RolloutError) as info:
        list(stream)
    assert info.value.source == str(path)
    assert "cannot read Parquet" in str(info.value)


def test_schema_mismatch_names_both_files(tmp_path, log):
    write_parquet(log.select([0, 1, 2]), tmp_path / "0.parquet")
    table = to_arrow(log.select([3, 4, 5]))
    pq.write_table(table.drop_columns(["prompt"]), tmp_path / "1.parquet")
    with pytest.raises(RolloutError, match="prompt is missing here") as info:
        iter_group_chunks(tmp_path, 1)
    assert info.value.source == str(tmp_path / "1.parquet") and str(tmp_path / "0.parquet") in str(info.value)
    # a nested difference: the steps' state stored as int32 in the second file
    steps = table.column("steps").type
    state32 = pa.large_list(
        pa.struct([f if f.name != "state" else pa.field("state", pa.int32()) for f in steps.value_type])
    )
    pq.write_table(
        table.cast(table.schema.set(table.schema.get_field_index("steps"), pa.field("steps", state32))),
        tmp_path / "1.parquet",
    )
    with pytest.raises(RolloutError, match=r"steps\.state is int32 here, int64 there"):
        iter_group_chunks(tmp_path, 1)


def test_a_file_that_read_parquet_refuses_is_refused_up_front_in_its_words(tmp_path, log):
    write_parquet(log.select([0, 1, 2]), tmp_path / "0.parquet")
    pq.write_table(to_arrow(log.select([3, 4, 5])).drop_columns(["outcome"]), tmp_path / "1.parquet")
    (tmp_path / "0.parquet").rename(tmp_path / "2.parquet")  # the bad file first: no schema comparison
    with pytest.raises(RolloutError) as info:
        iter_group_chunks(tmp_path, 1)
    with pytest.raises(RolloutError) as whole:
        read_parquet(tmp_path / "1.parquet")
    assert str(info.value) == str(whole.value) and "missing column 'outcome'" in str(whole.value)


@pytest.mark.parametrize("bad_row", [4, 7])  # inside one file; in the second file of a group that spans two
def test_malformed_row_in_a_later_chunk_has_read_parquets_message_and_its_file(tmp_path, log, bad_row):
    paths = write_slices(log, tmp_path, [6])  # task2 (rows 6..8) whole in the second file
    paths = write_slices(log, tmp_path, [7]) if bad_row == 7 else paths  # task2 split across the files
    file = paths[0] if bad_row < 6 else paths[1]
    local = bad_row if file == paths[0] else bad_row - 7
    table = pq.read_table(file)
    outcome = table.column("outcome").to_pylist()
    outcome[local] = float("nan")
    pq.write_table(table_with(table, "outcome", outcome, pa.float32()), file)
    with pytest.raises(RolloutError) as whole:
        read_parquet(file)
    stream = iter_group_chunks(tmp_path, 1)
    good = [next(stream) for _ in range(bad_row // 3)]  # the chunks before the bad row's group are fine
    assert [group_names(c) for c in good] == [[f"task{k}"] for k in range(bad_row // 3)]
    with pytest.raises(RolloutError) as info:
        next(stream)
    e, w = info.value, whole.value
    assert (e.reason, e.trajectory, e.group, e.field) == (w.reason, w.trajectory, w.group, w.field)
    assert e.source == str(file) and str(e) == f"{file}, {w}"


def test_duplicate_id_across_files_of_one_chunk_names_both_files(tmp_path, log):
    write_parquet(log.select([0, 1, 2, 3]), tmp_path / "0.parquet")
    table = to_arrow(log.select([4, 5]))
    pq.write_table(table_with(table, "id", ["task0-agent0", "task1-agent2"], pa.large_string()), tmp_path / "1.parquet")
    with pytest.raises(RolloutError, match="not unique") as info:
        list(iter_group_chunks(tmp_path, 5))
    assert info.value.source == f"{tmp_path / '0.parquet'}, {tmp_path / '1.parquet'}"


_RECORDS = make_records(6, 4, seed=11)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 4), min_size=1, max_size=6),
    cut_seeds=st.lists(st.integers(0, 10_000), max_size=4),
    chunk_groups=st.integers(1, 7),
    batch_size=st.integers(1, 6),
)
def test_random_groups_files_and_chunks(sizes, cut_seeds, chunk_groups, batch_size):
    records = [rec for g, n in enumerate(sizes) for rec in _RECORDS[4 * g : 4 * g + n]]
    r = build(records)
    cuts = sorted({1 + s % (r.num_trajectories - 1) for s in cut_seeds}) if r.num_trajectories > 1 else []
    with tempfile.TemporaryDirectory() as tmp:
        write_slices(r, Path(tmp), cuts, row_group_size=3)
        check_chunks(list(iter_group_chunks(tmp, chunk_groups, batch_size=batch_size)), r, chunk_groups)


# ------------------------------------------------------------------------------------------ writing
def simple_credit(r: Rollouts) -> Credit:
    """A per-row credit (so the credit of a chunk is the chunk's rows of the whole batch's credit)."""
    label = r.label.float() if r.label is not None else torch.zeros(r.num_steps)
    return Credit(r.outcome - 0.25, r.reward + 0.5 * label - 0.125, r.call_ok.float() / 8)


def test_chunked_credit_file_equals_the_jsonl_records(dataset, log, tmp_path):
    out = tmp_path / "credit.parquet"
    with ParquetCreditWriter(out, recipe="toy", inputs=[dataset]) as writer:
        for chunk in iter_group_chunks(dataset, 2):
            writer.write(chunk, simple_credit(chunk))
        assert not out.exists()  # only on close
    assert writer.closed and writer.rows == log.num_trajectories
    file = pq.ParquetFile(out)
    assert file.metadata.num_row_groups == 4 and file.schema_arrow.metadata[b"stepcredit.recipe"] == b"toy"
    assert file.schema_arrow.remove_metadata().equals(CREDIT_SCHEMA)
    assert pq.read_table(out).to_pylist() == credit_records(log, simple_credit(log), "toy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["credit.parquet", "data"]  # no temporary file left


def test_credit_table_matches_records_on_real_shapes():
    r = make_rollouts(3, 4, seed=2)
    c = simple_credit(r)
    assert credit_table(r, c, "x").to_pylist() == credit_records(r, c, "x")
    assert credit_table(r, Credit(r.outcome * 2), "").to_pylist() == credit_records(r, Credit(r.outcome * 2), "")


def test_writer_refuses_inputs_and_leaves_nothing_on_error(tmp_path, dataset, log):
    with pytest.raises(RolloutError, match="would overwrite the input"):
        ParquetCreditWriter(dataset / "a0.parquet", inputs=[dataset / "a0.parquet"])
    with pytest.raises(RolloutError, match="inside the input folder"):
        ParquetCreditWriter(dataset / "b" / "credit.parquet", inputs=[dataset])
    with pytest.raises(RolloutError, match="does not exist"):
        ParquetCreditWriter(tmp_path / "no" / "credit.parquet")
    out = tmp_path / "credit.parquet"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), ParquetCreditWriter(out) as writer:
        writer.write(log, simple_credit(log))
        raise RuntimeError("boom")
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["credit.parquet", "data"]
    with pytest.raises(ValueError, match="is closed"):
        writer.write(log, simple_credit(log))
    with pytest.raises(ValueError, match="trajectory credit has shape"):
        write_credit_parquet(log, Credit(torch.zeros(3)), out)
    assert out.read_bytes() == b"old"


def test_writer_without_writes_makes_an_empty_credit_file(tmp_path, log):
    out = tmp_path / "c.parquet"
    ParquetCreditWriter(out).close()
    assert pq.read_table(out).num_rows == 0
    write_credit_parquet(log, simple_credit(log), out, "r")
    assert pq.read_table(out).num_rows == log.num_trajectories
