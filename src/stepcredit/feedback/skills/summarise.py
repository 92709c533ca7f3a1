"""Summarisers, which turn episodes into skills (SkillRL's teacher): ``RuleSummariser``, our rule-based
stand-in with its rules for the calculator, lookup and booking families, and ``LLMSummariser``, which
asks any prompt -> text callable."""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from stepcredit.core.errors import show
from stepcredit.envs.actions import parse_action
from stepcredit.feedback.skills.bank import (
    KINDS,
    Skill,
    SkillBankError,
    SkillKind,
    _line,
    _norm,
    _parse_json,
    _skill_entry,
    _text,
)
from stepcredit.feedback.skills.episodes import _CALC_OPS, Episode, abstract, abstract_action

__all__ = ["LLMSummariser", "Lesson", "RuleSummariser", "Summariser"]

_LOOKUP_TEXT = {
    "total_recent": "the total price of a user's most recent order",
    "priciest_delivered": "the priciest product of a user's delivered order",
    "category_recent": "the items of one category in a user's most recent order",
    "items_delivered": "the items a user received across delivered orders",
    "spend_delivered": "what a user spent across delivered orders",
}


def _describe(t: str) -> str:
    """A few words on what tasks of type ``t`` ask (the ``when_to_apply`` of a plan template)."""
    family, _, rest = t.partition(":")
    if family == "calculator":
        return f"computing an expression with {', '.join(rest.split('+'))}" if rest else "computing an expression"
    if family == "lookup":
        return f"questions about {_LOOKUP_TEXT[rest]}" if rest in _LOOKUP_TEXT else "database questions"
    if family == "booking":
        return f"desk requests to {', '.join(rest.split('+'))}" if rest else "desk requests"
    return "any task"


# ---------------------------------------------------------------------------------------------- summarisers
class Summariser(Protocol):
    """Anything that turns episodes into skills (SkillRL: a teacher LLM): ``summariser(episodes)``."""

    def __call__(self, episodes: Sequence[Episode]) -> list[Skill]: ...


@dataclass(frozen=True)
class Lesson:
    """One "mistake to avoid" (SkillRL's ``{trigger_condition, bad_action}`` plus the corrective
    principle), as ``RuleSummariser.lessons`` finds it; ``title`` is the rule's short name (the title of
    the general skill the lesson becomes when it holds across families)."""

    title: str
    trigger: str
    mistake: str
    principle: str


_NUM = re.compile(r"-?\d+(?:\.\d+)?")
_WRITES = ("book_flight", "cancel_reservation", "add_bags")

# (pattern in the error text, principle) — the first match wins; {tool} is the tool's name
_ERROR_RULES: tuple[tuple[str, str], ...] = (
    ("malformed action", "Write one action per turn: name(arg=value, ...) on one line, or answer <value>."),
    ("unknown tool", "Call only the tools the prompt lists, by their exact names."),
    (
        r"needs argument|has no argument|must be an? (?:integer|number|string)|out of range",
        "Pass {tool} exactly the arguments of its signature, each of the right type.",
    ),
    ("division by zero", "Never divide by zero: check the divisor before calling div."),
    ("is not divisible by", "Call div only when a is a multiple of b: div is exact integer division."),
    ("no user named", "Pass find_user the user's full name exactly as the question writes it."),
    (r"no (?:user|order|product) with id", "Pass {tool} an id exactly as an earlier tool result showed it."),
    (
        r"unknown (?:user|reservation|flight|payment method)",
        "Copy ids for {tool} exactly from the prompt or an earlier tool result.",
    ),
    ("unknown cabin", "Name the cabin as basic_economy, economy or business."),
    ("seats left", "Book only a flight whose search result shows free seats in the requested cabin."),
    ("not enough for", "Pay with a method that covers the whole amount; the credit card always does."),
    ("is cancelled", "Read a reservation's status first: a cancelled reservation cannot be changed."),
    ("bags must be between", "Add between 1 and the allowed number of bags: the number the customer asked for."),
)


