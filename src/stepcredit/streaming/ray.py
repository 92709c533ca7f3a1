"""The Ray Data engine of ``stepcredit.streaming``: group-aligned chunks of a Parquet dataset mapped
through a ``ChunkWork`` on a Ray cluster.

The driver plans the chunks (``io.plan_group_chunks``: one pass over the ``group`` column, so a
group is never split, even across files) and makes a Ray Dataset of the plans, one block each;
``Dataset.map`` runs the work where Ray places it — the worker reads its chunk's rows itself
(``io.read_chunk``) on one torch thread — and the results come back in dataset order
(``preserve_order``), so the caller reduces them in the same order as the local engine: the same
numbers, bit for bit. Ray's own aggregates are not used for the reduction (their summation order
depends on the partitioning and differs in the last bits).

Needs ``ray[data]`` (``pip install 'stepcredit[ray]'``; plain ``ray`` lacks the pandas Ray Data needs).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepcredit.core import Rollouts
from stepcredit.io import ChunkPlan, plan_group_chunks, read_chunk

if TYPE_CHECKING:
    from stepcredit.streaming.options import RayOptions

__all__ = ["import_ray_data", "ray_map_chunks"]


def import_ray_data() -> Any:
    """``ray`` with ``ray.data`` imported, or ``ImportError`` saying what to install."""
    try:
        import ray
        import ray.data  # needs pandas: the ray[data] extra
    except ImportError as exc:
        raise ImportError(
            f"the ray engine needs Ray Data ({exc}); install it with: pip install 'stepcredit[ray]' "
            "(ray[data])"
        ) from None
    return ray


class _Task:
    """The per-row function of ``Dataset.map``: read the planned chunk, run the work on one thread."""

    def __init__(self, work: Callable[[int, Rollouts], Any], cls: type[Rollouts]) -> None:
        self.work = work
        self.cls = cls

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        from stepcredit.streaming.options import one_thread

        plan: ChunkPlan = pickle.loads(row["plan"])
        with one_thread():
            chunk = read_chunk(plan, cls=self.cls)
            result = self.work(plan.index, chunk)
        return {"index": plan.index, "rows": plan.rows, "result": pickle.dumps(result, protocol=5)}


def ray_map_chunks(
    source: str | Path,
    chunk_groups: int,
    work: Callable[[int, Rollouts], Any],
    *,
    cls: type[Rollouts] = Rollouts,
    options: RayOptions,
) -> Iterator[tuple[int, int, Any]]:
    """``(index, trajectories, work(index, chunk))`` per chunk, in dataset order, computed on Ray."""
    ray = import_ray_data()
    plans = plan_group_chunks(source, chunk_groups, cls=cls)
    started = False
    if not ray.is_initialized():
        ray.init(
            address=options.address,
            num_cpus=options.num_cpus if options.address is None else None,
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
        )
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        if not options.progress:
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        ctx.enable_progress_bars = options.progress
        items = [{"plan": pickle.dumps(p)} for p in plans]
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map(_Task(work, cls), num_cpus=1)
        expected = 0
        for row in ds.iter_rows():
            index = int(row["index"])
            if index != expected:  # preserve_order is what makes the reduction exact: check it
                raise RuntimeError(f"Ray Data returned chunk {index} where chunk {expected} was due")
            expected += 1
            yield index, int(row["rows"]), pickle.loads(row["result"])
        if expected != len(plans):
            raise RuntimeError(f"Ray Data returned {expected} of {len(plans)} chunks")
    finally:
        if started:
            ray.shutdown()
