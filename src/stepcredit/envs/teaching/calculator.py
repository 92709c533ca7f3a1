"""The calculator family's rule teacher (``CalculatorEnv``): task kinds by the operations of the
expression, and the checks of a failed episode against the expression."""

from __future__ import annotations

import re

from stepcredit.envs.actions import parse_action
from stepcredit.envs.teaching.base import EpisodeText, Lesson, Teacher, abstract_action, json_or_none

__all__ = ["CalculatorTeacher"]

OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
_PROMPT = re.compile(r"\s*Compute (.+?) with the tools", re.DOTALL)


def _ops(expression: str) -> set[str]:
    return {OPS[o] for o in re.findall(r"(?<=\s)([-+*/])(?=\s)", f" {expression} ")}


def _outermost(expression: str) -> str | None:
    """The operation of an expression outside every bracket (``(7 + 5) * 3`` → ``mul``), if exactly one."""
    depth, found = 0, []
    for i, ch in enumerate(expression):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and ch in OPS and expression[i - 1 : i + 2] == f" {ch} ":
            found.append(OPS[ch])
    return found[0] if len(found) == 1 else None


def _first_number(observation: str) -> float | None:
    data = json_or_none(observation)
    if isinstance(data, dict) and isinstance(data.get("result"), int | float):
        return float(data["result"])
    m = re.match(r"\s*(-?\d+(?:\.\d+)?)\b", observation)
    return float(m.group(1)) if m else None


class CalculatorTeacher(Teacher):
    """Kinds: a "Compute <expression> with the tools" prompt; the kind is the operations the expression
    contains, in the order add, sub, mul, div, joined by ``+`` (``calculator:add+mul``).

    Checks: a call whose operation the expression does not contain, or an answer after a last operation
    that is not the expression's outermost one. Ending: an answer that differs from the last result."""

    family = "calculator"
    error_rules = (
        ("division by zero", "Never divide by zero: check the divisor before calling div."),
        ("is not divisible by", "Call div only when a is a multiple of b: div is exact integer division."),
    )

    def kind(self, prompt: str) -> str | None:
        m = _PROMPT.match(prompt)
        if m is None:
            return None
        found = _ops(m.group(1))
        return "+".join(op for op in OPS.values() if op in found)

    def describe(self, kind: str) -> str:
        return f"computing an expression with {', '.join(kind.split('+'))}" if kind else "computing an expression"

    def check(self, episode: EpisodeText, kind: str) -> Lesson | None:
        m = _PROMPT.match(episode.prompt)
        if m is None:
            return None
        expression = m.group(1)
        ops = _ops(expression)
        last_op = None
        for action in episode.actions:
            for call in parse_action(action).calls:
                if call.name in OPS.values():
                    last_op = (call.name, action)
                    if call.name not in ops:
                        return Lesson(
                            "Use the expression's operations",
                            "computing a step of the expression",
                            abstract_action(action),
                            "Use only the operations written in the expression (+ add, - sub, * mul, / div), "
                            "each on the operands it applies to.",
                        )
        outer = _outermost(expression)
        answered = bool(episode.actions) and parse_action(episode.actions[-1]).answer is not None
        if answered and last_op is not None and outer is not None and last_op[0] != outer:
            return Lesson(
                "Use the expression's operations",
                "computing the last step of the expression",
                abstract_action(last_op[1]),
                "Finish with the expression's outermost operation, the one outside every bracket, applied to "
                "the results of its two sides.",
            )
        return None

    def ending(self, episode: EpisodeText, kind: str) -> Lesson | None:
        value = _first_number(parse_action(episode.actions[-1]).answer or "")
        results = [v for v in (_first_number(o) for o in episode.observations[:-1]) if v is not None]
        if results and value != results[-1]:
            return Lesson(
                "Answer what the tools computed",
                "answering after the last operation returned its result",
                f"{abstract_action(episode.actions[-1])} that differs from the last result",
                "Answer exactly the value the last operation returned; never adjust it.",
            )
        return None

    def answer_principle(self, kind: str) -> str:
        return (
            "Before answering, check every call against the expression: the right operation on the "
            "right operands (numbers from the task or earlier results), in an order the brackets allow."
        )
