"""Credit and audit of logs larger than memory: a Parquet dataset (a file or a folder) streamed in
group-aligned chunks (``io.iter_group_chunks``), each chunk credited and audited on its own, on this
machine (``engine="local"``) or on a Ray cluster through Ray Data (``engine="ray"``,
``streaming.ray``).

A chunk is a batch: a recipe sees one chunk at a time, as a trainer sees one batch. Recipes whose
components only look inside a group (GRPO, RLOO, GiGPO, ToolPO, tree estimators, call consensus…)
give every trajectory the credit it gets when the whole log is one batch; components that look across
groups (``reinforce_pp_baseline``'s batch whitening, a budget over the batch) see the chunk.

Memory is bounded by one chunk plus the audit's per-group statistics (``auditing.run.RecipePart``:
integer counts per group and (group, score) cells), whatever the size of the log. Both engines run the
same ``ChunkWork`` on the same chunks (``io.plan_group_chunks`` = the stream's chunks) with one torch
thread, and the audit adds the chunks' statistics up in chunk order, so the two engines give the same
numbers bit for bit — and the same on any machine, whatever its core count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from stepcredit.auditing.run import Audit, BatchPart, Credited, batch_part, finish
from stepcredit.core import Rollouts
from stepcredit.core.errors import RolloutError
from stepcredit.io import ParquetCreditWriter, credit_table, dataset_files, iter_group_chunks
from stepcredit.recipe import Recipe
from stepcredit.streaming.options import RayOptions, one_thread

Engine = Literal["local", "ray"]
ENGINES: tuple[str, ...] = ("local", "ray")
DEFAULT_CHUNK_GROUPS = 1024

__all__ = [
    "DEFAULT_CHUNK_GROUPS",
    "ENGINES",
    "AuditWork",
    "CreditWork",
    "Engine",
    "RayOptions",
    "dataset_rows",
    "map_chunks",
    "stream_audit",
    "stream_credit",
]


def dataset_rows(source: str | Path) -> int:
    """Trajectories in a Parquet file or dataset folder, from the files' footers (a file that is not
    Parquet is named in the ``RolloutError``)."""
    import pyarrow.parquet as pq

    total = 0
    for path in dataset_files(source):
        try:
            total += pq.read_metadata(path).num_rows
        except (pa.ArrowException, OSError, UnicodeError) as exc:
            raise RolloutError(f"cannot read Parquet ({exc})", source=str(path)) from None
    return total


def map_chunks(
    source: str | Path,
    chunk_groups: int,
    work: Callable[[int, Rollouts], Any],
    *,
    engine: Engine = "local",
    cls: type[Rollouts] = Rollouts,
    ray: RayOptions | None = None,
) -> Iterator[tuple[int, int, Any]]:
    """``(index, trajectories, work(index, chunk))`` for every group-aligned chunk of the dataset, in
    dataset order. ``local`` runs ``work`` here chunk after chunk; ``ray`` plans the chunks here and
    maps them through Ray Data (each worker reads its own chunk's rows), yielding results in order
    as they are ready. ``work`` must pickle for ``ray`` (e.g. ``CreditWork``, ``AuditWork``)."""
    if engine == "local":
        for k, chunk in enumerate(iter_group_chunks(source, chunk_groups, cls=cls)):
            with one_thread():
                result = work(k, chunk)
            yield k, chunk.num_trajectories, result
    elif engine == "ray":
        from stepcredit.streaming.ray import ray_map_chunks

        yield from ray_map_chunks(source, chunk_groups, work, cls=cls, options=ray or RayOptions())
    else:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")


def _recipes(specs: Sequence[dict[str, Any]], allow_imports: bool) -> list[Recipe]:
    return [Recipe.from_dict(s, allow_imports=allow_imports) for s in specs]


class _Shipped:
    """Work that pickles as its ``init`` fields (recipes as their ``to_dict``): what it loads lazily —
    the recipes — is rebuilt where it runs."""

    def __getstate__(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}  # type: ignore[arg-type]

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]


@dataclass
class CreditWork(_Shipped):
    """Credit of one chunk by a recipe, as a table of the credit file (``io.credit_table``), with
    counts: ``(table, trajectories credited, steps, steps with non-zero credit)``. The recipe travels
    as its ``to_dict`` (it is rebuilt where the work runs)."""

    recipe: dict[str, Any]
    allow_imports: bool = False
    _loaded: Recipe | None = field(default=None, init=False, repr=False, compare=False)

    def __call__(self, index: int, chunk: Rollouts) -> tuple[pa.Table, int, int, int]:
        if self._loaded is None:
            self._loaded = _recipes([self.recipe], self.allow_imports)[0]
        rec = self._loaded
        result = rec.run(chunk)
        steps = result.credit.per_step(result.rollouts)
        table = credit_table(result.rollouts, result.credit, rec.name)
        return table, result.rollouts.num_trajectories, result.rollouts.num_steps, int((steps != 0).sum())


@dataclass
class AuditWork(_Shipped):
    """The audit statistics of one chunk for every recipe (``auditing.run.batch_part``), and for the
    sample chunk (index ``sample``) the chunk itself with each recipe's credit per unit, for the
    report (``None`` for every other chunk)."""

    recipes: list[dict[str, Any]]
    allow_imports: bool = False
    success_threshold: float = 1.0
    subsets: bool = True
    sample: int = 0
    _loaded: list[Recipe] | None = field(default=None, init=False, repr=False, compare=False)

    def __call__(self, index: int, chunk: Rollouts) -> tuple[BatchPart, tuple[Rollouts, list[Credited]] | None]:
        if self._loaded is None:
            self._loaded = _recipes(self.recipes, self.allow_imports)
        sample = index == self.sample
        part, credited = batch_part(chunk, self._loaded, success_threshold=self.success_threshold,
                                    subsets=self.subsets, keep_credit=sample)
        return part, (chunk, credited) if sample else None


def stream_credit(
    source: str | Path,
    recipe: str | Recipe,
    output: str | Path,
    *,
    chunk_groups: int = DEFAULT_CHUNK_GROUPS,
    engine: Engine = "local",
    allow_imports: bool = False,
    cls: type[Rollouts] = Rollouts,
    ray: RayOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Credit a Parquet dataset chunk by chunk into one Parquet credit file at ``output`` (the fields
    of the JSONL credit file; written beside it and renamed when complete; never over an input).
    ``progress(n)`` is called with the trajectories of each chunk done. Returns counts:
    ``chunks``, ``trajectories``, ``credited``, ``steps``, ``nonzero_steps``."""
    rec = Recipe.load(recipe, allow_imports=allow_imports)
    work = CreditWork(rec.to_dict(), allow_imports)
    counts = {"chunks": 0, "trajectories": 0, "credited": 0, "steps": 0, "nonzero_steps": 0}
    with ParquetCreditWriter(output, recipe=rec.name, inputs=[source]) as out:
        for _, rows, (table, credited, steps, nonzero) in map_chunks(
            source, chunk_groups, work, engine=engine, cls=cls, ray=ray
        ):
            out.write_table(table)
            for key, n in (("chunks", 1), ("trajectories", rows), ("credited", credited), ("steps", steps),
                           ("nonzero_steps", nonzero)):
                counts[key] += n
            if progress is not None:
                progress(rows)
    return counts


def stream_audit(
    source: str | Path,
    recipes: Sequence[str | Recipe],
    *,
    chunk_groups: int = DEFAULT_CHUNK_GROUPS,
    engine: Engine = "local",
    bootstrap: int = 1000,
    seed: int = 0,
    success_threshold: float = 1.0,
    subsets: bool = True,
    allow_imports: bool = False,
    cls: type[Rollouts] = Rollouts,
    ray: RayOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> Audit:
    """The audit (``auditing.audit``) of a Parquet dataset streamed in chunks of ``chunk_groups``
    groups: every metric, interval and table covers the whole dataset (the bootstrap resamples its
    groups from per-group statistics); the trajectory sections of the report show the first chunk
    (``Audit.rollouts``). A dataset that fits one chunk gives exactly ``audit`` of it."""
    start = time.perf_counter()
    loaded = [Recipe.load(r, allow_imports=allow_imports) for r in recipes]
    work = AuditWork([r.to_dict() for r in loaded], allow_imports, success_threshold, subsets)
    parts: list[BatchPart] = []
    sample: tuple[Rollouts, list[Credited]] | None = None
    for _, rows, (part, first) in map_chunks(source, chunk_groups, work, engine=engine, cls=cls, ray=ray):
        parts.append(part)
        sample = first or sample
        if progress is not None:
            progress(rows)
    assert sample is not None  # a dataset has a first chunk (iter_group_chunks refuses an empty one)
    return finish(parts, loaded, *sample, seconds=time.perf_counter() - start, bootstrap=bootstrap,
                  seed=seed, success_threshold=success_threshold)
