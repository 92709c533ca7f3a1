"""The booking family's rule teacher (``BookingEnv``): task kinds by the requests the prompt lists, and the
checks of each write a failed episode made against the request and the policy as the tool results
showed them."""

from __future__ import annotations

import collections
import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from stepcredit.envs.actions import parse_action
from stepcredit.envs.teaching.base import EpisodeText, Lesson, Teacher, abstract_action, error_line, json_or_none

__all__ = ["BookingTeacher"]

_GOAL = re.compile(r"^\s*\d+\.\s+(Book|Cancel|Add)\b", re.MULTILINE)
_GOAL_KINDS = {"Book": "book", "Cancel": "cancel", "Add": "bags"}
_WRITES = ("book_flight", "cancel_reservation", "add_bags")


class BookingTeacher(Teacher):
    """Kinds: an "airline desk agent" prompt; the kind is the request kinds it lists, in the order book,
    cancel, bags (``booking:book+cancel``).

    Checks: a write that contradicts the request or the policy as the tool results show it (date, cabin,
    budget, payment method, cancellation rule, bags on basic_economy, bag count), or more writes than
    requests."""

    family = "booking"
    error_rules = (
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

    def kind(self, prompt: str) -> str | None:
        if "airline desk agent" not in prompt.casefold():
            return None
        found = {_GOAL_KINDS[g] for g in _GOAL.findall(prompt)}
        return "+".join(g for g in ("book", "cancel", "bags") if g in found)

    def describe(self, kind: str) -> str:
        return f"desk requests to {', '.join(kind.split('+'))}" if kind else "desk requests"

    def check(self, episode: EpisodeText, kind: str) -> Lesson | None:
        requests = _requests(episode.prompt)
        now = re.search(r"Now: (\d{4}-\d{2}-\d{2} \d{2}:\d{2})", episode.prompt)
        flights: dict[str, tuple[str, str, str, dict[str, Any], dict[str, Any]]] = {}  # id -> route, prices, seats
        reservations: dict[str, dict[str, Any]] = {}
        payments: dict[str, str] = {}
        writes: collections.Counter[str] = collections.Counter()
        for action, obs in zip(episode.actions, episode.observations, strict=True):
            calls = parse_action(action).calls
            if len(calls) != 1 or error_line(obs) is not None:
                continue
            call, a, data = calls[0], calls[0].arguments, json_or_none(obs)
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
            lesson = _write(call.name, a, requests, now.group(1) if now else "", flights, reservations, payments)
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

    def answer_principle(self, kind: str) -> str:
        return (
            "Handle every request before answer done: read what it needs, then make the write, or make none "
            "when the policy forbids it."
        )


_BOOK = re.compile(
    r"^\s*\d+\.\s+Book an? (\w+) flight from ([A-Z]{3}) to ([A-Z]{3}) on (\d{4}-\d{2}-\d{2}), "
    r"costing at most \$(\d+); pay with (my credit card|any of my payment methods)",
    re.MULTILINE,
)
_CANCEL = re.compile(r"^\s*\d+\.\s+Cancel my reservation (\w+)", re.MULTILINE)
_BAGS = re.compile(r"^\s*\d+\.\s+Add (\d+) checked bags? to my reservation (\w+)", re.MULTILINE)


def _requests(prompt: str) -> list[tuple[str, ...]]:
    """The requests of a booking prompt as (write tool, fields...)."""
    out: list[tuple[str, ...]] = [("book_flight", *m.groups()) for m in _BOOK.finditer(prompt)]
    out += [("cancel_reservation", m.group(1).upper()) for m in _CANCEL.finditer(prompt)]
    out += [("add_bags", m.group(1), m.group(2).upper()) for m in _BAGS.finditer(prompt)]
    return out


def _write(
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
