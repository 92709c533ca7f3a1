"""``stepcredit`` command line: inspect and convert rollout logs, credit them with a recipe, audit where
the credit lands, and run the built-in demo.

Commands that read a log take the same loader options (``--format``, ``--id-field``, ``--group-field``,
``--reward-field``, ``--messages-field``), declared once in ``LOG_OPTIONS`` and added to each command
by ``@reads_log``; they all load through ``stepcredit.io.load``. Bad input of any kind ends in one line
on stderr and exit status 2 (``_guard``).
"""

from __future__ import annotations

import functools
import inspect as pyinspect
import json
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stepcredit.core import Rollouts
from stepcredit.core.errors import RolloutError
from stepcredit.core.limits import MAX_GROUP_SIZE, MAX_NEW_TOKENS
from stepcredit.io import FORMATS, REFERENCES_FORMAT

app = typer.Typer(
    name="stepcredit",
    help="Dense per-step credit for RL of tool-using LLM agents: inspect, convert and credit rollout logs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help is plain text: brackets in it ({group: [actions]}) print as written
)
console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")


def _exit(exc: ValueError) -> NoReturn:
    """The one error exit of the CLI: one line on stderr, exit status 2, no traceback."""
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _guard(fn: Callable[[], T]) -> T:
    """Run ``fn``; bad input (a ``RolloutError``, a ``RecipeError``, or a ``ValueError`` a component
    raises for parameters that do not fit the data) goes to ``_exit``."""
    try:
        return fn()
    except ValueError as exc:
        _exit(exc)


@dataclass(frozen=True)
class Log:
    """A log named on the command line, with the loader options given with it."""

    path: Path
    format: str = "auto"
    id_field: str = "id"
    group_field: str = "group"
    reward_field: str = "reward"
    messages_field: str = "messages"

    def output(self, path: Path, suffixes: tuple[str, ...] = ()) -> Path:
        """``path`` checked as an output of this command: a file name (with one of ``suffixes``) in a
        folder that exists, and never one of the inputs (exit 2 with one line otherwise)."""
        from stepcredit.io import check_output

        def go() -> Path:
            checked = check_output(path, [self.path])  # a missing folder or a folder as output, first
            if suffixes and path.suffix not in suffixes:
                raise RolloutError(f"expected a {' or '.join(suffixes)} file name", source=str(path), field="output")
            return checked

        return _guard(go)

    def load(self, references: Path | None = None) -> Rollouts:
        """The batch (exit 2 with one line on bad input)."""
        from stepcredit.io import ChatFields, load

        fields = ChatFields(
            id=self.id_field, group=self.group_field, reward=self.reward_field, messages=self.messages_field
        )
        return _guard(lambda: load(self.path, format=self.format, fields=fields, references=references))  # type: ignore[arg-type]


LOG_OPTIONS: dict[str, tuple[Any, Any]] = {
    "path": (Annotated[Path, typer.Argument(help="A log file (.jsonl, .json, .parquet) or a folder of them.")], ...),
    "format": (Annotated[str, typer.Option("--format", "-f", help=" | ".join(FORMATS) + ".")], "auto"),
    "id_field": (
        Annotated[
            str,
            typer.Option(
                help="Field(s) holding the trajectory id; several, comma-separated "
                "(task_id,trial), are joined with ':'."
            ),
        ],
        "id",
    ),
    "group_field": (
        Annotated[str, typer.Option(help="Chat records: field holding the group (task / prompt id).")],
        "group",
    ),
    "reward_field": (
        Annotated[str, typer.Option(help="Chat records: field holding the outcome reward (dotted path).")],
        "reward",
    ),
    "messages_field": (Annotated[str, typer.Option(help="Chat records: field holding the message list.")], "messages"),
}


def reads_log(fn: Callable[..., None]) -> Callable[..., None]:
    """Give a command the log argument and the loader options; it receives them as one ``log: Log``."""
    sig = pyinspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    own = [p.replace(annotation=hints[name]) for name, p in sig.parameters.items() if name != "log"]
    kw = pyinspect.Parameter.KEYWORD_ONLY
    added = [
        pyinspect.Parameter(name, kw, annotation=hint, default=default) for name, (hint, default) in LOG_OPTIONS.items()
    ]
    first, rest = added[:1], added[1:]

    @functools.wraps(fn)
    def command(**kwargs: Any) -> None:
        log = Log(**{name: kwargs.pop(name) for name in LOG_OPTIONS})
        fn(log=log, **kwargs)

    params = [p.replace(kind=kw) for p in [*first, *own, *rest]]
    command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def _fmt_dist(d: dict[str, float]) -> str:
    return f"{d['mean']:.2f} mean · {d['median']:.0f} median · {d['max']:.0f} max"


