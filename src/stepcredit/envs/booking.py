"""Stateful booking: an airline desk with read tools, write tools and policy rules (like tau2-bench airline).

A task is one user (id, name, membership ``regular``/``silver``/``gold``, payment methods: a credit card, a
gift card with a balance, maybe a travel certificate with an amount), the user's reservations, a flight
table, and ``depth`` requests (goals) from the user, each of one kind:

* **book**: "book a <cabin> flight from A to B on D, costing at most $X" (paid with the credit card, or
  with any method). Usually 2–3 flights qualify and 1–3 payment methods cover the price, so a goal has
  several valid solutions; some booking goals have no qualifying flight (all over budget or full): then
  the correct behaviour is to search, see that nothing qualifies, and book nothing.
* **cancel**: "cancel reservation R" — allowed only if R was booked less than 24 hours ago, or is
  insured, or is business class; otherwise the correct behaviour is to read R and not cancel it.
* **bags**: "add n checked bags to reservation R" — forbidden on a basic_economy reservation (read R, add
  nothing); the system charges $50 per bag beyond the membership's free allowance (gold 2, silver 1,
  regular 0 per reservation, counting the bags already on it).

Tools: ``get_user(user_id)``, ``search_flights(origin, destination, date)``, ``get_reservation(
reservation_id)`` (reads) and ``book_flight(user_id, flight, cabin, payment_id)``, ``cancel_reservation(
reservation_id)``, ``add_bags(reservation_id, bags, payment_id)`` (writes). The system rejects what it
cannot do (unknown ids, no seats, a gift card or certificate that does not cover the amount: an error,
nothing changes) but **accepts writes that break the desk's policy**: such a write succeeds and dooms
the task. Goals may be handled in any order; the first goal of a task always needs a write, so
``depth`` is the number of goals (writes plus "do nothing" checks). The final action is ``answer done``.

**What the agent knows.** The environment tracks which records the agent has read (the user, each
searched route, each reservation) and which goals its writes achieved or spoiled. ``expert`` lists every
correct next action from there (every read a pending goal needs, every valid booking/payment choice);
after a wrong write the expert carries on with the remaining goals and then answers: the run fails.

**Labelling rules** (per call, then per step as ``ToolEnv`` says):

* **+1** the first read of a record a pending goal needs: the user record (while an achievable booking
  or bags goal is open), the search for a booking goal's route and date, the reservation a cancel or
  bags goal is about; a write that achieves an open goal and breaks no rule (right route, date, cabin,
  within budget, an allowed payment method; an allowed cancellation; the requested bags, not paid by
  certificate); ``answer`` when every goal is achieved and no rule was broken;
* **0** a repeated or unrelated read; a call the system rejects (nothing changed); a distractor tool;
  ``answer`` after a wrong write already doomed the task (the mistake is labelled where it was made);
* **−1** a write that succeeds but breaks a rule or matches no open goal (it dooms the task); ``answer``
  while a goal is still open and nothing doomed the task (premature end).

``noise`` makes a read result carry irrelevant extra fields.

Mistake kinds offered to scripted policies (each a successful rule-breaking write, except the last):
``over_budget`` (a flight above the budget), ``wrong_cabin`` (a qualifying flight in another cabin),
``wrong_date`` (the route's flight on the next day), ``wrong_payment`` (the gift card or certificate when
the user asked for the credit card; a certificate for bags), ``duplicate_booking`` (a second booking for
a done goal), ``forbidden_cancel``, ``forbidden_bags``, ``wrong_count`` (one bag more than asked),
``extra_write`` (cancelling a reservation no goal is about), ``premature_answer``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from stepcredit.envs.actions import ToolCall
from stepcredit.envs.base import CORRECT, NEUTRAL, WRONG, CallOutcome, Param, Tool, ToolEnv

__all__ = ["BookingEnv"]

_CABINS = ("basic_economy", "economy", "business")
_ALLOWANCE = {"regular": 0, "silver": 1, "gold": 2}
_BAG_FEE = 50
_MAX_BAGS = 9
_FMT = "%Y-%m-%d %H:%M"

# Disjoint entity pools per split: held-out tasks use unseen names, airports and ids.
_FIRST = {
    "train": ("ann", "bob", "cara", "dev", "emma", "finn", "gia", "hugo", "ivy", "jack", "kai", "lena"),
    "test": ("maya", "noah", "olga", "paul", "quinn", "rosa", "sam", "tara", "uma", "vic", "wren", "yara"),
}
_LAST = {
    "train": ("lee", "kim", "diaz", "moss", "park", "reed", "shaw", "ford"),
    "test": ("nash", "ortiz", "pike", "quan", "ross", "tate", "vale", "wu"),
}
_AIRPORTS = {
    "train": ("JFK", "LAX", "SEA", "ORD", "ATL", "DFW", "BOS", "MIA", "DEN", "PHX"),
    "test": ("SFO", "IAH", "MSP", "DTW", "PHL", "LGA", "CLT", "EWR", "LAS", "MCO"),
}
_AIRLINES = {"train": ("HA", "SK"), "test": ("JX", "QT")}
_RES_HEAD = {"train": "ABCDEFGHJK", "test": "LMNPQRSTUV"}
_RES_TAIL = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


@dataclass
class _Flight:
    id: str
    org: str
    dst: str
    date: str
    dep: str
    price: dict[str, int]
    seats: dict[str, int]


@dataclass
class _Reservation:
    id: str
    flight: str
    org: str
    dst: str
    date: str
    cabin: str
    booked: str
    insured: bool
    bags: int
    status: str = "active"


@dataclass
class _Goal:
    kind: str  # "book", "cancel" or "bags"
    allowed: bool  # False: the policy forbids it (or no flight qualifies): the right move is no write
    status: str = "open"  # "open", "done" (achieved) or "spoiled" (a wrong write was aimed at it)
    org: str = ""
    dst: str = ""
    date: str = ""
    cabin: str = ""
    budget: int = 0
    pay: str = "any"  # book: "credit_card" or "any"
    res: str = ""
    bags: int = 0

    def route(self) -> str:
        return f"{self.org}-{self.dst}-{self.date}"


@dataclass
class _Task:
    now: str
    user: str
    name: str
    member: str
    payments: dict[str, dict[str, Any]]  # id -> {"kind": ..., "bal": ...}
    reservations: dict[str, _Reservation]
    user_res: list[str]
    flights: dict[str, _Flight]
    goals: list[_Goal]
    spare_ids: list[str]  # ids for new reservations
    user_read: bool = False
    searched: set[str] = field(default_factory=set)
    read: set[str] = field(default_factory=set)
    doomed: bool = False


class BookingEnv(ToolEnv):
    """An airline desk (see the module docstring). ``depth``: the number of user requests (default 3)."""

    family: ClassVar[str] = "booking"
    default_depth: ClassVar[int] = 3
    tools: ClassVar[tuple[Tool, ...]] = (
        Tool(
            "get_user",
            (Param("user_id", str, "user id"),),
            "A user's record: membership, payment methods, reservations.",
        ),
        Tool(
            "search_flights",
            (
                Param("origin", str, "airport code"),
                Param("destination", str, "airport code"),
                Param("date", str, "YYYY-MM-DD"),
            ),
            "Flights on a route and date, with the price and seats left per cabin.",
        ),
        Tool("get_reservation", (Param("reservation_id", str, "reservation id"),), "A reservation's details."),
        Tool(
            "book_flight",
            (
                Param("user_id", str, "user id"),
                Param("flight", str, "flight id"),
                Param("cabin", str, "basic_economy, economy or business"),
                Param("payment_id", str, "payment method id"),
            ),
            "Book a seat on a flight for the user, paid with one payment method.",
            write=True,
        ),
        Tool(
            "cancel_reservation",
            (Param("reservation_id", str, "reservation id"),),
            "Cancel a reservation.",
            write=True,
        ),
        Tool(
            "add_bags",
            (
                Param("reservation_id", str, "reservation id"),
                Param("bags", int, "number of checked bags to add"),
                Param("payment_id", str, "payment method id"),
            ),
            "Add checked bags to a reservation; the fee is charged to the payment method.",
            write=True,
        ),
    )

    @classmethod
    def default_max_steps(cls, depth: int) -> int:
        return 3 * depth + 4  # the user read + a read and a write per goal + the answer, with room to spare

    # ------------------------------------------------------------------ task
    def _new_task(self, rng: np.random.Generator, index: int) -> _Task:
        split = self.split
        now = dt.datetime(2024, 3, 1, 8) + dt.timedelta(days=int(rng.integers(200)), hours=int(rng.integers(10)))
        first, last = _pick(rng, _FIRST[split]), _pick(rng, _LAST[split])
        user = f"{first}_{last}_{int(rng.integers(1000, 10000))}"
        member = _pick(rng, ("regular", "silver", "gold"))
        digits = rng.choice(9000, size=3, replace=False) + 1000
        payments: dict[str, dict[str, Any]] = {f"cc_{digits[0]}": {"kind": "credit_card"}}
        payments[f"gc_{digits[1]}"] = {"kind": "gift_card", "bal": 10 * int(rng.integers(4, 50))}
        if rng.random() < 0.5:
            payments[f"cert_{digits[2]}"] = {"kind": "certificate", "bal": 10 * int(rng.integers(10, 40))}

        ids = _Ids(rng, split)
        airports = _AIRPORTS[split]
        used_pairs: set[frozenset[str]] = set()
        flights: dict[str, _Flight] = {}
        reservations: dict[str, _Reservation] = {}
        goals: list[_Goal] = []
        for i in range(self.depth):
            kind = _pick(rng, ("book", "cancel", "bags"), (0.4, 0.3, 0.3))
            allowed = i == 0 or rng.random() >= 0.3
            if kind == "book":
                goal = _book_goal(rng, now, airports, used_pairs, allowed, ids, flights)
            else:
                res = _goal_reservation(rng, now, airports, kind, allowed, ids)
                reservations[res.id] = res
                goal = _Goal(kind, allowed, res=res.id, bags=int(rng.integers(1, 4)) if kind == "bags" else 0)
            goals.append(goal)
        for _ in range(int(rng.integers(1, 3))):  # reservations no goal is about
            res = _reservation(rng, now, airports, ids, _pick(rng, _CABINS), int(rng.integers(1, 700)))
            reservations[res.id] = res
        user_res = list(reservations)
        rng.shuffle(user_res)
        spare = [ids.reservation() for _ in range(self.depth + 8)]
        return _Task(
            now.strftime(_FMT),
            user,
            f"{first.title()} {last.title()}",
            member,
            payments,
            reservations,
            user_res,
            flights,
            goals,
            spare,
        )

    def _prompt(self) -> str:
        task: _Task = self._state
        lines = [
            f"You are an airline desk agent. Now: {task.now}. Customer user id: {task.user}.",
            "The customer asks:",
        ]
        for n, g in enumerate(task.goals, 1):
            if g.kind == "book":
                pay = "pay with my credit card" if g.pay == "credit_card" else "pay with any of my payment methods"
                article = "an" if g.cabin[0] in "ae" else "a"
                lines.append(
                    f"{n}. Book {article} {g.cabin} flight from {g.org} to {g.dst} on {g.date}, "
                    f"costing at most ${g.budget}; {pay}."
                )
            elif g.kind == "cancel":
                lines.append(f"{n}. Cancel my reservation {g.res}.")
            else:
                lines.append(
                    f"{n}. Add {g.bags} checked bag{'s' if g.bags > 1 else ''} to my reservation {g.res}; "
                    "pay with any of my payment methods."
                )
        lines += [
            "Policy:",
            "- Book only the requested route, date and cabin, at a price within the budget; if no flight "
            "qualifies, book nothing.",
            "- A gift card or certificate pays only if it covers the whole amount. Certificates pay for "
            "flights only, never for bags.",
            "- A reservation may be cancelled only if it was booked less than 24 hours ago, or it is insured, "
            "or its cabin is business; otherwise do not cancel it.",
            f"- Bags: gold members get 2 free checked bags per reservation, silver 1, regular 0; each further "
            f"bag costs ${_BAG_FEE}. No bags may be added to a basic_economy reservation.",
            "- Do only what the customer asked; when the policy forbids a request, do not do it.",
            "When every request is handled, reply: answer done.",
        ]
        return "\n".join(lines)

    # ------------------------------------------------------------------ calls
    def _call(self, call: ToolCall, arguments: dict[str, Any]) -> CallOutcome:
        handler = {
            "get_user": self._get_user,
            "search_flights": self._search,
            "get_reservation": self._get_reservation,
            "book_flight": self._book,
            "cancel_reservation": self._cancel,
            "add_bags": self._add_bags,
        }[call.name]
        return handler(arguments)

    def _get_user(self, a: dict[str, Any]) -> CallOutcome:
        task: _Task = self._state
        if a["user_id"].strip() != task.user:
            return _error(f"unknown user {a['user_id']!r:.40}")
        pay = [
            {"id": pid, "kind": p["kind"], **({"bal": p["bal"]} if "bal" in p else {})}
            for pid, p in task.payments.items()
        ]
        record: dict[str, Any] = {
            "user": task.user,
            "name": task.name,
            "member": task.member,
            "pay": pay,
            "res": task.user_res,
        }
        if self._noisy():
            record["dob"] = f"19{int(self.np_random.integers(50, 100))}-0{int(self.np_random.integers(1, 10))}-15"
            record["phone"] = f"555-{int(self.np_random.integers(1000, 10000))}"
        label = CORRECT if not task.user_read and self._needs_user() else NEUTRAL
        task.user_read = True
        return CallOutcome(_json(record), label=label)

    def _search(self, a: dict[str, Any]) -> CallOutcome:
        task: _Task = self._state
        org, dst, date = a["origin"].strip().upper(), a["destination"].strip().upper(), a["date"].strip()
        key = f"{org}-{dst}-{date}"
        found = [f for f in task.flights.values() if (f.org, f.dst, f.date) == (org, dst, date)]
        rows: list[dict[str, Any]] = []
        for f in sorted(found, key=lambda f: f.dep):
            row: dict[str, Any] = {"flight": f.id, "dep": f.dep, "price": dict(f.price), "seats": dict(f.seats)}
            if self._noisy():
                row["aircraft"] = _pick_np(self.np_random, ("A320", "B737", "A321", "E175"))
            rows.append(row)
        needed = key not in task.searched and any(
            g.kind == "book" and g.status == "open" and g.route() == key for g in task.goals
        )
        task.searched.add(key)
        return CallOutcome(_json(rows), label=CORRECT if needed else NEUTRAL)

    def _reservation(self, a: dict[str, Any], *, active: bool = False) -> tuple[str, Any] | CallOutcome:
        """The reservation the call names (ids are case-insensitive), or the error result; with
        ``active``, a cancelled reservation is an error too (writes need an active one)."""
        rid = a["reservation_id"].strip().upper()
        res = self._state.reservations.get(rid)
        if res is None:
            return _error(f"unknown reservation {a['reservation_id']!r:.40}")
        if active and res.status != "active":
            return _error(f"reservation {rid} is cancelled")
        return rid, res

    def _get_reservation(self, a: dict[str, Any]) -> CallOutcome:
        task: _Task = self._state
        found = self._reservation(a)
        if isinstance(found, CallOutcome):
            return found
        rid, res = found
        record: dict[str, Any] = {
            "res": res.id,
            "flight": res.flight,
            "from": res.org,
            "to": res.dst,
            "date": res.date,
            "cabin": res.cabin,
            "booked": res.booked,
            "insured": res.insured,
            "bags": res.bags,
            "status": res.status,
        }
        if self._noisy():
            record["meal"] = _pick_np(self.np_random, ("standard", "vegetarian", "none"))
            record["seat"] = f"{int(self.np_random.integers(1, 40))}{_pick_np(self.np_random, ('A', 'C', 'D', 'F'))}"
        needed = rid not in task.read and any(
            g.kind != "book" and g.status == "open" and g.res == rid for g in task.goals
        )
        task.read.add(rid)
        return CallOutcome(_json(record), label=CORRECT if needed else NEUTRAL)

    def _pay(self, pid: str, amount: int, what: str) -> str | None:
        """Charge a payment method (None) or say why the system refuses (nothing changes then)."""
        task: _Task = self._state
        p = task.payments.get(pid)
        if p is None:
            return f"unknown payment method {pid!r:.40} for user {task.user}"
        if p["kind"] != "credit_card" and p["bal"] < amount:
            return f"{p['kind']} {pid} has {p['bal']}, not enough for {what} (${amount})"
        if p["kind"] == "gift_card":
            p["bal"] -= amount
        elif p["kind"] == "certificate":
            del task.payments[pid]  # a certificate is used once
        return None

    def _book(self, a: dict[str, Any]) -> CallOutcome:
        task: _Task = self._state
        if a["user_id"].strip() != task.user:
            return _error(f"unknown user {a['user_id']!r:.40}")
        f = task.flights.get(a["flight"].strip().upper())
        if f is None:
            return _error(f"unknown flight {a['flight']!r:.40}")
        cabin = a["cabin"].strip().lower()
        if cabin not in _CABINS:
            return _error(f"unknown cabin {a['cabin']!r:.40}; cabins: {', '.join(_CABINS)}")
        if f.seats[cabin] < 1:
            return _error(f"no {cabin} seats left on {f.id}")
        pid = a["payment_id"].strip()
        kind = task.payments.get(pid, {"kind": ""})["kind"]
        price = f.price[cabin]
        why = self._pay(pid, price, f"flight {f.id}")
        if why is not None:
            return _error(why)
        f.seats[cabin] -= 1
        rid = task.spare_ids.pop(0)
        task.reservations[rid] = _Reservation(rid, f.id, f.org, f.dst, f.date, cabin, task.now, False, 0)
        task.user_res.append(rid)
        result = _json({"res": rid, "flight": f.id, "cabin": cabin, "price": price, "paid": pid})
        for g in task.goals:  # the open booking goal on this route (any date) is what the write was for
            if g.kind == "book" and g.status == "open" and (g.org, g.dst) == (f.org, f.dst):
                ok = (
                    g.allowed
                    and f.date == g.date
                    and cabin == g.cabin
                    and price <= g.budget
                    and (g.pay == "any" or kind == "credit_card")
                )
                g.status = "done" if ok else "spoiled"
                if ok:
                    return CallOutcome(result, label=CORRECT)
                break
        task.doomed = True
        return CallOutcome(result, label=WRONG)

    def _cancel(self, a: dict[str, Any]) -> CallOutcome:
        task: _Task = self._state
        found = self._reservation(a, active=True)
        if isinstance(found, CallOutcome):
            return found
        rid, res = found
        res.status = "cancelled"
        result = _json({"res": rid, "status": "cancelled", "refund": "to the original payment"})
        label = WRONG
        for g in task.goals:
            if g.res == rid and g.status == "open":
                ok = g.kind == "cancel" and g.allowed
                g.status = "done" if ok else "spoiled"  # a cancelled bags reservation spoils that goal too
                label = CORRECT if ok else WRONG
        task.doomed = task.doomed or label == WRONG
        return CallOutcome(result, label=label)

    def _add_bags(self, a: dict[str, Any]) -> CallOutcome:
        task: _Task = self._state
        found = self._reservation(a, active=True)
        if isinstance(found, CallOutcome):
            return found
        rid, res = found
        bags = a["bags"]
        if not 1 <= bags <= _MAX_BAGS - res.bags:
            return _error(f"bags must be between 1 and {_MAX_BAGS - res.bags} for {rid}")
        pid = a["payment_id"].strip()
        kind = task.payments.get(pid, {"kind": ""})["kind"]
        fee = self._fee(res, bags)
        why = self._pay(pid, fee, f"{bags} bags")
        if why is not None:
            return _error(why)
        res.bags += bags
        result = _json({"res": rid, "bags": res.bags, "charged": fee, "paid": pid})
        for g in task.goals:
            if g.kind == "bags" and g.status == "open" and g.res == rid:
                ok = g.allowed and bags == g.bags and kind != "certificate"
                g.status = "done" if ok else "spoiled"
                if ok:
                    return CallOutcome(result, label=CORRECT)
                break
        task.doomed = True
        return CallOutcome(result, label=WRONG)

    def _answer(self, answer: str) -> tuple[bool, int]:
        task: _Task = self._state
        if task.doomed:
            return False, NEUTRAL
        if all(g.status == "done" for g in task.goals if g.allowed):
            return True, CORRECT
        return False, WRONG

    # ------------------------------------------------------------------ helpers
    def _fee(self, res: _Reservation, bags: int) -> int:
        free = _ALLOWANCE[self._state.member]
        return _BAG_FEE * (max(0, res.bags + bags - free) - max(0, res.bags - free))

    def _noisy(self) -> bool:
        return bool(self.noise) and bool(self.np_random.random() < self.noise)

    def _needs_user(self) -> bool:
        """The user record (payment ids) is needed while an achievable booking or bags goal is open."""
        return any(g.status == "open" and g.allowed and g.kind in ("book", "bags") for g in self._state.goals)

    def _valid_flights(self, g: _Goal) -> list[_Flight]:
        task: _Task = self._state
        return [
            f
            for f in task.flights.values()
            if (f.org, f.dst, f.date) == (g.org, g.dst, g.date)
            and f.price[g.cabin] <= g.budget
            and f.seats[g.cabin] > 0
        ]

    def _covers(self, amount: int, *, certificate: bool = True) -> list[str]:
        """The user's payment methods that cover ``amount`` (the credit card always does)."""
        task: _Task = self._state
        return [
            pid
            for pid, p in task.payments.items()
            if p["kind"] == "credit_card" or (p["bal"] >= amount and (certificate or p["kind"] != "certificate"))
        ]

    def _credit_card(self) -> str:
        task: _Task = self._state
        return next(pid for pid, p in task.payments.items() if p["kind"] == "credit_card")

    def _goal_next(self, g: _Goal) -> list[str]:
        """The correct next actions for one goal ([] once it needs nothing more)."""
        task: _Task = self._state
        if g.status != "open":
            return []
        if g.kind == "book":
            if g.route() not in task.searched:
                return [self.call_text("search_flights", origin=g.org, destination=g.dst, date=g.date)]
            if not g.allowed or not task.user_read:  # the user read is listed once, first
                return []
            out = []
            for f in self._valid_flights(g):
                pids = [self._credit_card()] if g.pay == "credit_card" else self._covers(f.price[g.cabin])
                out += [
                    self.call_text("book_flight", user_id=task.user, flight=f.id, cabin=g.cabin, payment_id=p)
                    for p in pids
                ]
            return out
        if g.res not in task.read:
            return [self.call_text("get_reservation", reservation_id=g.res)]
        res = task.reservations[g.res]
        if not g.allowed or res.status != "active":
            return []
        if g.kind == "cancel":
            return [self.call_text("cancel_reservation", reservation_id=g.res)]
        if not task.user_read:
            return []
        fee = self._fee(res, g.bags)
        return [
            self.call_text("add_bags", reservation_id=g.res, bags=g.bags, payment_id=p)
            for p in self._covers(fee, certificate=False)
        ]

    def _expert(self) -> list[str]:
        task: _Task = self._state
        out = [self.call_text("get_user", user_id=task.user)] if not task.user_read and self._needs_user() else []
        for g in task.goals:
            out += [a for a in self._goal_next(g) if a not in out]
        return out or ["answer done"]

    def _mistakes(self) -> list[tuple[str, str]]:
        task: _Task = self._state
        out: list[tuple[str, str]] = []
        if task.user_read:  # every wrong write below names a payment id or a reservation from the record
            cc = self._credit_card()
            for g in task.goals:
                out += self._goal_mistakes(g, cc)
            goal_res = {g.res for g in task.goals}
            extra = [r for r in task.user_res if r not in goal_res and task.reservations[r].status == "active"]
            if extra:
                out.append(("extra_write", self.call_text("cancel_reservation", reservation_id=extra[0])))
        if not task.doomed and any(g.allowed and g.status == "open" for g in task.goals):
            out.append(("premature_answer", "answer done"))
        return out

    def _goal_mistakes(self, g: _Goal, cc: str) -> list[tuple[str, str]]:
        task: _Task = self._state

        def book(f: _Flight, cabin: str, pid: str) -> str:
            return self.call_text("book_flight", user_id=task.user, flight=f.id, cabin=cabin, payment_id=pid)

        out: list[tuple[str, str]] = []
        if g.kind == "book":
            if g.route() not in task.searched:
                return out
            valid = self._valid_flights(g)
            if g.status == "done":
                if valid:
                    out.append(("duplicate_booking", book(valid[0], g.cabin, cc)))
                return out
            if g.status != "open":
                return out
            same = [f for f in task.flights.values() if (f.org, f.dst) == (g.org, g.dst)]
            over = [f for f in same if f.date == g.date and f.price[g.cabin] > g.budget and f.seats[g.cabin] > 0]
            if over:
                out.append(("over_budget", book(over[0], g.cabin, cc)))
            later = [f for f in same if f.date > g.date and f.price[g.cabin] <= g.budget and f.seats[g.cabin] > 0]
            if later:
                out.append(("wrong_date", book(later[0], g.cabin, cc)))
            if valid:
                other = "economy" if g.cabin != "economy" else "basic_economy"
                if valid[0].seats[other] > 0:
                    out.append(("wrong_cabin", book(valid[0], other, cc)))
                if g.pay == "credit_card":
                    for f in valid:
                        pids = [p for p in self._covers(f.price[g.cabin]) if p != cc]
                        if pids:
                            out.append(("wrong_payment", book(f, g.cabin, pids[0])))
                            break
            return out
        if g.status != "open" or g.res not in task.read or task.reservations[g.res].status != "active":
            return out
        if g.kind == "cancel":
            if not g.allowed:
                out.append(("forbidden_cancel", self.call_text("cancel_reservation", reservation_id=g.res)))
            return out
        if not g.allowed:
            out.append(("forbidden_bags", self.call_text("add_bags", reservation_id=g.res, bags=g.bags, payment_id=cc)))
            return out
        out.append(("wrong_count", self.call_text("add_bags", reservation_id=g.res, bags=g.bags + 1, payment_id=cc)))
        fee = self._fee(task.reservations[g.res], g.bags)
        certs = [p for p in self._covers(fee) if task.payments[p]["kind"] == "certificate"]
        if certs:
            out.append(
                ("wrong_payment", self.call_text("add_bags", reservation_id=g.res, bags=g.bags, payment_id=certs[0]))
            )
        return out

    def _progress(self) -> str:
        task: _Task = self._state
        return _json(
            {
                "u": task.user_read,
                "s": sorted(task.searched),
                "r": sorted(task.read),
                "g": [g.status for g in task.goals],
                "d": task.doomed,
                "p": {pid: p.get("bal") for pid, p in task.payments.items()},
                "res": {r.id: [r.status, r.bags] for r in task.reservations.values()},
                "seats": {f.id: f.seats for f in task.flights.values()},
            }
        )


