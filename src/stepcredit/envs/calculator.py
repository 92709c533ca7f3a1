"""Calculator chains: multi-step integer arithmetic through tools, the answer at the end.

A task is an arithmetic expression with ``depth`` operations over small integers, e.g.
``((7 + 5) * 3) - (12 / 4)``; the agent must compute every operation with a tool call (``add``, ``sub``,
``mul``, ``div`` — exact integer division, an error otherwise) and then ``answer`` the value.
Independent sub-expressions may be computed in any order and ``add``/``mul`` take their operands in
either order, so most tasks have several valid solutions (orders).

**What the agent knows.** The environment tracks the value the agent obtained for each operation (its
*belief*): a wrong result is carried forward by an agent that trusts its tools, exactly as in real runs,
and ``expert`` actions are those of an expert that continues from the agent's beliefs (after a mistake,
the expert computes with the wrong value and answers it: the run fails).

**Labelling rules** (per call, then per step as ``ToolEnv`` says):

* **+1** a call computing a not-yet-computed operation with its true operands; the correct answer;
* **0** a call that recomputes an operation already computed correctly; the right operation applied to
  an operand that is the agent's own earlier wrong result (the mistake is labelled where it was made);
  a call the tool rejects (division by zero, inexact division, bad arguments); a distractor tool;
* **−1** any other computation (it introduces a wrong value: a wrong operand or a wrong operator); a
  wrong answer.

A failed run therefore holds one or two −1 steps (the wrong computation and the wrong answer) among
correct ones. ``noise`` makes a tool result carry irrelevant extra fields.

Mistake kinds offered to scripted policies: ``operand`` (one operand off by 1–3), ``operator`` (another
operation on the same operands), ``answer`` (an answer off by 1–3 instead of the computed value).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from stepcredit.envs.actions import ToolCall
from stepcredit.envs.base import CORRECT, NEUTRAL, WRONG, CallOutcome, Param, Tool, ToolEnv

__all__ = ["CalculatorEnv"]

_OPS = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_COMMUTATIVE = ("add", "mul")
_ARGS = (Param("a", int, "left operand"), Param("b", int, "right operand"))


def _apply(op: str, a: int, b: int) -> int | None:
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    if b == 0 or a % b:
        return None
    return a // b


@dataclass
class _Node:
    op: str
    operands: tuple[int | str, int | str]  # an int is a literal; "n3" refers to node 3
    value: int = 0


@dataclass
class _Task:
    nodes: list[_Node]
    root: int
    belief: list[int | None] = field(default_factory=list)  # the value the agent obtained per node
    done: list[bool] = field(default_factory=list)  # computed with the true operands


class CalculatorEnv(ToolEnv):
    """Calculator chains (see the module docstring). ``depth``: operations per task (default 3);
    ``shape``: "tree" (nested sub-expressions, several valid orders) or "chain" (each operation applies
    to the previous result: ``((a op b) op c) op d``, one valid order); ``max_operand``: largest literal;
    ``echo``: each result also shows what is left to compute, the computed parts replaced by the agent's
    values (``7 | left: (7 * 3) - 4``) — a scratchpad that spares small models the parsing."""

    family: ClassVar[str] = "calculator"
    default_depth: ClassVar[int] = 3
    tools: ClassVar[tuple[Tool, ...]] = (
        Tool("add", _ARGS, "a + b"),
        Tool("sub", _ARGS, "a - b"),
        Tool("mul", _ARGS, "a * b"),
        Tool("div", _ARGS, "a / b (exact integer division)"),
    )

    def __init__(
        self, *, shape: Literal["tree", "chain"] = "tree", max_operand: int = 19, echo: bool = False, **knobs: Any
    ) -> None:
        super().__init__(**knobs)
        if shape not in ("tree", "chain"):
            raise ValueError(f"shape must be 'tree' or 'chain', got {shape!r}")
        if isinstance(max_operand, bool) or not isinstance(max_operand, int) or not 3 <= max_operand <= 999:
            raise ValueError(f"max_operand must be an integer in 3..999, got {max_operand!r}")
        self.shape, self.max_operand, self.echo = shape, max_operand, bool(echo)

    # ------------------------------------------------------------------ task
    def _new_task(self, rng: np.random.Generator, index: int) -> _Task:
        nodes: list[_Node] = []
        pending: list[int] = []  # roots of sub-expressions not yet combined
        top = self.max_operand + 1
        for i in range(self.depth):
            remaining = self.depth - i
            choices = []
            if len(pending) + 1 <= remaining and (self.shape == "tree" or not pending):
                choices.append("new")  # one more sub-expression still fits the ops left
            if pending and len(pending) <= remaining:
                choices.append("extend")
            if len(pending) >= 2:
                choices.append("combine")
            kind = str(rng.choice(choices, p=_weights(choices)))
            if kind == "new":
                left: int | str = int(rng.integers(2, top))
                right: int | str = int(rng.integers(2, top))
            elif kind == "extend":
                left, right = f"n{pending.pop()}", int(rng.integers(2, min(top, 13)))
                if self.shape == "tree" and rng.random() < 0.3:
                    left, right = right, left
            else:
                b, a = pending.pop(), pending.pop()
                left, right = f"n{a}", f"n{b}"
            node = _Node("add", (left, right))
            nodes.append(node)
            values = [_literal(nodes, x) for x in node.operands]
            node.op = _pick_op(rng, values[0], values[1])
            node.value = _apply(node.op, values[0], values[1])  # type: ignore[assignment]
            pending.append(i)
        assert len(pending) == 1
        return _Task(nodes, pending[0], [None] * len(nodes), [False] * len(nodes))

    def _prompt(self) -> str:
        task: _Task = self._state
        return (
            f"Compute {_text(task.nodes, task.root)} with the tools, one operation per call, "
            "then give the value with: answer <value>."
        )

    # ------------------------------------------------------------------ calls
    def _call(self, call: ToolCall, arguments: dict[str, Any]) -> CallOutcome:
        op, a, b = call.name, arguments["a"], arguments["b"]
        value = _apply(op, a, b)
        if value is None:
            return CallOutcome("Error: division by zero" if b == 0 else f"Error: {a} is not divisible by {b}", False)
        label = self._judge(op, a, b, value)
        result = self._result(op, value)
        if self.echo:  # the scratchpad: what is left to compute, computed parts replaced by their values
            result += f" | left: {_text(self._state.nodes, self._state.root, self._state.belief)}"
        return CallOutcome(result, label=label)

    def _judge(self, op: str, a: int, b: int, value: int) -> int:
        """The call's label; updates the agent's beliefs."""
        task: _Task = self._state
        for n, node in enumerate(task.nodes):  # +1: a new operation with its true operands
            if not task.done[n] and node.op == op and _same(op, (a, b), self._true(n)):
                task.done[n], task.belief[n] = True, value
                return CORRECT
        for n, node in enumerate(task.nodes):  # 0: the right operation on the agent's own wrong result
            believed = self._believed(n)
            if not task.done[n] and node.op == op and believed is not None and _same(op, (a, b), believed):
                task.belief[n] = value
                return NEUTRAL
        for n, node in enumerate(task.nodes):  # 0: a recomputation of a done operation
            if task.done[n] and node.op == op and _same(op, (a, b), self._true(n)):
                return NEUTRAL
        for n in self._ready():  # −1: a wrong value, attributed to the operation it was meant to be
            believed = self._believed(n)
            assert believed is not None
            node = task.nodes[n]
            if (node.op == op and {a, b} & set(believed)) or (node.op != op and sorted((a, b)) == sorted(believed)):
                task.belief[n] = value
                break
        return WRONG

    def _answer(self, answer: str) -> tuple[bool, int]:
        task: _Task = self._state
        try:
            value = float(answer)
        except ValueError:
            return False, WRONG
        ok = value == task.nodes[task.root].value
        return ok, CORRECT if ok else WRONG

    def _reference(self) -> str:
        task: _Task = self._state
        return str(task.nodes[task.root].value)

    def _result(self, op: str, value: int) -> str:
        if self.noise and self.np_random.random() < self.noise:
            return json.dumps({"result": value, "op": op, "elapsed_ms": int(self.np_random.integers(1, 40))})
        return str(value)

    # ------------------------------------------------------------------ expert + mistakes
    def _true(self, n: int) -> tuple[int, int]:
        nodes = self._state.nodes
        a, b = (_literal(nodes, x) for x in nodes[n].operands)
        return a, b

    def _believed(self, n: int) -> tuple[int, int] | None:
        task: _Task = self._state
        out = []
        for x in task.nodes[n].operands:
            v = x if isinstance(x, int) else task.belief[int(x[1:])]
            if v is None:
                return None
            out.append(v)
        return out[0], out[1]

    def _ready(self) -> list[int]:
        task: _Task = self._state
        return [n for n in range(len(task.nodes)) if task.belief[n] is None and self._believed(n) is not None]

    def _expert(self) -> list[str]:
        task: _Task = self._state
        if task.belief[task.root] is not None:
            return [f"answer {task.belief[task.root]}"]
        out = []
        for n in self._ready():
            a, b = self._believed(n)  # type: ignore[misc]
            op = task.nodes[n].op
            out.append(self.call_text(op, a=a, b=b))
            if op in _COMMUTATIVE and a != b:
                out.append(self.call_text(op, a=b, b=a))
        return out

    def _mistakes(self) -> list[tuple[str, str]]:
        task: _Task = self._state
        root = task.belief[task.root]
        if root is not None:
            return [("answer", f"answer {root + 1 + task.root % 3}")]
        out = []
        for n in self._ready():
            a, b = self._believed(n)  # type: ignore[misc]
            op, shift = task.nodes[n].op, 1 + n % 3
            right = _apply(op, a, b)
            # a wrong operand that the tool accepts (division stays exact) and that changes the result
            a2, b2 = (a + b * shift, b) if op == "div" else (a, b + shift)
            if _apply(op, a2, b2) not in (None, right):
                out.append(("operand", self.call_text(op, a=a2, b=b2)))
            other = next((o for o in ("add", "mul", "sub") if o != op and _apply(o, a, b) != right), None)
            if other is not None:
                out.append(("operator", self.call_text(other, a=a, b=b)))
        return out

    def _progress(self) -> str:
        return json.dumps(self._state.belief)


def _weights(choices: list[str]) -> list[float]:
    w = {"new": 0.3, "extend": 0.45, "combine": 0.25}
    total = sum(w[c] for c in choices)
    return [w[c] / total for c in choices]


def _literal(nodes: list[_Node], x: int | str) -> int:
    return x if isinstance(x, int) else nodes[int(x[1:])].value


def _pick_op(rng: np.random.Generator, a: int, b: int) -> str:
    ops = ["add", "sub"]
    if abs(a * b) <= 400:
        ops.append("mul")
    if b not in (0, 1) and a % b == 0:
        ops.append("div")
    # no intermediate value 0: a product with 0 would hide every earlier mistake
    ops = [op for op in ops if _apply(op, a, b) != 0] or ["add" if a + b else "mul"]
    return str(rng.choice(ops))


def _same(op: str, got: tuple[int, int], want: tuple[int, int]) -> bool:
    return got == want or (op in _COMMUTATIVE and got == (want[1], want[0]))


def _text(nodes: list[_Node], n: int, belief: list[int | None] | None = None) -> str:
    """The expression of node ``n``; with ``belief``, nodes with a value are shown as that value."""
    if belief is not None and belief[n] is not None:
        return str(belief[n])
    node = nodes[n]
    parts = []
    for x in node.operands:
        if isinstance(x, int):
            parts.append(str(x))
        else:
            inner = _text(nodes, int(x[1:]), belief)
            parts.append(inner if belief is not None and belief[int(x[1:])] is not None else f"({inner})")
    return f"{parts[0]} {_OPS[node.op]} {parts[1]}"
