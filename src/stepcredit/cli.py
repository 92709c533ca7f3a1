"""``stepcredit`` command line: inspect and convert rollout logs, credit them with a recipe, audit where
the credit lands, and run the built-in demo."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from stepcredit.errors import RolloutError
from stepcredit.rollouts import Rollouts

app = typer.Typer(
    name="stepcredit",
    help="Dense per-step credit for RL of tool-using LLM agents: inspect, convert and credit rollout logs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")

PathArg = Annotated[Path, typer.Argument(help="A log file (.jsonl, .json, .parquet) or a folder of them.")]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="auto | chat | tau2 | parquet.")]
GroupField = Annotated[str, typer.Option(help="Chat records: field holding the group (task / prompt id).")]
RewardField = Annotated[str, typer.Option(help="Chat records: field holding the outcome reward (dotted path).")]
MessagesField = Annotated[str, typer.Option(help="Chat records: field holding the message list.")]
IdField = Annotated[str, typer.Option(help="Chat records: field holding the trajectory id.")]


def _guard(fn: Callable[[], T]) -> T:
    """Run ``fn``; bad input (a ``RolloutError``, or a ``ValueError`` a component raises for parameters
    that do not fit the data) becomes one line on stderr and exit status 2 (no traceback)."""
    try:
        return fn()
    except ValueError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _load(path: Path, fmt: str, group: str, reward: str, messages: str, id_: str) -> Rollouts:
    from stepcredit.io import ChatFields, load

    def go() -> Rollouts:
        if fmt not in ("auto", "chat", "tau2", "parquet"):
            raise RolloutError(f"unknown format {fmt!r}; expected auto, chat, tau2 or parquet", field="--format")
        fields = ChatFields(id=id_, group=group, reward=reward, messages=messages)
        return load(path, format=fmt, fields=fields)  # type: ignore[arg-type]

    return _guard(go)


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
def inspect(
    path: PathArg,
    format: FormatOpt = "auto",
    group_field: GroupField = "group",
    reward_field: RewardField = "reward",
    messages_field: MessagesField = "messages",
    id_field: IdField = "id",
    success_threshold: Annotated[float, typer.Option(help="Outcome at or above which a trajectory succeeded.")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")] = False,
) -> None:
    """Summarize a rollout log: trajectories, groups, outcomes, steps, tool calls, errors, labels."""
    from stepcredit.stats import summarize

    rollouts = _load(path, format, group_field, reward_field, messages_field, id_field)
    summary = summarize(rollouts, success_threshold=success_threshold)
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    console.print(summary_table(summary, f"{path}"))


@app.command()
def convert(
    path: PathArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file: .jsonl (chat) or .parquet.")],
    format: FormatOpt = "auto",
    group_field: GroupField = "group",
    reward_field: RewardField = "reward",
    messages_field: MessagesField = "messages",
    id_field: IdField = "id",
) -> None:
    """Convert a log to chat JSONL or Parquet (labels, states and rewards are kept)."""
    from stepcredit.io import write_chat_jsonl, write_parquet

    rollouts = _load(path, format, group_field, reward_field, messages_field, id_field)
    writers = {".jsonl": write_chat_jsonl, ".parquet": write_parquet}
    if output.suffix not in writers:
        err_console.print(f"[bold red]error:[/] output {output}: expected a .jsonl or .parquet file name")
        raise typer.Exit(2)
    writers[output.suffix](rollouts, output)
    console.print(f"wrote {rollouts.num_trajectories} trajectories to {output}")


RecipeOpt = Annotated[
    str, typer.Option("--recipe", "-r", help="A built-in recipe name (see `stepcredit recipes`) or a YAML file.")
]


def _recipe(spec: str) -> Any:
    from stepcredit.recipe import Recipe, RecipeError

    try:
        return Recipe.load(spec)
    except RecipeError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def credit(
    path: PathArg,
    recipe: RecipeOpt = "grpo",
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the credit JSONL.")] = Path(
        "credit.jsonl"
    ),
    format: FormatOpt = "auto",
    group_field: GroupField = "group",
    reward_field: RewardField = "reward",
    messages_field: MessagesField = "messages",
    id_field: IdField = "id",
) -> None:
    """Run a recipe on a log and write per-step / per-call credit next to the step texts (JSONL)."""
    from stepcredit.io import write_credit_jsonl

    rec = _recipe(recipe)
    rollouts = _load(path, format, group_field, reward_field, messages_field, id_field)
    result = _guard(lambda: rec.run(rollouts))
    write_credit_jsonl(result.rollouts, result.credit, output, rec.name)
    steps = result.credit.per_step(result.rollouts)
    console.print(
        f"{rec.name}: credited {result.rollouts.num_trajectories} of {rollouts.num_trajectories} trajectories, "
        f"{result.rollouts.num_steps} steps (non-zero {100 * float((steps != 0).float().mean()):.1f}%), "
        f"wrote {output}"
    )


@app.command()
def recipes() -> None:
    """List the built-in recipes and the registered components with their parameters."""
    import yaml

    from stepcredit.recipe import Recipe, builtin_recipes, component_params
    from stepcredit.registry import KINDS, REGISTRY

    table = Table(title="built-in recipes (--recipe NAME)", title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("pipeline")
    for name in sorted(builtin_recipes()):
        r = Recipe.builtin(name)
        body = {k: v for k, v in r.to_dict().items() if k not in ("name", "description")}
        table.add_row(name, f"{r.description}\n[dim]{yaml.safe_dump(body, default_flow_style=True).strip()}[/]")
    console.print(table)
    comp = Table(title="components", title_justify="left")
    for col in ("kind", "name", "parameters", "what"):
        comp.add_column(col)
    for kind in KINDS:
        for name, c in sorted(REGISTRY[kind].items()):
            params = ", ".join(f"{k}={d!r}" for k, (_, d) in component_params(c).items())
            comp.add_row(kind, name, params, c.summary)
    console.print(comp)


@app.command()
def audit(
    path: PathArg,
    recipes: Annotated[
        str, typer.Option(help="Comma-separated recipe names or YAML files (default: the standard set).")
    ] = "",
    labels: Annotated[
        str, typer.Option(help="auto: the labels the log carries (tau2: computed by the labelling rule); none: refuse.")
    ] = "auto",
    references: Annotated[
        Path | None,
        typer.Option(help="JSON {group: [reference actions]}: label every call by the tau2 matching rule."),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the HTML report.")] = Path(
        "report.html"
    ),
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples of the groups for the intervals.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    success_threshold: Annotated[float, typer.Option(help="Outcome at or above which a trajectory succeeded.")] = 1.0,
    open_report: Annotated[bool, typer.Option("--open", help="Open the report in a browser.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON instead of a table.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the metrics as a Markdown table.")] = False,
    format: FormatOpt = "auto",
    group_field: GroupField = "group",
    reward_field: RewardField = "reward",
    messages_field: MessagesField = "messages",
    id_field: IdField = "id",
) -> None:
    """Measure where each recipe's credit lands against step/call labels; write an HTML report."""
    from stepcredit.audit.report import METRIC_NAMES, markdown_table, metric_cells, write_report
    from stepcredit.audit.run import DEFAULT_RECIPES, run_audit
    from stepcredit.io import ChatFields, load

    specs = [x.strip() for x in recipes.split(",") if x.strip()] or list(DEFAULT_RECIPES)
    loaded = [_recipe(spec) for spec in specs]
    if labels not in ("auto", "none"):
        err_console.print(f"[bold red]error:[/] --labels: expected auto or none, got {labels!r}")
        raise typer.Exit(2)

    def go() -> Any:
        refs = None
        if references is not None:
            try:
                refs = json.loads(references.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise RolloutError(f"cannot read reference actions ({exc})", source=str(references)) from None
            if not isinstance(refs, dict) or not all(isinstance(v, list) for v in refs.values()):
                raise RolloutError("expected a JSON object {group: [reference actions]}", source=str(references))
        fields = ChatFields(id=id_field, group=group_field, reward=reward_field, messages=messages_field)
        rollouts = load(path, format=format, fields=fields, references=refs)  # type: ignore[arg-type]
        if labels == "none" or (rollouts.call_label is None and rollouts.label is None):
            raise RolloutError(
                "no step or call labels: audits need them (a per-step 'label' field, tau2 results, or --references)",
                source=str(path),
            )
        return rollouts

    rollouts = _guard(go)
    result = _guard(
        lambda: run_audit(rollouts, loaded, success_threshold=success_threshold, bootstrap=bootstrap, seed=seed)
    )
    write_report(result, output, title=f"stepcredit audit — {path.name}", source=str(path))
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    elif markdown:
        sys.stdout.write(markdown_table(result) + "\n")
    else:
        table = Table(
            title=f"{path}: credit of labelled {result.unit}s ({result.bootstrap} bootstrap resamples of groups)",
            title_justify="left",
        )
        table.add_column("recipe", style="bold")
        for name in METRIC_NAMES.values():
            table.add_column(name, justify="right")
        for name, cells in metric_cells(result):
            table.add_row(name, *cells)
        console.print(table)
        console.print(f"audited {len(result.recipes)} recipes in {result.seconds:.1f} s; wrote {output}")
    if open_report:
        import webbrowser

        webbrowser.open(output.resolve().as_uri())


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed of the synthetic rollouts.")] = 0,
    groups: Annotated[int, typer.Option(help="Number of tasks (groups).")] = 32,
    group_size: Annotated[int, typer.Option(help="Rollouts per task.")] = 8,
) -> None:
    """Run every built-in recipe on synthetic tool-use rollouts (labelled) and show where credit lands."""
    from stepcredit.audit import blame_rate
    from stepcredit.recipe import Recipe, builtin_recipes
    from stepcredit.stats import summarize
    from stepcredit.synthetic import make_rollouts

    rollouts = make_rollouts(groups, group_size, seed=seed)
    console.print(summary_table(summarize(rollouts), f"synthetic tool-use rollouts (seed {seed})"))
    table = Table(
        title="credit of correct (+1) tool calls inside failed trajectories (blamed: credit < 0)",
        title_justify="left",
    )
    for col in ("recipe", "traj.", "credit ≠ 0", "+1 in fails", "mean", "blamed"):
        table.add_column(col, justify="right" if col != "recipe" else "left")
    for name in sorted(builtin_recipes()):
        result = Recipe.builtin(name).run(rollouts)
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


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