# ---------------------------------------------------------------------- generation helpers
class _Ids:
    """Unique flight and reservation ids from the split's pools."""

    def __init__(self, rng: np.random.Generator, split: str) -> None:
        self.rng, self.split = rng, split
        self.used: set[str] = set()

    def _unique(self, make: Any) -> str:
        while True:
            x: str = make()
            if x not in self.used:
                self.used.add(x)
                return x

    def flight(self) -> str:
        return self._unique(lambda: _pick(self.rng, _AIRLINES[self.split]) + str(int(self.rng.integers(100, 1000))))

    def reservation(self) -> str:
        def make() -> str:
            head = _RES_HEAD[self.split][int(self.rng.integers(len(_RES_HEAD[self.split])))]
            return head + "".join(_RES_TAIL[int(i)] for i in self.rng.integers(len(_RES_TAIL), size=5))

        return self._unique(make)


def _book_goal(
    rng: np.random.Generator,
    now: dt.datetime,
    airports: tuple[str, ...],
    used_pairs: set[frozenset[str]],
    allowed: bool,
    ids: _Ids,
    flights: dict[str, _Flight],
) -> _Goal:
    while True:
        org, dst = (str(x) for x in rng.choice(airports, size=2, replace=False))
        if frozenset((org, dst)) not in used_pairs:
            used_pairs.add(frozenset((org, dst)))
            break
    day = (now + dt.timedelta(days=int(rng.integers(2, 40)))).date()
    date, next_day = day.isoformat(), (day + dt.timedelta(days=1)).isoformat()
    cabin = _pick(rng, _CABINS, (0.15, 0.6, 0.25))
    scale = {"basic_economy": 1.0, "economy": 1.6, "business": 4.0}[cabin]
    budget = 10 * round(50 * int(rng.integers(3, 9)) * scale / 10)
    pay = "credit_card" if rng.random() < 0.35 else "any"

    def within() -> int:
        return int(rng.integers(budget // 2, budget + 1))

    def above() -> int:
        return int(rng.integers(budget + 10, budget * 17 // 10))

    # (target price in the requested cabin, seats there, origin, destination, date)
    specs: list[tuple[int, int, str, str, str]] = []
    for _ in range(int(rng.integers(2, 4)) if allowed else 0):
        specs.append((within(), int(rng.integers(1, 10)), org, dst, date))
    for _ in range(int(rng.integers(1, 3)) if allowed else int(rng.integers(2, 4))):
        specs.append((above(), int(rng.integers(1, 10)), org, dst, date))
    if rng.random() < (0.3 if allowed else 0.6):
        specs.append((within(), 0, org, dst, date))  # qualifies on price but is full
    specs.append((within(), int(rng.integers(1, 10)), org, dst, next_day))  # the next day's flight
    specs.append((within(), int(rng.integers(1, 10)), dst, org, date))  # the way back
    hours = rng.choice(np.arange(6, 22), size=len(specs), replace=False)
    for (target, seats, o, d, day_s), hour in zip(specs, hours, strict=True):
        ratio = {
            "basic_economy": float(rng.uniform(0.55, 0.75)),
            "economy": 1.0,
            "business": float(rng.uniform(2.5, 3.5)),
        }
        eco = target / ratio[cabin]
        price = {c: max(20, round(eco * ratio[c])) for c in _CABINS}
        price[cabin] = target
        seat_map = {c: int(rng.integers(1, 10)) for c in _CABINS}
        seat_map[cabin] = seats
        fid = ids.flight()
        flights[fid] = _Flight(
            fid, o, d, day_s, f"{int(hour):02d}:{_pick(rng, ('00', '15', '30', '45'))}", price, seat_map
        )
    return _Goal("book", allowed, org=org, dst=dst, date=date, cabin=cabin, budget=budget, pay=pay)


def _goal_reservation(
    rng: np.random.Generator, now: dt.datetime, airports: tuple[str, ...], kind: str, allowed: bool, ids: _Ids
) -> _Reservation:
    old = int(rng.integers(30, 700))
    if kind == "cancel":
        if not allowed:
            return _reservation(rng, now, airports, ids, _pick(rng, _CABINS[:2]), old, insured=False)
        why = _pick(rng, ("recent", "insured", "business"))
        if why == "recent":
            return _reservation(rng, now, airports, ids, _pick(rng, _CABINS), int(rng.integers(1, 23)))
        if why == "insured":
            return _reservation(rng, now, airports, ids, _pick(rng, _CABINS[:2]), old, insured=True)
        return _reservation(rng, now, airports, ids, "business", old, insured=False)
    cabin = _pick(rng, _CABINS[1:]) if allowed else "basic_economy"
    return _reservation(rng, now, airports, ids, cabin, int(rng.integers(1, 700)), bags=int(rng.integers(0, 3)))


def _reservation(
    rng: np.random.Generator,
    now: dt.datetime,
    airports: tuple[str, ...],
    ids: _Ids,
    cabin: str,
    hours_ago: int,
    *,
    insured: bool | None = None,
    bags: int | None = None,
) -> _Reservation:
    org, dst = (str(x) for x in rng.choice(airports, size=2, replace=False))
    date = (now + dt.timedelta(days=int(rng.integers(3, 60)))).date().isoformat()
    booked = (now - dt.timedelta(hours=hours_ago, minutes=int(rng.integers(60)))).strftime(_FMT)
    return _Reservation(
        ids.reservation(),
        ids.flight(),
        org,
        dst,
        date,
        cabin,
        booked,
        bool(rng.random() < 0.4) if insured is None else insured,
        int(rng.integers(0, 3)) if bags is None else bags,
    )


def _pick(rng: np.random.Generator, options: tuple[str, ...], p: tuple[float, ...] | None = None) -> str:
    return options[int(rng.choice(len(options), p=p))]


def _pick_np(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _json(x: Any) -> str:
    return json.dumps(x, separators=(",", ":"))


def _error(message: str) -> CallOutcome:
    return CallOutcome(f"Error: {message}", ok=False, label=NEUTRAL)