def summary_table(summary: dict[str, Any], title: str) -> Table:
    s = summary
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("trajectories", str(s["trajectories"]))
    table.add_row("groups", f"{s['groups']} ({_fmt_dist(s['group_size'])} trajectories)")
    table.add_row(
        "successes", f"{s['successes']} ({100 * s['success_rate']:.1f}%, outcome ≥ {s['success_threshold']:g})"
    )
    table.add_row(
        "groups by outcome",
        f"{s['groups_mixed']} mixed · {s['groups_all_fail']} all-fail · {s['groups_all_success']} all-success",
    )
    table.add_row("steps per trajectory", _fmt_dist(s["steps_per_trajectory"]))
    table.add_row("tool calls per trajectory", _fmt_dist(s["tool_calls_per_trajectory"]))
    rate = s["tool_error_rate"]
    table.add_row(
        "tool errors",
        f"{s['tool_errors']} of {s['tool_calls']} calls" + (f" ({100 * rate:.1f}%)" if rate is not None else ""),
    )
    for key, what in (("call_labels", "call labels"), ("step_labels", "step labels")):
        if key in s:
            for outcome, counts in s[key].items():
                table.add_row(f"{what} · {outcome}", " · ".join(f"{k}: {v}" for k, v in counts.items()))
    return table


