"""The fast paths of ``from_trainer_tensors`` give exactly what the reference paths give: group ids
and names by hashing (uid strings) vs by sorting, the numpy block scan of the mask and the tool-call
patterns vs torch's whole-batch kernels, and the trusted construction vs full validation."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch

from stepcredit import RolloutError
from stepcredit.core import Rollouts
from stepcredit.io import from_trainer_tensors
from stepcredit.io import tensors as _tensors
from stepcredit.io.tensors import _scan_numpy, _scan_torch, _sorted_groups, _string_codes, dense_groups
from tests.support.schema import columns_of


def _reference_groups(index):
    """The sorting path alone (what ``dense_groups`` did for every index)."""
    if isinstance(index, torch.Tensor):
        index = index.cpu().numpy()
    arr = np.asarray(index)
    return _sorted_groups(arr)


UUIDS = np.array([str(uuid.UUID(int=(i * 7919) % 23)) for i in range(200)], dtype=object)
INDEXES = {
    "uuid strings": UUIDS,
    "verl uid repeat": np.repeat(UUIDS[:25], 8),
    "numpy str": np.array(["b", "a", "b", "c", "a"]),
    "non-ascii": np.array(["é", "日本", "é", "x"], dtype=object),
    "list of str": ["g2", "g1", "g2"],
    "ints": [3, 1, 3, 2, 1],
    "numpy ints": np.array([5, 5, 2, 9], dtype=np.int32),
    "tensor": torch.tensor([4, 0, 4, 1]),
    "bool tensor": torch.tensor([True, False, True]),
    "floats": [1.5, 2.0, 1.5],
    "mixed objects": np.array([1, "a", 2.5, None, 1], dtype=object),
    "mixed list": ["a", 1, "b", "a"],
    "None among strings": np.array(["a", None, "a"], dtype=object),
    "bytes among strings": np.array([b"x", "x", b"y"], dtype=object),
    "trailing NUL": np.array(["a\x00", "a", "b\x00c"], dtype=object),
    "str subclass": np.array([np.str_("q"), "q", "r"], dtype=object),
    "lone surrogate": np.array(["a\ud800", "b", "a\ud800"], dtype=object),
    "one": np.array(["only"], dtype=object),
    "empty": np.array([], dtype=object),
}


FAST = ["uuid strings", "verl uid repeat", "numpy str", "non-ascii", "list of str", "mixed list", "one"]


@pytest.mark.parametrize("name", list(INDEXES))
def test_dense_groups_equal_the_sorting_path(name):
    """Plain-string indexes take the hashed path and give what sorting gives; every other index takes
    the sorting path itself (checked, so no case compares that path with itself unawares)."""
    index = INDEXES[name]
    arr = np.asarray(index.cpu().numpy() if isinstance(index, torch.Tensor) else index)
    assert (_string_codes(arr) is not None) == (name in FAST), name
    got_ids, got_names = dense_groups(index)
    want_ids, want_names = _reference_groups(index)
    assert got_ids.dtype == torch.int64 and torch.equal(got_ids, want_ids)
    assert got_names == want_names and all(type(n) is str for n in got_names)


def test_dense_groups_by_hand():
    ids, names = dense_groups(np.array(["b", "a", "b", "c\x00", 3, "c"], dtype=object))  # the object path
    assert ids.tolist() == [0, 1, 0, 2, 3, 4] and names == ["b", "a", "c\x00", "3", "c"]  # a trailing NUL is kept
    ids, names = dense_groups(np.array([np.str_("q"), "q", "r"], dtype=object))  # a str subclass is its text
    assert ids.tolist() == [0, 0, 1] and names == ["q", "r"]
    ids, names = dense_groups(np.array(["é", "x", "é"], dtype=object))  # the hashed path
    assert ids.tolist() == [0, 1, 0] and names == ["é", "x"]


def test_string_codes_take_only_plain_strings():
    assert _string_codes(UUIDS) is not None
    assert _string_codes(np.array(["b", "a"])) is not None
    for name in ("ints", "mixed objects", "None among strings", "bytes among strings", "trailing NUL",
                 "str subclass", "lone surrogate", "empty"):
        assert _string_codes(np.asarray(INDEXES[name])) is None, name


def test_dense_groups_errors():
    with pytest.raises(RolloutError, match="1-D group index"):
        dense_groups(np.array([["a", "b"]], dtype=object))
    with pytest.raises(RolloutError, match="one per row"):
        from_trainer_tensors(torch.ones(2, 3), np.array(["a", "b", "c"], dtype=object), outcome=torch.zeros(2))


def _random_batch(n, t, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(n, t, generator=g) < 0.7).to(dtype)
    mask[0] = 0  # a row without steps
    if n > 1:
        mask[1] = 1  # one run over the whole row
    tokens = torch.randint(0, 5, (n, t), generator=g)
    return mask, tokens


def _same_scan(a, b):
    assert torch.equal(a.mask, b.mask) and a.mask.dtype == torch.bool
    for x, y in zip((a.rows, a.starts, a.ends), (b.rows, b.starts, b.ends), strict=True):
        assert x.dtype == torch.int64 and torch.equal(x, y)
    assert len(a.hits) == len(b.hits)
    for (r1, c1), (r2, c2) in zip(a.hits, b.hits, strict=True):
        assert torch.equal(r1, r2) and torch.equal(c1, c2)


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (5, 7), (9, 8), (17, 64), (40, 101)])
@pytest.mark.parametrize("chunk", [1, 64, 1 << 20])
def test_numpy_scan_equals_torch_kernels(shape, chunk, monkeypatch):
    monkeypatch.setattr(_tensors, "_CHUNK_BYTES", chunk)  # one row per block up to all in one
    n, t = shape
    mask, tokens = _random_batch(n, t, seed=n * 1000 + t)
    patterns = [[1], [2, 3], [4, 4, 4], [], list(range(t + 1))]
    want = _scan_torch(mask, tokens, patterns)
    pats = [torch.tensor(p, dtype=tokens.dtype).numpy() for p in patterns]
    _same_scan(_scan_numpy(mask.numpy(), tokens.numpy(), pats), want)
    _same_scan(_scan_numpy(mask.numpy(), None, []), _scan_torch(mask, None, []))


@pytest.mark.parametrize(
    "convert",
    [
        lambda m: m.to(torch.float64),
        lambda m: m.to(torch.int64),
        lambda m: m.to(torch.int8),
        lambda m: m.bool(),
        lambda m: m.half(),
        lambda m: m.bfloat16(),  # numpy has no bfloat16: the torch kernels
        lambda m: (m * 0.5 - (1 - m) * 0.0),  # 0.5 counts as 1; -0.0 as 0
        lambda m: m.t().contiguous().t(),  # not contiguous
        lambda m: m.requires_grad_(True),
        lambda m: m.to(torch.complex64).conj(),  # numpy() refuses the conjugate bit: the torch kernels
    ],
)
def test_scan_of_any_mask_dtype_and_layout(convert, monkeypatch):
    monkeypatch.setattr(_tensors, "_CHUNK_BYTES", 100)
    mask, tokens = _random_batch(13, 29, seed=3)
    m = convert(mask.clone())
    want = _scan_torch(m.detach(), tokens, [[1, 2], [3]])
    _same_scan(_tensors._scan(m, tokens, [[1, 2], [3]]), want)


def test_nan_in_mask_counts_as_one(monkeypatch):
    monkeypatch.setattr(_tensors, "_CHUNK_BYTES", 16)
    mask = torch.tensor([[0.0, float("nan"), 1.0, 0.0, float("nan")], [1.0, 0.0, 0.0, 0.0, 0.0]])
    got = _tensors._scan(mask, None, [])
    assert got.mask.tolist() == [[False, True, True, False, True], [True, False, False, False, False]]
    assert (got.rows.tolist(), got.starts.tolist(), got.ends.tolist()) == ([0, 0, 1], [1, 4, 0], [3, 5, 1])
    _same_scan(got, _scan_torch(mask, None, []))


@pytest.mark.parametrize("threads", [1, 2])
def test_from_trainer_tensors_equals_fully_validated_build(threads, monkeypatch):
    """The trusted construction gives a batch that full validation accepts and that equals one built
    from the same columns the ordinary way; several scan blocks and torch thread counts give the same as one."""
    monkeypatch.setattr(_tensors, "_CHUNK_BYTES", 256)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        mask, tokens = _random_batch(23, 40, seed=11)
        for col in (0, 9, 18, 27):  # a call <7> . . . <8 8> in a run of ones, four per row
            tokens[2:, col], tokens[2:, col + 4 : col + 6] = 7, 8
            mask[2:, col : col + 6] = 1
        uids = np.repeat(np.array([str(uuid.UUID(int=k)) for k in range(6)], dtype=object), 4)[:23]
        kwargs = dict(responses=tokens, tool_call_start=[7], tool_call_end=[8, 8])
        r = from_trainer_tensors(mask, uids, outcome=torch.rand(23), **kwargs)
        assert r.num_calls == 4 * 21
        full = Rollouts(**columns_of(r), texts=r.texts)  # the ordinary, fully validated construction
        assert full.equals(r)
        monkeypatch.setattr(_tensors, "_CHUNK_BYTES", 1 << 20)
        torch.set_num_threads(1)
        one_block = from_trainer_tensors(mask, uids, outcome=r.outcome, **kwargs)
        assert one_block.equals(r)
    finally:
        torch.set_num_threads(before)


def test_trusted_build_still_checks_what_can_be_wrong():
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    with pytest.raises(RolloutError, match="finite"):
        from_trainer_tensors(mask, ["a", "b"], outcome=torch.tensor([0.0, float("inf")]))
    with pytest.raises(RolloutError, match="not unique"):
        from_trainer_tensors(mask, ["a", "b"], outcome=torch.zeros(2), ids=["x", "x"])
    with pytest.raises(RolloutError, match="expected 2 trajectory ids"):
        from_trainer_tensors(mask, ["a", "b"], outcome=torch.zeros(2), ids=["x"])


def test_default_ids_and_names_are_text():
    r = from_trainer_tensors(torch.ones(3, 2), np.array(["u1", "u0", "u1"], dtype=object), outcome=torch.zeros(3))
    assert r.texts.ids.to_pylist() == ["0", "1", "2"]
    assert r.texts.group_names.to_pylist() == ["u1", "u0"]
    assert r.texts.action.to_pylist() == ["", "", ""]


def test_scan_masks_of_successive_batches_are_independent():
    """A scan's mask stays as it was while later batches (of other sizes, other bytes) are scanned,
    and each later scan gives exactly the torch kernels' result."""
    first, _ = _random_batch(40, 101, seed=1)
    kept = _tensors._scan(first, None, []).mask
    view = kept[3:9]
    del kept
    want_view = first[3:9] != 0
    for seed in range(2, 6):
        mask, _ = _random_batch(40, 101, seed=seed)
        if seed % 2:
            mask = torch.ones_like(mask)
        _same_scan(_tensors._scan(mask, None, []), _scan_torch(mask, None, []))
        assert torch.equal(view, want_view)
    smaller, _ = _random_batch(20, 101, seed=9)
    got = _tensors._scan(smaller, None, [])
    assert got.mask.shape == (20, 101)
    _same_scan(got, _scan_torch(smaller, None, []))