def _error_principle(error: str, tool: str) -> str:
    for pattern, principle in _ERROR_RULES:
        if re.search(pattern, error):
            return principle.format(tool=tool)
    return f"When {tool} returns an error, read it and fix the call's arguments; never repeat the same call."


def _error_line(observation: str) -> str | None:
    return next((line.strip() for line in observation.splitlines() if line.strip().startswith("Error:")), None)


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _numbers(text: str) -> set[str]:
    return {_canonical_number(x) for x in _NUM.findall(text)}


def _canonical_number(x: str | float) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return str(x)
    return str(int(v)) if v.is_integer() else repr(v)


def _first_number(observation: str) -> float | None:
    data = _json_or_none(observation)
    if isinstance(data, dict) and isinstance(data.get("result"), int | float):
        return float(data["result"])
    m = re.match(r"\s*(-?\d+(?:\.\d+)?)\b", observation)
    return float(m.group(1)) if m else None


class RuleSummariser:
    """Our rule-based stand-in for SkillRL's teacher LLM, written for the calculator, lookup and booking
    families. It reads only the episodes' texts and success flags.

    **Successes → plan templates** (kind ``task``): the action sequence with entities abstracted
    (``abstract_action``), joined by `` -> ``; equal templates of one task type are merged and counted;
    the ``max_templates`` most frequent per type are kept (ties: text order).

    **Failures → lessons** (kind ``mistake``: ``title`` the mistake, ``when_to_apply`` the trigger,
    ``principle`` the rule's sentence), from each failed episode:

    * every tool error: an ``Error: …`` observation after a call — trigger: the tool and its abstracted
      error text, mistake: the abstracted action, principle: chosen by the error text;
    * the first ungrounded argument (a value that neither the prompt nor an earlier observation shows,
      e.g. a misspelt name or an altered operand; only when no step was cut off, ``Episode.skipped``);
    * the first family check that fails: calculator — a call whose operation the expression does not
      contain, or an answer after a last operation that is not the expression's outermost one;
      lookup — reading an order the question excludes (not the most recent, not delivered), or
      answering before every product (or delivered order) was read; booking — a write that contradicts
      the request or the policy as the tool results show it (date, cabin, budget, payment method,
      cancellation rule, bags on basic_economy, bag count), or more writes than requests;
    * how the episode ended: the turn budget ran out (the most repeated call, or calling without
      answering), or — when nothing above explained the failure — a wrong final answer (calculator: an
      answer that differs from the last result; else a family-specific check-before-answering rule).

    Lessons of one task type with the same principle are merged and counted (the most frequent trigger
    and mistake represent them); the ``max_lessons`` most frequent per type are kept. A principle that
    appears in the lessons of ``min_families`` or more families becomes one general skill instead
    (``when_to_apply``: "any task (seen in calculator, lookup tasks)").
    Output order: general skills, then per task type (sorted) its templates, then its lessons.
    """

    def __init__(self, *, max_templates: int = 3, max_lessons: int = 5, min_families: int = 2) -> None:
        for name, value in (("max_templates", max_templates), ("max_lessons", max_lessons)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if isinstance(min_families, bool) or not isinstance(min_families, int) or min_families < 2:
            raise ValueError(f"min_families must be an integer >= 2, got {min_families!r}")
        self.max_templates, self.max_lessons, self.min_families = max_templates, max_lessons, min_families

    def __repr__(self) -> str:
        return (
            f"RuleSummariser(max_templates={self.max_templates}, max_lessons={self.max_lessons}, "
            f"min_families={self.min_families})"
        )

    # ------------------------------------------------------------------ the whole batch
    def __call__(self, episodes: Sequence[Episode]) -> list[Skill]:
        templates: dict[str, collections.Counter[str]] = {}
        lessons: dict[str, dict[str, list[Lesson]]] = {}  # type -> principle -> instances
        for e in episodes:
            if e.success:
                # SkillRL's refinement drops the noise: steps the tools rejected are no part of the plan
                steps = [a for a, o in zip(e.actions, e.observations, strict=True) if _error_line(o) is None]
                if steps:
                    plan = " -> ".join(abstract_action(a) for a in steps)
                    templates.setdefault(e.task_type, collections.Counter())[plan] += 1
            else:
                for lesson in self.lessons(e):
                    lessons.setdefault(e.task_type, {}).setdefault(lesson.principle, []).append(lesson)

        families: dict[str, set[str]] = {}
        for t, by_principle in lessons.items():
            for principle in by_principle:
                families.setdefault(principle, set()).add(t.partition(":")[0])
        promoted = sorted(p for p, fams in families.items() if len(fams) >= self.min_families)

        out: list[Skill] = []
        for principle in promoted:
            instances = [x for t in sorted(lessons) for x in lessons[t].get(principle, [])]
            when = f"any task (seen in {', '.join(sorted(families[principle]))} tasks)"
            out.append(Skill(_rule_id("gen", principle), instances[0].title, principle, when, "general"))
        for t in sorted(set(templates) | set(lessons)):
            ranked = sorted(templates.get(t, {}).items(), key=lambda kv: (-kv[1], kv[0]))
            for plan, n in ranked[: self.max_templates]:
                title = f"Plan that worked ({n} run{'s' if n > 1 else ''})"
                out.append(Skill(_rule_id("tsk", t + plan), title, plan, f"{t}: {_describe(t)}", "task", t))
            kept = [(p, xs) for p, xs in lessons.get(t, {}).items() if p not in promoted]
            kept.sort(key=lambda px: (-len(px[1]), px[0]))
            for principle, instances in kept[: self.max_lessons]:
                rep = _representative(instances)
                out.append(Skill(_rule_id("err", t + principle), rep.mistake, principle, rep.trigger, "mistake", t))
        return out

    # ------------------------------------------------------------------ one failed episode
    def lessons(self, e: Episode) -> list[Lesson]:
        """The lessons of one failed episode, in the order the rules above list them."""
        out = self._tool_errors(e)
        cause = None
        if e.skipped == 0:
            cause = self._ungrounded(e)
        family = e.task_type.partition(":")[0]
        if cause is None:
            check = {"calculator": self._calculator, "lookup": self._lookup, "booking": self._booking}.get(family)
            cause = check(e) if check is not None else None
        if cause is not None:
            out.append(cause)
        ending = self._ending(e, explained=cause is not None or bool(out))
        if ending is not None:
            out.append(ending)
        return list(dict.fromkeys(out))

    @staticmethod
    def _tool_errors(e: Episode) -> list[Lesson]:
        out = []
        for action, obs in zip(e.actions, e.observations, strict=True):
            error = _error_line(obs)
            if error is None:
                continue
            parsed = parse_action(action)
            tool = parsed.calls[0].name if parsed.calls else "the action"
            if parsed.calls and len(parsed.calls) > 1:  # the call whose result is the error line
                lines = obs.splitlines()
                if len(lines) == len(parsed.calls):
                    tool = next(
                        c.name for c, line in zip(parsed.calls, lines, strict=True) if line.startswith("Error:")
                    )
            shown = abstract(error)
            trigger = f"calling {tool} (it answered: {shown})" if parsed.calls else f"acting (it answered: {shown})"
            out.append(Lesson("Fix tool errors", trigger, abstract_action(action), _error_principle(error, tool)))
        return out

    @staticmethod
    def _ungrounded(e: Episode) -> Lesson | None:
        text, numbers = _norm(e.prompt), _numbers(e.prompt)  # what the agent has seen so far
        for action, obs in zip(e.actions, e.observations, strict=True):
            parsed = parse_action(action)
            for call in parsed.calls:
                for arg, value in call.arguments.items():
                    if isinstance(value, bool):
                        continue
                    if isinstance(value, int | float):
                        ok = _canonical_number(value) in numbers
                    elif isinstance(value, str):
                        ok = _norm(value) in text
                    else:
                        ok = True
                    if not ok:
                        return Lesson(
                            "Use values you have seen",
                            f"calling {call.name} with a {arg} that neither the task nor a tool result showed",
                            abstract_action(action),
                            "Copy every argument exactly from the task or an earlier tool result; never guess "
                            "or alter a value.",
                        )
            text, numbers = f"{text}\n{_norm(obs)}", numbers | _numbers(obs)
        return None

    # ------------------------------------------------------------------ family checks
    @staticmethod
    def _calculator(e: Episode) -> Lesson | None:
        m = re.match(r"\s*Compute (.+?) with the tools", e.prompt, re.DOTALL)
        if m is None:
            return None
        expression = m.group(1)
        ops = {_CALC_OPS[o] for o in re.findall(r"(?<=\s)([-+*/])(?=\s)", f" {expression} ")}
        last_op = None
        for action in e.actions:
            for call in parse_action(action).calls:
                if call.name in _CALC_OPS.values():
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
        answered = bool(e.actions) and parse_action(e.actions[-1]).answer is not None
        if answered and last_op is not None and outer is not None and last_op[0] != outer:
            return Lesson(
                "Use the expression's operations",
                "computing the last step of the expression",
                abstract_action(last_op[1]),
                "Finish with the expression's outermost operation, the one outside every bracket, applied to "
                "the results of its two sides.",
            )
        return None

    @staticmethod
    def _lookup(e: Episode) -> Lesson | None:
        kind = e.task_type.partition(":")[2]
        listed: dict[str, tuple[str, str, int]] = {}  # order id -> (date, status, which listing)
        latest: dict[int, str] = {}
        read_orders: list[str] = []
        items: set[str] = set()
        products: set[str] = set()
        for action, obs in zip(e.actions, e.observations, strict=True):
            calls = parse_action(action).calls
            if len(calls) != 1 or _error_line(obs) is not None:
                continue
            call, data = calls[0], _json_or_none(obs)
            if call.name == "list_orders" and isinstance(data, dict) and isinstance(data.get("orders"), list):
                k = len(latest)
                rows = [r for r in data["orders"] if isinstance(r, dict) and isinstance(r.get("id"), str)]
                for r in rows:
                    listed[r["id"]] = (str(r.get("date", "")), str(r.get("status", "")), k)
                if rows:
                    latest[k] = max(rows, key=lambda r: str(r.get("date", "")))["id"]
            elif call.name == "get_order" and isinstance(data, dict):
                oid = str(data.get("id", ""))
                if oid in listed:
                    _, status, k = listed[oid]
                    if kind.endswith("_recent") and oid != latest[k] and not read_orders:
                        return Lesson(
                            "Pick the order the question asks for",
                            "list_orders showed several orders and the question asks for the most recent one",
                            f"{abstract_action(action)} of an older order",
                            "Read the order with the latest date in list_orders: the question asks for the most "
                            "recent order.",
                        )
                    if kind.endswith("_delivered") and status != "delivered":
                        return Lesson(
                            "Pick the order the question asks for",
                            "list_orders showed orders of several statuses and the question asks for delivered ones",
                            f"{abstract_action(action)} of a {_line(status)[:20]} order",
                            "Read only orders whose status is delivered; skip pending, shipped, cancelled and "
                            "returned ones.",
                        )
                read_orders.append(oid)
                lines = data.get("items")
                if isinstance(lines, list):
                    items |= {str(r["p"]) for r in lines if isinstance(r, dict) and "p" in r}
            elif call.name == "get_product" and isinstance(data, dict):
                products.add(str(data.get("id", "")))
        if not e.actions or not e.actions[-1].lstrip().startswith("answer"):
            return None
        if kind == "items_delivered":
            delivered = {o for o, (_, status, _) in listed.items() if status == "delivered"}
            mine = {o for o in delivered if listed[o][2] == len(latest) - 1}
            if mine - set(read_orders):
                return Lesson(
                    "Read everything the answer needs",
                    "answering while a delivered order in list_orders was still unread",
                    "answer [N] before reading every delivered order",
                    "Read every delivered order with get_order before adding up the quantities.",
                )
        elif kind and items - products:
            return Lesson(
                "Read everything the answer needs",
                "answering while a product of the order was still unread",
                f"{abstract_action(e.actions[-1])} before reading every product",
                "Read every product of the selected order(s) with get_product before answering.",
            )
        return None

    @staticmethod
    def _booking(e: Episode) -> Lesson | None:
        requests = _booking_requests(e.prompt)
        now = re.search(r"Now: (\d{4}-\d{2}-\d{2} \d{2}:\d{2})", e.prompt)
        flights: dict[str, tuple[str, str, str, dict[str, Any], dict[str, Any]]] = {}  # id -> route, prices, seats
        reservations: dict[str, dict[str, Any]] = {}
        payments: dict[str, str] = {}
        writes: collections.Counter[str] = collections.Counter()
        for action, obs in zip(e.actions, e.observations, strict=True):
            calls = parse_action(action).calls
            if len(calls) != 1 or _error_line(obs) is not None:
                continue
            call, a, data = calls[0], calls[0].arguments, _json_or_none(obs)
            if call.name == "get_user" and isinstance(data, dict) and isinstance(data.get("pay"), list):
                payments = {str(p.get("id")): str(p.get("kind")) for p in data["pay"] if isinstance(p, dict)}
            elif call.name == "search_flights" and isinstance(data, list):
                route = (
                    str(a.get("origin", "")).upper(),
                    str(a.get("destination", "")).upper(),
                    str(a.get("date", "")),
                )
                for row in data:
                    if isinstance(row, dict) and isinstance(row.get("price"), dict):
                        flights[str(row.get("flight"))] = (*route, row["price"], row.get("seats") or {})
            elif call.name == "get_reservation" and isinstance(data, dict):
                reservations[str(data.get("res", "")).upper()] = data
            if call.name not in _WRITES:
                continue
            writes[call.name] += 1
            lesson = _booking_write(
                call.name, a, requests, now.group(1) if now else "", flights, reservations, payments
            )
            if lesson is None and writes[call.name] > sum(1 for r in requests if r[0] == call.name):
                lesson = (
                    "after the customer's requests of that kind were already handled",
                    "Make at most one write per request, and only for what the customer asked.",
                )
            if lesson is not None:
                trigger, principle = lesson
                return Lesson(
                    "Check each write against the request and policy", trigger, abstract_action(action), principle
                )
        return None

    # ------------------------------------------------------------------ the end of the episode
    @staticmethod
    def _ending(e: Episode, *, explained: bool) -> Lesson | None:
        if not e.actions:
            return None
        last = parse_action(e.actions[-1])
        if last.answer is None:
            counts = collections.Counter(e.actions)
            repeated = max(counts.items(), key=lambda kv: (kv[1], -e.actions.index(kv[0])))
            if repeated[1] > 1:
                return Lesson(
                    "Do not repeat calls",
                    "the turn budget ran out before an answer",
                    f"repeating {abstract_action(repeated[0])}",
                    "Do not repeat a call whose result you already have; once the results the task needs "
                    "are in, answer.",
                )
            return Lesson(
                "Answer within the turn budget",
                "the turn budget ran out before an answer",
                "calling tools without ever answering",
                "Make only the calls the task needs and answer as soon as their results are in.",
            )
        if explained:
            return None
        family, _, kind = e.task_type.partition(":")
        answer = abstract_action(e.actions[-1])
        if family == "calculator":
            value = _first_number(last.answer or "")
            results = [v for v in (_first_number(o) for o in e.observations[:-1]) if v is not None]
            if results and value != results[-1]:
                return Lesson(
                    "Answer what the tools computed",
                    "answering after the last operation returned its result",
                    f"{answer} that differs from the last result",
                    "Answer exactly the value the last operation returned; never adjust it.",
                )
            principle = (
                "Before answering, check every call against the expression: the right operation on the "
                "right operands (numbers from the task or earlier results), in an order the brackets allow."
            )
        elif family == "lookup":
            principle = {
                "total_recent": "Answer the sum of quantity x unit price over the items of the most recent order.",
                "spend_delivered": "Answer the sum of quantity x unit price over the items of every delivered order.",
                "category_recent": "Answer the sum of the quantities of the most recent order's items in the category.",
                "items_delivered": "Answer the sum of the quantities over the items of every delivered order.",
                "priciest_delivered": "Answer the name of the product with the highest unit price in the delivered "
                "order, as get_product shows it.",
            }.get(kind, "Answer only from values the tools returned, computed as the question asks.")
        elif family == "booking":
            principle = (
                "Handle every request before answer done: read what it needs, then make the write, or make none "
                "when the policy forbids it."
            )
        else:
            principle = "Check the answer against the task and the tool results before giving it."
        return Lesson("Check the answer before giving it", "giving the final answer", answer, principle)


def _outermost(expression: str) -> str | None:
    """The operation of an expression outside every bracket (``(7 + 5) * 3`` → ``mul``), if exactly one."""
    depth, found = 0, []
    for i, ch in enumerate(expression):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and ch in _CALC_OPS and expression[i - 1 : i + 2] == f" {ch} ":
            found.append(_CALC_OPS[ch])
    return found[0] if len(found) == 1 else None


def _representative(instances: Sequence[Lesson]) -> Lesson:
    counts = collections.Counter((x.trigger, x.mistake) for x in instances)
    (trigger, mistake), _ = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return Lesson(instances[0].title, trigger, mistake, instances[0].principle)


def _rule_id(prefix: str, text: str) -> str:
    return f"{prefix}_{hashlib.blake2b(text.encode('utf-8', 'replace'), digest_size=5).hexdigest()}"


_BOOK = re.compile(
    r"^\s*\d+\.\s+Book an? (\w+) flight from ([A-Z]{3}) to ([A-Z]{3}) on (\d{4}-\d{2}-\d{2}), "
    r"costing at most \$(\d+); pay with (my credit card|any of my payment methods)",
    re.MULTILINE,
)
_CANCEL = re.compile(r"^\s*\d+\.\s+Cancel my reservation (\w+)", re.MULTILINE)
_BAGS = re.compile(r"^\s*\d+\.\s+Add (\d+) checked bags? to my reservation (\w+)", re.MULTILINE)


def _booking_requests(prompt: str) -> list[tuple[str, ...]]:
    """The requests of a booking prompt as (write tool, fields...)."""
    out: list[tuple[str, ...]] = [("book_flight", *m.groups()) for m in _BOOK.finditer(prompt)]
    out += [("cancel_reservation", m.group(1).upper()) for m in _CANCEL.finditer(prompt)]
    out += [("add_bags", m.group(1), m.group(2).upper()) for m in _BAGS.finditer(prompt)]
    return out


def _booking_write(
    tool: str,
    a: Mapping[str, Any],
    requests: list[tuple[str, ...]],
    now: str,
    flights: Mapping[str, tuple[str, str, str, dict[str, Any], dict[str, Any]]],
    reservations: Mapping[str, dict[str, Any]],
    payments: Mapping[str, str],
) -> tuple[str, str] | None:
    """(trigger, principle) when a successful write contradicts the request or the policy as the prompt
    and the earlier tool results show them; None when nothing shown contradicts it."""
    if tool == "book_flight":
        f = flights.get(str(a.get("flight", "")).upper())
        if f is None:
            return None
        org, dst, date, price, _ = f
        cabin = str(a.get("cabin", "")).lower()
        request = next((r for r in requests if r[0] == "book_flight" and (r[2], r[3]) == (org, dst)), None)
        if request is None:
            return ("booking a route no request names", "Book only the routes the customer asked for.")
        _, want_cabin, _, _, want_date, budget, pay = request
        trigger = "booking a flight for a request"
        if date != want_date:
            return (trigger, "Book only a flight on the requested date; search that date, not a nearby one.")
        if cabin != want_cabin:
            return (trigger, "Book the cabin the customer asked for (basic_economy, economy or business).")
        if isinstance(price.get(cabin), int | float) and price[cabin] > int(budget):
            return (
                trigger,
                "Book only a flight whose price in the requested cabin is within the budget; if none qualifies, "
                "book nothing.",
            )
        if pay == "my credit card" and payments.get(str(a.get("payment_id", ""))) not in (None, "credit_card"):
            return (trigger, "When the customer asks to pay with the credit card, pay with the credit card's id.")
        return None
    rid = str(a.get("reservation_id", "")).upper()
    res = reservations.get(rid)
    if tool == "cancel_reservation":
        if not any(r[0] == tool and r[1] == rid for r in requests):
            return ("cancelling a reservation", "Cancel only the reservations the customer asked to cancel.")
        if res is not None and now and not _may_cancel(res, now):
            return (
                "cancelling a reservation",
                "Cancel only if the reservation was booked less than 24 hours ago, is insured, or is business "
                "class; otherwise leave it.",
            )
        return None
    request = next((r for r in requests if r[0] == tool and r[2] == rid), None)
    if request is None:
        return ("adding bags to a reservation", "Add bags only to the reservation the customer named.")
    if res is not None and res.get("cabin") == "basic_economy":
        return ("adding bags to a reservation", "Never add bags to a basic_economy reservation; leave that request.")
    if str(a.get("bags", "")) != request[1]:
        return ("adding bags to a reservation", "Add exactly the number of bags the customer asked for.")
    if payments.get(str(a.get("payment_id", ""))) == "certificate":
        return (
            "adding bags to a reservation",
            "Pay for bags with the credit card or a gift card that covers the fee; certificates pay only for flights.",
        )
    return None


def _may_cancel(res: Mapping[str, Any], now: str) -> bool:
    try:
        booked = dt.datetime.strptime(str(res.get("booked", "")), "%Y-%m-%d %H:%M")
        current = dt.datetime.strptime(now, "%Y-%m-%d %H:%M")
    except ValueError:
        return True  # nothing shown contradicts it
    recent = current - booked < dt.timedelta(hours=24)
    return recent or res.get("insured") is True or res.get("cabin") == "business"


class LLMSummariser:
    """The SkillRL path: any ``Callable[[str], str]`` (an LLM behind an API, a local model, a test fake)
    as the teacher. ``prompt(episodes)`` adapts SkillRL's distillation / ``analyze_failures`` prompt: the
    episodes (task, task type, outcome, the steps with observations clipped to ``max_observation``
    characters), the titles of ``existing`` skills to avoid, and the output format. The reply is parsed
    strictly (``parse``): a JSON array — optionally inside one Markdown code fence — of at most
    ``max_skills`` objects with exactly ``title``, ``principle``, ``when_to_apply`` and optionally
    ``kind``, ``task_type``, ``skill_id``; anything else raises ``SkillBankError`` naming the item and
    field. Skill ids are assigned here (``llm_001``, …), as SkillRL reassigns the teacher's ids.
    """

    def __init__(
        self,
        fn: Callable[[str], str],
        *,
        max_skills: int = 3,
        max_observation: int = 200,
        existing: Sequence[Skill] = (),
    ) -> None:
        if not callable(fn):
            raise TypeError(f"LLMSummariser needs a callable prompt -> text, got {type(fn).__name__}")
        for name, value in (("max_skills", max_skills), ("max_observation", max_observation)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.fn, self.max_skills, self.max_observation = fn, max_skills, max_observation
        self.existing = tuple(existing)

    def prompt(self, episodes: Sequence[Episode]) -> str:
        examples = []
        for i, e in enumerate(episodes, 1):
            steps = "\n".join(
                f"  Action: {a}\n  Observation: {o[: self.max_observation]}"
                for a, o in zip(e.actions, e.observations, strict=True)
            )
            examples.append(
                f"Example {i}:\nTask: {e.prompt}\nTask Type: {e.task_type}\n"
                f"Outcome: {'SUCCESS' if e.success else 'FAILURE'}\nTrajectory:\n{steps}\n"
            )
        titles = [s.title if s.task_type is None else f"[{s.task_type}] {s.title}" for s in self.existing]
        return (
            "Analyze these agent episodes and write skills for a skill bank.\n"
            "From successful episodes, write plan templates with entities abstracted ([N], [ID], [NAME]); "
            "from failed ones, write mistakes to avoid (title: the bad action, when_to_apply: the trigger "
            "condition, principle: what to do instead).\n\n"
            f"EPISODES:\n{''.join(examples)}\n"
            f"EXISTING SKILL TITLES (do not duplicate these):\n{json.dumps(titles)}\n\n"
            f"Return ONLY a JSON array of 1-{self.max_skills} skills. Each skill is an object with "
            '"title" (3-5 words), "principle" (1-2 sentences), "when_to_apply", "kind" ("general", "task" or '
            '"mistake") and "task_type" (one of the task types above, or null for a general skill).\n'
        )

    def __call__(self, episodes: Sequence[Episode]) -> list[Skill]:
        types = sorted({e.task_type for e in episodes})
        reply = self.fn(self.prompt(episodes))
        return self.parse(reply, default_task_type=types[0] if len(types) == 1 else None)

    def parse(self, reply: Any, *, default_task_type: str | None = None, source: str = "LLM reply") -> list[Skill]:
        """The skills of a reply (see the class docstring). ``default_task_type``: the type of items that
        name none (their ``kind`` defaults to ``task`` then, else ``general``)."""
        text = _text(reply, source)
        fenced = re.fullmatch(r"\s*```(?:json)?[ \t]*\n(.*)\n```\s*", text, re.DOTALL)
        data = _parse_json(fenced.group(1) if fenced else text, source)
        if not isinstance(data, list):
            raise SkillBankError(f"expected a JSON array of skills, got {show(data)}", source=source, field="$")
        if not data:
            raise SkillBankError("expected at least one skill, got an empty array", source=source, field="$")
        out = []
        for i, item in enumerate(data[: self.max_skills]):
            where = f"[{i}]"
            if not isinstance(item, dict):
                raise SkillBankError(f"expected a skill object, got {show(item)}", source=source, field=where)
            entry = dict(item)
            if "skill_id" in entry and not isinstance(entry["skill_id"], str):
                raise SkillBankError(
                    f"expected a string, got {show(entry['skill_id'])}", source=source, field=f"{where}.skill_id"
                )
            entry["skill_id"] = f"llm_{i + 1:03d}"
            kind = entry.get("kind", "task" if default_task_type else "general")
            if kind not in KINDS:
                raise SkillBankError(
                    f"expected one of {', '.join(KINDS)}, got {show(kind)}", source=source, field=f"{where}.kind"
                )
            if kind != "general":
                entry.setdefault("task_type", default_task_type)
            if "when_to_apply" not in entry:
                raise SkillBankError("missing field 'when_to_apply'", source=source, field=where)
            section_type = entry.get("task_type") if kind == "task" else None
            if kind == "task" and not isinstance(section_type, str):
                raise SkillBankError(
                    f"expected a task type for a task skill, got {show(section_type)}",
                    source=source,
                    field=f"{where}.task_type",
                )
            out.append(_skill_entry(entry, cast(SkillKind, kind), section_type, source, where))
        return out