@app.command()
@reads_log
def inspect(
    log: Log,
    success_threshold: Annotated[float, typer.Option(help="Outcome at or above which a trajectory succeeded.")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")] = False,
) -> None:
    """Summarize a rollout log: trajectories, groups, outcomes, steps, tool calls, errors, labels."""
    from stepcredit.core import summarize

    summary = summarize(log.load(), success_threshold=success_threshold)
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    console.print(summary_table(summary, escape(str(log.path))))


@app.command()
@reads_log
def convert(
    log: Log,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file: .jsonl (chat) or .parquet.")],
) -> None:
    """Convert a log to chat JSONL or Parquet (labels, states and rewards are kept)."""
    from stepcredit.io import write_chat_jsonl, write_parquet

    writers = {".jsonl": write_chat_jsonl, ".parquet": write_parquet}
    log.output(output, tuple(writers))
    rollouts = log.load()
    writers[output.suffix](rollouts, output)
    console.print(f"wrote {rollouts.num_trajectories} trajectories to {escape(str(output))}")


RecipeOpt = Annotated[
    str, typer.Option("--recipe", "-r", help="A built-in recipe name (see `stepcredit recipes`) or a YAML file.")
]


AllowImports = Annotated[
    bool,
    typer.Option(
        "--allow-imports",
        help="Let the recipe name user code as 'module:function' (toolpo.correct, prm_mix.scorer, rubric_gate "
        "rubrics): that code is imported and run on the log's data, so a recipe file is then a program. Off: "
        "built-in names only.",
    ),
]


def _recipe(spec: str, allow_imports: bool = False) -> Any:
    from stepcredit.recipe import Recipe

    def go() -> Any:
        try:
            return Recipe.load(spec, allow_imports=allow_imports)
        except RecursionError:  # pragma: no cover - read_yaml turns these into RecipeError
            raise RolloutError("recipe nested too deeply", source=spec) from None

    return _guard(go)


ChunkGroups = Annotated[
    int,
    typer.Option(
        "--chunk-groups",
        min=0,
        max=100_000_000,
        help="Stream a Parquet file or dataset folder in chunks of this many whole groups (bounded memory; "
        "each chunk is one batch for the recipe). 0: load the whole log at once.",
    ),
]
EngineOpt = Annotated[
    str,
    typer.Option(
        help="With --chunk-groups: local (this process) or ray (Ray Data: a local cluster on --ray-cpus CPUs, "
        "or the one at --ray-address; needs stepcredit[ray]). Both give the same numbers."
    ),
]
RayAddress = Annotated[
    str | None, typer.Option(help="--engine ray: address of a running Ray cluster ('auto': the local one).")
]
RayCpus = Annotated[
    int | None, typer.Option(min=1, max=100_000, help="--engine ray without --ray-address: CPUs of the local cluster.")
]


def _streaming(log: Log, chunk_groups: int, engine: str, ray_address: str | None, ray_cpus: int | None) -> Any:
    """The streaming options, checked: ``None`` for an in-memory run, else the ``RayOptions`` (for
    either engine). Exit 2 with one line when they do not fit the log."""
    from stepcredit.streaming import ENGINES, RayOptions

    if engine not in ENGINES:
        _exit(RolloutError(f"expected one of {', '.join(ENGINES)}, got {engine!r}", field="--engine"))
    if chunk_groups == 0:
        if engine != "local":
            _exit(RolloutError("--engine ray streams the log: give --chunk-groups N too", field="--engine"))
        return None
    if log.format not in ("auto", "parquet"):
        _exit(RolloutError(f"--chunk-groups streams Parquet; this log is read as {log.format}", field="--format"))
    if log.path.is_file() and log.path.suffix != ".parquet":
        _exit(RolloutError(
            "--chunk-groups streams a Parquet file or a folder of them: convert the log first "
            "(stepcredit convert LOG -o log.parquet)", source=str(log.path)))
    if engine == "ray":
        from stepcredit.streaming.ray import import_ray_data

        try:
            import_ray_data()
        except ImportError as exc:  # not bad input, but the same one-line exit
            _exit(ValueError(str(exc)))
    return RayOptions(address=ray_address, num_cpus=ray_cpus)


def _streamed(what: str, log: Log, run: Callable[[Callable[[int], None]], T]) -> T:
    """``run(progress)`` under a transient progress bar over the log's trajectories on stderr
    (``progress(n)``: n more done); an error is one line and exit 2."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from stepcredit.streaming import dataset_rows

    total = _guard(lambda: dataset_rows(log.path))
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err_console, transient=True)
    job = bar.add_task(what, total=total)
    with bar:
        return _guard(lambda: run(lambda n: bar.advance(job, n)))


@app.command()
@reads_log
def credit(
    log: Log,
    recipe: RecipeOpt = "grpo",
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the credit: .jsonl, or .parquet (the same fields).")
    ] = Path("credit.jsonl"),
    chunk_groups: ChunkGroups = 0,
    engine: EngineOpt = "local",
    ray_address: RayAddress = None,
    ray_cpus: RayCpus = None,
    allow_imports: AllowImports = False,
) -> None:
    """Run a recipe on a log and write per-step / per-call credit next to the step texts (JSONL or
    Parquet); with --chunk-groups, stream a Parquet dataset chunk by chunk into a Parquet credit file."""
    from stepcredit.io import write_credit_jsonl, write_credit_parquet

    rec = _recipe(recipe, allow_imports)
    log.output(output, (".jsonl", ".parquet"))
    stream = _streaming(log, chunk_groups, engine, ray_address, ray_cpus)
    if stream is not None:
        from stepcredit.streaming import stream_credit

        if output.suffix != ".parquet":
            _exit(RolloutError("streamed credit is written as Parquet: name a .parquet output", source=str(output),
                               field="output"))
        counts = _streamed(f"credit · {rec.name} · {engine}", log, lambda progress: stream_credit(
            log.path, rec, output, chunk_groups=chunk_groups, engine=engine, ray=stream,  # type: ignore[arg-type]
            progress=progress, allow_imports=allow_imports))
        share = counts["nonzero_steps"] / counts["steps"] if counts["steps"] else 0.0
        console.print(
            f"{escape(rec.name)}: credited {counts['credited']} of {counts['trajectories']} trajectories in "
            f"{counts['chunks']} chunks, {counts['steps']} steps (non-zero {100 * share:.1f}%), "
            f"wrote {escape(str(output))}"
        )
        return
    rollouts = log.load()
    result = _guard(lambda: rec.run(rollouts))
    writer = write_credit_parquet if output.suffix == ".parquet" else write_credit_jsonl
    writer(result.rollouts, result.credit, output, rec.name)
    steps = result.credit.per_step(result.rollouts)
    console.print(
        f"{escape(rec.name)}: credited {result.rollouts.num_trajectories} of {rollouts.num_trajectories} "
        f"trajectories, {result.rollouts.num_steps} steps (non-zero {100 * float((steps != 0).float().mean()):.1f}%), "
        f"wrote {escape(str(output))}"
    )


@app.command()
def recipes() -> None:
    """List the built-in recipes and the registered components with their parameters."""
    import yaml

    from stepcredit.core.registry import KINDS, REGISTRY
    from stepcredit.recipe import Recipe, builtin_recipes

    table = Table(title="built-in recipes (--recipe NAME)", title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("pipeline")
    for name in sorted(builtin_recipes()):
        r = Recipe.builtin(name)
        body = {k: v for k, v in r.to_dict().items() if k not in ("name", "description")}
        pipeline = escape(yaml.safe_dump(body, default_flow_style=True).strip())
        table.add_row(name, f"{escape(r.description)}\n[dim]{pipeline}[/]")
    console.print(table)
    comp = Table(title="components", title_justify="left")
    for col in ("kind", "name", "parameters", "what"):
        comp.add_column(col)
    for kind in KINDS:
        for name, c in sorted(REGISTRY[kind].items()):
            params = ", ".join(k if d is pyinspect.Parameter.empty else f"{k}={d!r}" for k, (_, d) in c.params.items())
            comp.add_row(kind, name, escape(params), escape(c.summary))
    console.print(comp)


@app.command(
    help="Measure where each recipe's credit lands against step/call labels; write an HTML report.\n\n"
    "Labels come from the log (a per-step 'label', tau2 results) or from --references, a JSON file of "
    "reference actions:\n\n\b\n" + REFERENCES_FORMAT
)
@reads_log
def audit(
    log: Log,
    recipes: Annotated[
        str, typer.Option(help="Comma-separated recipe names or YAML files (default: the standard set).")
    ] = "",
    labels: Annotated[
        str, typer.Option(help="auto: the labels the log carries (tau2: computed by the labelling rule); none: refuse.")
    ] = "auto",
    references: Annotated[
        Path | None,
        typer.Option(
            help="JSON {group: [reference actions]}: label every call by the tau2 matching rule (format above)."
        ),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the HTML report.")] = Path(
        "report.html"
    ),
    bootstrap: Annotated[
        int, typer.Option(min=0, max=100_000, help="Bootstrap resamples of the groups for the intervals.")
    ] = 1000,
    seed: Annotated[int, typer.Option(min=0, max=2**63 - 1, help="Seed of the bootstrap.")] = 0,
    success_threshold: Annotated[float, typer.Option(help="Outcome at or above which a trajectory succeeded.")] = 1.0,
    report_trajectories: Annotated[
        int,
        typer.Option(
            min=0, max=1_000_000, help="Trajectory sections in the report (the most blamed first; plots cover all)."
        ),
    ] = 200,
    open_report: Annotated[bool, typer.Option("--open", help="Open the report in a browser.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON instead of a table.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the metrics as a Markdown table.")] = False,
    breakdown: Annotated[
        bool,
        typer.Option(
            "--breakdown",
            help="Also print BSA / AUROC on failed trajectories without the calls every run of a task made, "
            "and by group type (mixed / all-fail / all-success). The JSON always has them.",
        ),
    ] = False,
    chunk_groups: ChunkGroups = 0,
    engine: EngineOpt = "local",
    ray_address: RayAddress = None,
    ray_cpus: RayCpus = None,
    allow_imports: AllowImports = False,
) -> None:
    from stepcredit.auditing import DEFAULT_RECIPES, markdown_table, write_report
    from stepcredit.auditing import audit as run_audit
    from stepcredit.auditing.report import METRIC_NAMES, breakdown_cells, breakdown_markdown, metric_cells

    specs = [x.strip() for x in recipes.split(",") if x.strip()] or list(DEFAULT_RECIPES)
    loaded = [_recipe(spec, allow_imports) for spec in specs]
    log.output(output)
    if labels not in ("auto", "none"):
        _exit(RolloutError(f"expected auto or none, got {labels!r}", field="--labels"))
    no_labels = RolloutError(
        "no step or call labels: audits need them (a per-step 'label' field, tau2 results, or --references)",
        source=str(log.path),
    )
    stream = _streaming(log, chunk_groups, engine, ray_address, ray_cpus)
    if stream is not None:
        from stepcredit.streaming import stream_audit

        if references is not None:
            _exit(RolloutError("--references labels a whole log as it loads: audit without --chunk-groups, or "
                               "stream a Parquet dataset that carries its labels", field="--references"))
        if labels == "none":
            _exit(no_labels)
        result = _streamed(f"audit · {len(loaded)} recipes · {engine}", log, lambda progress: stream_audit(
            log.path, loaded, chunk_groups=chunk_groups, engine=engine, bootstrap=bootstrap,  # type: ignore[arg-type]
            seed=seed, success_threshold=success_threshold, ray=stream, progress=progress,
            allow_imports=allow_imports))
    else:
        rollouts = log.load(references=references)
        if labels == "none" or (rollouts.call_label is None and rollouts.label is None):
            _exit(no_labels)
        result = _guard(
            lambda: run_audit(rollouts, loaded, success_threshold=success_threshold, bootstrap=bootstrap, seed=seed)
        )
    write_report(
        result,
        output,
        title=f"stepcredit audit — {log.path.name}",
        source=str(log.path),
        max_trajectories=report_trajectories,
    )
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    elif markdown:
        sys.stdout.write(markdown_table(result) + "\n")
        if breakdown:
            sys.stdout.write("\n" + breakdown_markdown(result) + "\n")
    else:
        table = Table(
            title=escape(
                f"{log.path}: credit of labelled {result.unit}s ({result.bootstrap} bootstrap resamples of groups)"
            ),
            title_justify="left",
        )
        table.add_column("recipe", style="bold")
        for name in METRIC_NAMES.values():
            table.add_column(name, justify="right")
        for name, cells in metric_cells(result):
            table.add_row(escape(name), *cells)
        console.print(table)
        if breakdown:
            parts = Table(title=f"by unit subset ({result.unit}s of failed trajectories)", title_justify="left")
            for column in ("recipe", "units", "n", "BSA (failed) ↑", "AUROC +1 vs −1 (failed) ↑"):
                parts.add_column(column, justify="left" if column in ("recipe", "units") else "right")
            for name, label, cells in breakdown_cells(result):
                parts.add_row(escape(name), label, *cells)
            console.print(parts)
        console.print(f"audited {len(result.recipes)} recipes in {result.seconds:.1f} s; wrote {escape(str(output))}")
    if open_report:
        import webbrowser

        webbrowser.open(output.resolve().as_uri())


BLOCK_TRAJECTORIES = 4096
"""``rollouts`` generates and writes this many trajectories at a time (whole groups; at least one group):
memory stays flat however many groups are asked for."""


def _tree_spec(spec: str) -> tuple[int, int, int]:
    from stepcredit.core.limits import MAX_TREE, MAX_TREE_LEAVES, tree_leaves

    parts = spec.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        _exit(ValueError(f"--tree expects M,N,L (trees, nodes expanded, iterations), e.g. 2,2,1; got {spec!r}"))
    m, n, iterations = (int(p) for p in parts)
    if m < 1 or n < 1 or m > MAX_TREE[0] or n > MAX_TREE[1] or iterations > MAX_TREE[2]:
        _exit(ValueError(f"--tree M,N,L needs 1 ≤ M ≤ {MAX_TREE[0]}, 1 ≤ N ≤ {MAX_TREE[1]} and 0 ≤ L ≤ "
                         f"{MAX_TREE[2]}; got {spec!r}"))
    if tree_leaves(m, n, iterations) > MAX_TREE_LEAVES:
        _exit(ValueError(f"--tree {spec} grows {tree_leaves(m, n, iterations)} leaves per task; at most "
                         f"{MAX_TREE_LEAVES} (M · (1 + N · L))"))
    return m, n, iterations


@app.command("rollouts")
def rollouts_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file: .parquet or .jsonl (chat).")] = Path(
        "rollouts.parquet"
    ),
    env: Annotated[str, typer.Option(help="Task family: calculator, lookup, booking or search.")] = "calculator",
    policy: Annotated[
        str, typer.Option(help="oracle, noisy, systematic, or a folder holding a Hugging Face causal LM + tokenizer.")
    ] = "noisy",
    groups: Annotated[int, typer.Option(min=1, max=1_000_000, help="Tasks (one group each).")] = 64,
    group_size: Annotated[
        int, typer.Option(min=1, max=MAX_GROUP_SIZE, help="Chains per task (ignored with --tree).")
    ] = 8,
    tree: Annotated[
        str | None, typer.Option(help="Tree-GRPO rollouts M,N,L: M trees per task, N nodes expanded per tree, L times.")
    ] = None,
    keep: Annotated[
        int | None, typer.Option(min=1, max=10_000, help="Trees: leaves kept per tree (default all).")
    ] = None,
    split: Annotated[str, typer.Option(help="train or test (held-out tasks).")] = "train",
    first_task: Annotated[int, typer.Option(min=0, max=2**31 - 1, help="Index of the first task.")] = 0,
    depth: Annotated[
        int | None, typer.Option(min=1, max=64, help="Task depth (the family's default if unset).")
    ] = None,
    distractors: Annotated[int, typer.Option(min=0, max=4, help="Irrelevant tools offered.")] = 0,
    noise: Annotated[float, typer.Option(min=0.0, max=1.0, help="Chance of irrelevant records in a result.")] = 0.0,
    error_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="noisy/systematic: chance of a mistake per step/decision point.")
    ] = 0.15,
    temperature: Annotated[float, typer.Option(min=0.0, max=10.0, help="HF policy: sampling temperature.")] = 1.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="HF policy: nucleus sampling mass, in (0, 1].")] = 1.0,
    max_new_tokens: Annotated[
        int, typer.Option(min=1, max=MAX_NEW_TOKENS, help="HF policy: tokens per action.")
    ] = 48,
    batch_size: Annotated[
        int | None, typer.Option(min=1, max=100_000, help="Contexts per policy call (default: all live ones).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, max=2**31 - 1, help="Seed of environments, policy and tree picks.")] = 0,
) -> None:
    """Play a policy on a task family and write the rollouts (labels, trees, token spans) to a file."""
    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from stepcredit.envs import env_factory
    from stepcredit.generation import rollout_chains, rollout_trees, scripted_policy
    from stepcredit.io import ChatWriter, RolloutsWriter, check_output

    if output.suffix not in (".jsonl", ".parquet"):
        _exit(RolloutError("expected a .parquet or .jsonl file name", source=str(output), field="output"))
    _guard(lambda: check_output(output))
    if split not in ("train", "test"):
        _exit(ValueError(f"--split must be train or test, got {split!r}"))
    make_env = _guard(
        lambda: env_factory(env, split=split, depth=depth, distractors=distractors, noise=noise)
    )
    chat_format = None
    if policy in ("oracle", "noisy", "systematic"):
        agent: Any = scripted_policy(policy, error_rate=error_rate, seed=seed)
    elif Path(policy).is_dir():
        from stepcredit.generation.hf import HFPolicy
        from stepcredit.train.config import check_model

        if not top_p > 0:
            _exit(ValueError(f"--top-p must be in (0, 1] for a model policy, got {top_p:g}"))
        _guard(lambda: check_model(policy, "--policy"))
        agent = HFPolicy.from_pretrained(
            policy, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
        )
        chat_format = agent.format
    else:
        _exit(ValueError(f"--policy must be oracle, noisy, systematic or a model folder; {policy!r} is none"))
    if first_task + groups > 2**31:
        _exit(ValueError(f"--first-task {first_task} + --groups {groups} passes the last task index 2^31 - 1"))
    spec = _tree_spec(tree) if tree is not None else None
    per_group = group_size if spec is None else spec[0] * (1 + spec[1] * spec[2])
    total = groups * per_group
    block = max(1, BLOCK_TRAJECTORIES // per_group)  # groups generated (and held) at a time
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    trajectories, successes, tokens = 0, 0.0, 0.0
    writer = RolloutsWriter(output) if output.suffix == ".parquet" else ChatWriter(output)
    with writer, Progress(*columns, console=err_console, transient=True) as bar:
        job = bar.add_task(f"rollouts · {env} · {policy}", total=total)

        def advance(n: int) -> None:
            bar.advance(job, n)

        for start in range(first_task, first_task + groups, block):
            tasks = range(start, min(start + block, first_task + groups))
            # the first block plays under --seed itself; each later one under a seed of its own
            block_seed = seed
            if start != first_task:
                block_seed = int(np.random.SeedSequence([seed, start]).generate_state(1)[0])

            def play(tasks: range = tasks, block_seed: int = block_seed) -> Any:
                if spec is None:
                    return rollout_chains(
                        make_env, agent, tasks, group_size=group_size, chat_format=chat_format, seed=block_seed,
                        batch_size=batch_size, progress=advance,
                    )
                m, n, iterations = spec
                return rollout_trees(
                    make_env, agent, tasks, trees=m, expand=n, iterations=iterations, keep=keep,
                    chat_format=chat_format, seed=block_seed, batch_size=batch_size, progress=advance,
                )

            batch = _guard(play)
            writer.write(batch.rollouts)
            trajectories += batch.rollouts.num_trajectories
            successes += float(batch.rollouts.outcome.sum())
            tokens += float(batch.generated_tokens)
            del batch
    shown = f", {tokens / max(trajectories, 1):.1f} generated tokens per trajectory" if chat_format else ""
    console.print(
        f"wrote {trajectories} trajectories of {groups} tasks to {escape(str(output))} "
        f"(success {100 * successes / max(trajectories, 1):.1f}%{shown})"
    )


@app.command()
def experiment(
    config: Annotated[
        Path | None, typer.Argument(help="An experiment YAML (see configs/); default: the built-in one.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder under which <name>/ is written.")] = Path("runs"),
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted experiment in --out: finished runs are kept, "
                           "unfinished ones continue from their newest intact checkpoint (their config must be "
                           "unchanged).")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start again in a --out that holds an earlier run of the experiment "
                           "(what the runs wrote there is removed).")
    ] = False,
) -> None:
    """The main job: train a small policy with each recipe × seed on one task family, compare the
    learning curves (outcome GRPO, dense recipes, the oracle upper bound), audit the credit, and write
    runs/<name>/ with curves.png, summary.md and report.html. The config and the output folder are
    checked whole before anything runs."""
    from stepcredit.train.experiment import load_experiment, run_experiment, summary_markdown

    if resume and overwrite:
        _exit(ValueError("--resume continues the runs in --out and --overwrite starts them again: give one"))
    if config is not None and not config.is_file():
        _exit(ValueError(f"{config}: no such experiment file"))
    exp = _guard(lambda: load_experiment(config))
    if out.exists() and not out.is_dir():
        _exit(ValueError(f"{out}: --out is a file; expected a folder"))
    if not out.parent.is_dir():
        _exit(ValueError(f"{out.parent}: no such folder for --out"))
    summary = _guard(lambda: run_experiment(exp, out, progress=not quiet, resume=resume, overwrite=overwrite,
                                            log=lambda s: err_console.print(escape(s))))
    console.print(summary_markdown(summary), highlight=False, markup=False)


@app.command()
def demo(
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed of the synthetic rollouts.")] = 0,
    groups: Annotated[int, typer.Option(min=1, max=100_000, help="Number of tasks (groups).")] = 32,
    group_size: Annotated[int, typer.Option(min=1, max=1_000, help="Rollouts per task.")] = 8,
) -> None:
    """Run every built-in recipe on synthetic tool-use rollouts (labelled) and show where credit lands."""
    from stepcredit.auditing import blame_rate
    from stepcredit.core import summarize
    from stepcredit.envs import make_rollouts
    from stepcredit.recipe import Recipe, builtin_recipes

    rollouts = make_rollouts(groups, group_size, seed=seed)
    console.print(summary_table(summarize(rollouts), f"synthetic tool-use rollouts (seed {seed})"))
    table = Table(
        title="credit of correct (+1) tool calls inside failed trajectories (blamed: credit < 0)",
        title_justify="left",
    )
    for col in ("recipe", "traj.", "credit ≠ 0", "+1 in fails", "mean", "blamed"):
        table.add_column(col, justify="right" if col != "recipe" else "left")
    skipped: list[str] = []
    for name in sorted(builtin_recipes()):
        try:
            result = Recipe.builtin(name).run(rollouts)
        except ValueError as exc:  # a recipe that needs an input these rollouts lack (e.g. PRM scores)
            skipped.append(f"{name}: not run ({exc})")
            continue
        # judge by the logged outcomes: shaping (e.g. rlcr's Brier reward) rewrites the outcome it credits
        b = blame_rate(rollouts.select(result.kept), result.credit)
        nonzero = float((result.credit.per_step(result.rollouts) != 0).float().mean())
        table.add_row(
            name,
            str(result.rollouts.num_trajectories),
            f"{100 * nonzero:.0f}%",
            str(b["n"]),
            "–" if b["mean_credit"] is None else f"{b['mean_credit']:+.3f}",
            "–" if b["rate"] is None else f"{100 * b['rate']:.0f}%",
        )
    console.print(table)
    for line in skipped:
        console.print(escape(line), highlight=False)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds: a file being written is removed, not left half-done


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
