"""Lookup joins: questions over a small users -> orders -> products database, answered hop by hop.

Each task is a small in-memory shop database (four users, their orders, a product catalog) and one
question about one user, e.g. "What is the total price of the items in Ann Lee's most recent order?".
The read-only tools are ``find_user(name)`` (id, name, city), ``list_orders(user_id)`` (the user's
orders: id, date, status), ``get_order(order_id)`` (its items: product id ``p`` and quantity ``qty``)
and ``get_product(product_id)`` (name, unit price, category). The agent must chain them —
``find_user`` -> ``list_orders`` -> ``get_order`` of the order(s) the question selects -> ``get_product``
of each of their products — and then ``answer`` a number or a product name.

Question templates (drawn per task): the total price (quantity x unit price, summed) of the most
recent order; the product with the highest unit price in the user's (only) delivered order; the number
of items (sum of quantities) in a category in the most recent order; the number of items across all
delivered orders (no product reads); the total spent on all delivered orders.

**depth** is how many entities the answer needs beyond the user and the order list: the number of
distinct products of the selected order (product questions on one order; spending across delivered
orders: distinct products over one or two orders), or the number of delivered orders to scan (item
counts). The order reads and product reads may happen in any order (interleaved, once the order that
holds a product is read), so a task has several valid solutions: ``depth!`` orders for a one-order
question (e.g. 6 at depth 3), more when orders and products interleave.

**Distractors in the data.** Two other users have names similar to the asked one ("Anne Lee",
"Ann Leigh" next to "Ann Lee"), and a fourth user is unrelated; every user has orders shaped like the
asked user's; the asked user also has orders the question excludes (older ones, cancelled, pending,
returned). With ``noise`` a result carries irrelevant extra records or fields (similarly named users
with their ids, a wish list of product ids, shipping fields, stock and ratings).

**What the agent knows.** The environment tracks the agent's *beliefs*: which user it takes for the
asked one, which order lists it has seen, which orders it has picked (the one a one-order question
selects, or every order it read for an across-orders question) and which entities it has read. The
``expert`` continues from those beliefs: after reading a wrong entity it carries on with that entity's
chain (after fetching an older order, it looks up that order's products and answers their total),
and answers what the beliefs give — so a run with one mistake fails.

**Labelling rules** (per call, then per step as ``ToolEnv`` says):

* **+1** a read that fetches an entity the answer needs (the asked user, their order list, a selected
  order, a product of a selected order), the first time; the correct answer;
* **0** a redundant re-read; a read of an unrelated entity that nothing depends on (another user once
  the asked one is found, another user's orders once the asked user's list is read, a product that is
  not needed, the order of an unrelated user, an excluded order once the selected one is held); a read
  that follows from the agent's own earlier wrong read (the orders, order and products of a wrong user;
  the products of a wrong order) — the mistake is labelled where it was made; an errored call (unknown
  name or id, bad arguments); a distractor tool;
* **−1** a read of a *wrong* entity in place of a needed one, which the agent then relies on:
  ``find_user`` of another (e.g. similarly named) user while the asked one is not yet found;
  ``list_orders`` of another user while the asked user's list is not yet read; ``get_order`` of an
  order the question excludes (an older, cancelled, ... order of the user) while the selected order is
  not yet held — for an across-orders question, any excluded order, which the agent adds to its
  tally; a wrong answer.

Mistake kinds offered to scripted policies (each is labelled −1 and dooms the run):
``wrong_user`` (``find_user`` of a similarly named user), ``wrong_order`` (``get_order`` of an order
the question excludes), ``skip_item`` (answer without one item: with one product — or, for item
counts, one order — still unread, or dropping the last one), ``arithmetic`` (a numeric answer off by
1–3), ``wrong_pick`` (the name of the second most expensive product instead of the most expensive).
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from stepcredit.envs.actions import ToolCall, format_call
from stepcredit.envs.base import CORRECT, NEUTRAL, WRONG, CallOutcome, Param, Tool, ToolEnv

__all__ = ["LookupEnv"]

MAX_DEPTH = 50

# Name pools, disjoint between the splits (held-out tasks use unseen entities). Each group holds three
# similar names: the asked user and the two similarly named distractors share groups.
_FIRST: dict[str, tuple[tuple[str, str, str], ...]] = {
    "train": (
        ("Ann", "Anne", "Anna"),
        ("Jon", "John", "Joan"),
        ("Mark", "Marc", "Marco"),
        ("Sara", "Sarah", "Zara"),
        ("Eric", "Erik", "Erika"),
        ("Lucy", "Lucie", "Luce"),
    ),
    "test": (
        ("Kate", "Katie", "Cate"),
        ("Alan", "Allan", "Alana"),
        ("Nina", "Nia", "Nena"),
        ("Carl", "Karl", "Carla"),
        ("Rosa", "Rose", "Rosie"),
        ("Dean", "Dena", "Deane"),
    ),
}
_LAST: dict[str, tuple[tuple[str, str, str], ...]] = {
    "train": (
        ("Lee", "Leigh", "Li"),
        ("Park", "Parks", "Parker"),
        ("Gray", "Grey", "Graye"),
        ("Moss", "Morse", "Mossman"),
        ("Hall", "Hale", "Halle"),
    ),
    "test": (
        ("Stone", "Stoner", "Stein"),
        ("Fox", "Foxx", "Fuchs"),
        ("Hart", "Harte", "Hardt"),
        ("Webb", "Webber", "Weber"),
        ("Burns", "Byrne", "Burn"),
    ),
}
_ADJ: dict[str, tuple[str, ...]] = {
    "train": ("Blue", "Steel", "Oak", "Mini", "Classic", "Bright", "Soft", "Swift", "Royal", "Urban"),
    "test": ("Red", "Copper", "Pine", "Mega", "Retro", "Silent", "Rough", "Prime", "Polar", "Rustic"),
}
_NOUN: dict[str, tuple[str, ...]] = {
    "train": ("Kettle", "Lamp", "Mug", "Chair", "Pen", "Rug", "Clock", "Vase", "Blender", "Scarf", "Tent", "Drone"),
    "test": ("Toaster", "Desk", "Bowl", "Stool", "Pencil", "Mat", "Radio", "Jar", "Mixer", "Glove", "Kite", "Sled"),
}
# id ranges (low, high) per split: users, orders, products
_IDS: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = {
    "train": ((100, 500), (1000, 5000), (100, 500)),
    "test": ((500, 900), (5000, 9000), (500, 900)),
}
_CITIES = ("Lisbon", "Oslo", "Quito", "Hanoi", "Perth", "Cairo", "Lima", "Tunis", "Riga", "Accra")
_CATEGORIES = ("kitchen", "garden", "office", "toys", "books", "sports")
_EPOCH = datetime.date(2023, 1, 1)

# kind -> (which orders the question selects, how the answer aggregates them, question text)
_KINDS: dict[str, tuple[str, str, str]] = {
    "total_recent": (
        "recent",
        "total",
        "What is the total price (quantity x unit price, summed over the items) of {name}'s most recent order?",
    ),
    "priciest_delivered": (
        "delivered_one",
        "name",
        "Which product in {name}'s delivered order has the highest unit price? Answer with the product name.",
    ),
    "category_recent": (
        "recent",
        "category",
        "How many items (sum of quantities) in {name}'s most recent order are in the {category} category?",
    ),
    "items_delivered": (
        "delivered_all",
        "qty",
        "How many items (sum of quantities) did {name} receive in total across all of their delivered orders?",
    ),
    "spend_delivered": (
        "delivered_all",
        "total",
        "How much did {name} spend in total (quantity x unit price, summed) on all of their delivered orders?",
    ),
}
_KIND_NAMES = tuple(_KINDS)

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class _User:
    id: str
    name: str
    city: str
    since: int
    similar: list[str]  # ids of the similarly named users


@dataclass
class _Order:
    id: str
    user: str
    date: str
    status: str
    items: list[tuple[str, int]]  # (product id, quantity)


@dataclass
class _Product:
    id: str
    name: str
    price: int
    category: str


@dataclass
class _Task:
    kind: str
    select: str  # "recent" | "delivered_one" | "delivered_all"
    agg: str  # "total" | "name" | "category" | "qty"
    category: str
    question: str
    target: str  # the asked user's id
    users: dict[str, _User]
    orders: dict[str, _Order]
    products: dict[str, _Product]
    lists: dict[str, list[str]]  # user id -> order ids, as list_orders shows them
    selected: dict[str, list[str]]  # user id -> the orders the question selects for that user
    needed: set[str]  # entity keys the answer needs ("u:", "l:", "o:", "p:" + id)
    answer: str
    # the agent's beliefs and knowledge (mutable)
    user: str | None = None  # the user the agent takes for the asked one
    seen: set[str] = field(default_factory=set)  # every entity key read successfully
    picked: dict[str, list[str]] = field(default_factory=dict)  # user id -> orders the agent relies on


class LookupEnv(ToolEnv):
    """Lookup joins over users -> orders -> products (see the module docstring).

    ``depth``: products (or delivered orders) the answer needs, 1..50 (default 3). ``max_steps``
    defaults to ``2 * depth + 8``: room for one wrong read and the expert's continuation to the answer.
    """

    family: ClassVar[str] = "lookup"
    default_depth: ClassVar[int] = 3
    tools: ClassVar[tuple[Tool, ...]] = (
        Tool("find_user", (Param("name", str, "the user's full name"),), "Find a user by full name: id, name, city."),
        Tool("list_orders", (Param("user_id", str, "a user id, e.g. u123"),), "A user's orders: id, date, status."),
        Tool(
            "get_order",
            (Param("order_id", str, "an order id, e.g. o1234"),),
            "An order's items: product id p and quantity qty.",
        ),
        Tool(
            "get_product",
            (Param("product_id", str, "a product id, e.g. p123"),),
            "A product: name, unit price, category.",
        ),
    )

    max_depth: ClassVar[int] = MAX_DEPTH

    @classmethod
    def default_max_steps(cls, depth: int) -> int:
        return 2 * depth + 8  # one wrong read plus the expert's continuation still reaches an answer

    # ------------------------------------------------------------------ task
    def _new_task(self, rng: np.random.Generator, index: int) -> _Task:
        split, depth = self.split, self.depth
        kind = _KIND_NAMES[int(rng.integers(len(_KIND_NAMES)))]
        select, agg, template = _KINDS[kind]
        (ulo, uhi), (olo, ohi), (plo, phi) = _IDS[split]

        # users: the asked one, two similarly named ones, an unrelated one
        firsts, lasts = _FIRST[split], _LAST[split]
        gi, gj = int(rng.integers(len(firsts))), int(rng.integers(len(lasts)))
        fi, lj = int(rng.integers(3)), int(rng.integers(3))
        f_alt, l_alt = (fi + 1 + int(rng.integers(2))) % 3, (lj + 1 + int(rng.integers(2))) % 3
        go = (gi + 1 + int(rng.integers(len(firsts) - 1))) % len(firsts)
        lo = (gj + 1 + int(rng.integers(len(lasts) - 1))) % len(lasts)
        names = [
            f"{firsts[gi][fi]} {lasts[gj][lj]}",
            f"{firsts[gi][f_alt]} {lasts[gj][lj]}",
            f"{firsts[gi][fi]} {lasts[gj][l_alt]}",
            f"{firsts[go][int(rng.integers(3))]} {lasts[lo][int(rng.integers(3))]}",
        ]
        uids = [f"u{int(x)}" for x in rng.choice(np.arange(ulo, uhi), size=4, replace=False)]
        users: dict[str, _User] = {}
        for k, (uid, name) in enumerate(zip(uids, names, strict=True)):
            similar = [uids[j] for j in range(3) if j != k] if k < 3 else []
            city = _CITIES[int(rng.integers(len(_CITIES)))]
            users[uid] = _User(uid, name, city, int(rng.integers(2015, 2025)), similar)
        target = uids[0]

        # catalog
        n_products = depth + 5
        adj, noun = _ADJ[split], _NOUN[split]
        name_idx = rng.choice(len(adj) * len(noun), size=n_products, replace=False)
        pids = [f"p{int(x)}" for x in rng.choice(np.arange(plo, phi), size=n_products, replace=False)]
        prices = rng.choice(np.arange(3, 200), size=n_products, replace=False)
        products = {
            pid: _Product(
                pid,
                f"{adj[int(i) // len(noun)]} {noun[int(i) % len(noun)]}",
                int(price),
                _CATEGORIES[int(rng.integers(len(_CATEGORIES)))],
            )
            for pid, i, price in zip(pids, name_idx, prices, strict=True)
        }

        # orders: every user's orders have the asked user's shape (so a wrong user's chain is alike)
        shapes = {uid: _shape(rng, select, agg, depth, pids) for uid in uids}
        n_orders = sum(len(s) for s in shapes.values())
        oids = [f"o{int(x)}" for x in rng.choice(np.arange(olo, ohi), size=n_orders, replace=False)]
        orders: dict[str, _Order] = {}
        lists: dict[str, list[str]] = {}
        selected: dict[str, list[str]] = {}
        k = 0
        for uid in uids:
            shape = shapes[uid]
            days = sorted(int(x) for x in rng.choice(700, size=len(shape), replace=False))
            if select == "recent":  # the selected order (listed first in the shape) is the latest
                order_days = [days[-1], *(days[j] for j in rng.permutation(len(days) - 1))]
            else:
                order_days = [days[j] for j in rng.permutation(len(days))]
            mine = []
            for (is_sel, status, items), day in zip(shape, order_days, strict=True):
                oid = oids[k]
                k += 1
                date = (_EPOCH + datetime.timedelta(days=day)).isoformat()
                orders[oid] = _Order(oid, uid, date, status, items)
                mine.append((oid, is_sel))
            selected[uid] = [oid for oid, is_sel in mine if is_sel]
            lists[uid] = [mine[j][0] for j in rng.permutation(len(mine))]

        category = ""
        if agg == "category":
            first = orders[selected[target][0]].items
            category = products[first[int(rng.integers(len(first)))][0]].category

        task = _Task(
            kind=kind,
            select=select,
            agg=agg,
            category=category,
            question=template.format(name=users[target].name, category=category),
            target=target,
            users=users,
            orders=orders,
            products=products,
            lists=lists,
            selected=selected,
            needed=set(),
            answer="",
        )
        _separate(task, rng)
        truth = _value(task, _lines(task, task.selected[target]))
        assert truth is not None
        task.answer = str(truth)
        task.needed = {f"u:{target}", f"l:{target}"} | {f"o:{o}" for o in selected[target]}
        if agg != "qty":
            task.needed |= {f"p:{p}" for o in selected[target] for p, _ in orders[o].items}
        return task

    def _prompt(self) -> str:
        task: _Task = self._state
        return (
            f"{task.question} Look the data up with the tools (ids come from tool results), "
            "then reply with: answer <value>."
        )

    # ------------------------------------------------------------------ calls
    def _call(self, call: ToolCall, arguments: dict[str, Any]) -> CallOutcome:
        task: _Task = self._state
        if call.name == "find_user":
            query = " ".join(arguments["name"].split()).lower()
            uid = next((u.id for u in task.users.values() if u.name.lower() == query), None)
            if uid is None:
                return CallOutcome(f"Error: no user named {arguments['name']!r:.60}", ok=False, label=NEUTRAL)
            return CallOutcome(self._user_text(uid), label=self._read_user(uid))
        if call.name == "list_orders":
            uid = _norm_id(arguments["user_id"], "u")
            if uid not in task.users:
                return CallOutcome(f"Error: no user with id {arguments['user_id']!r:.40}", ok=False, label=NEUTRAL)
            return CallOutcome(self._list_text(uid), label=self._read_list(uid))
        if call.name == "get_order":
            oid = _norm_id(arguments["order_id"], "o")
            if oid not in task.orders:
                return CallOutcome(f"Error: no order with id {arguments['order_id']!r:.40}", ok=False, label=NEUTRAL)
            return CallOutcome(self._order_text(oid), label=self._read_order(oid))
        pid = _norm_id(arguments["product_id"], "p")
        if pid not in task.products:
            return CallOutcome(f"Error: no product with id {arguments['product_id']!r:.40}", ok=False, label=NEUTRAL)
        return CallOutcome(self._product_text(pid), label=self._read_product(pid))

    def _read_user(self, uid: str) -> int:
        task: _Task = self._state
        first = f"u:{uid}" not in task.seen
        task.seen.add(f"u:{uid}")
        if uid == task.target:  # the asked user: the agent holds the right one now
            task.user = uid
            return CORRECT if first else NEUTRAL
        if not first or uid == task.user or task.user == task.target:
            return NEUTRAL  # a re-read, the agent's own (wrong) belief, or unrelated once the user is found
        task.user = uid  # another user taken for the asked one
        return WRONG

    def _read_list(self, uid: str) -> int:
        task: _Task = self._state
        first = f"l:{uid}" not in task.seen
        task.seen.add(f"l:{uid}")
        if uid == task.target:
            task.user = uid
            return CORRECT if first else NEUTRAL
        if not first or uid == task.user or (task.user == task.target and f"l:{task.target}" in task.seen):
            return NEUTRAL
        task.user = uid  # another user's orders read in place of the asked user's
        return WRONG

    def _read_order(self, oid: str) -> int:
        task: _Task = self._state
        first = f"o:{oid}" not in task.seen
        task.seen.add(f"o:{oid}")
        owner = task.orders[oid].user
        if oid in task.selected[task.target]:  # a selected order of the asked user
            self._pick(owner, oid)
            return CORRECT if first else NEUTRAL
        if owner not in (task.user, task.target):
            return NEUTRAL  # an unrelated user's order
        if oid in task.selected[owner]:  # what the agent's (wrong) user belief calls for
            self._pick(owner, oid)
            return NEUTRAL
        if not first:
            return NEUTRAL
        held = task.picked.get(owner, [])
        if task.select != "delivered_all" and held and held[0] in task.selected[owner]:
            return NEUTRAL  # the selected order is held already: nothing depends on this one
        self._pick(owner, oid)  # an excluded order relied on in place of (or on top of) the selected
        return WRONG

    def _read_product(self, pid: str) -> int:
        task: _Task = self._state
        first = f"p:{pid}" not in task.seen
        task.seen.add(f"p:{pid}")
        return CORRECT if first and f"p:{pid}" in task.needed else NEUTRAL

    def _pick(self, owner: str, oid: str) -> None:
        task: _Task = self._state
        if task.select != "delivered_all":
            task.picked[owner] = [oid]
        elif oid not in task.picked.setdefault(owner, []):
            task.picked[owner].append(oid)

    def _answer(self, answer: str) -> tuple[bool, int]:
        ok = _same_answer(self._state, answer, self._state.answer)
        return ok, CORRECT if ok else WRONG

    def _reference(self) -> str:
        return str(self._state.answer)

    # ------------------------------------------------------------------ results
    def _noisy(self) -> bool:
        return bool(self.noise) and float(self.np_random.random()) < self.noise

    def _user_text(self, uid: str) -> str:
        task: _Task = self._state
        u = task.users[uid]
        out: dict[str, Any] = {"id": u.id, "name": u.name, "city": u.city, "since": u.since}
        if self._noisy() and u.similar:
            out["similar"] = [{"id": s, "name": task.users[s].name} for s in u.similar]
        return _json(out)

    def _list_text(self, uid: str) -> str:
        task: _Task = self._state
        rows = [{"id": o, "date": task.orders[o].date, "status": task.orders[o].status} for o in task.lists[uid]]
        out: dict[str, Any] = {"user": uid, "orders": rows}
        if self._noisy():
            pids = sorted(task.products)
            pick = self.np_random.choice(len(pids), size=min(2, len(pids)), replace=False)
            out["wishlist"] = [{"p": pids[int(i)], "name": task.products[pids[int(i)]].name} for i in pick]
        return _json(out)

    def _order_text(self, oid: str) -> str:
        task: _Task = self._state
        o = task.orders[oid]
        out: dict[str, Any] = {
            "id": o.id,
            "user": o.user,
            "date": o.date,
            "status": o.status,
            "items": [{"p": p, "qty": q} for p, q in o.items],
        }
        if self._noisy():
            out["ship"] = ("standard", "express", "pickup")[int(self.np_random.integers(3))]
            out["wh"] = f"W{int(self.np_random.integers(1, 9))}"
        return _json(out)

    def _product_text(self, pid: str) -> str:
        p = self._state.products[pid]
        out: dict[str, Any] = {"id": p.id, "name": p.name, "price": p.price, "cat": p.category}
        if self._noisy():
            out["stock"] = int(self.np_random.integers(0, 500))
            out["rating"] = round(float(self.np_random.uniform(2.5, 5.0)), 1)
        return _json(out)

    # ------------------------------------------------------------------ beliefs, expert, mistakes
    def _belief_orders(self) -> list[str]:
        task: _Task = self._state
        held = task.picked.get(task.user, []) if task.user is not None else []
        return held[:1] if task.select != "delivered_all" else list(held)

    def _missing_orders(self) -> list[str] | None:
        """Orders the beliefs still call for (None before the believed user's order list is read)."""
        task: _Task = self._state
        u = task.user
        if u is None or f"l:{u}" not in task.seen:
            return None
        held = task.picked.get(u, [])
        if task.select != "delivered_all":
            return [] if held else task.selected[u][:1]
        return [o for o in task.selected[u] if o not in held]

    def _missing_products(self) -> list[str]:
        task: _Task = self._state
        if task.agg == "qty":
            return []
        return [p for p in _distinct(p for _, p, _ in _lines(task, self._belief_orders())) if f"p:{p}" not in task.seen]

    def _expert(self) -> list[str]:
        task: _Task = self._state
        if task.user is None:
            return [format_call("find_user", {"name": task.users[task.target].name})]
        missing = self._missing_orders()
        if missing is None:
            return [format_call("list_orders", {"user_id": task.user})]
        out = [format_call("get_order", {"order_id": o}) for o in missing]
        if task.select == "delivered_all" or not missing:  # products of held orders, in any order
            out += [format_call("get_product", {"product_id": p}) for p in self._missing_products()]
        if out:
            return out
        return [f"answer {_value(task, _lines(task, self._belief_orders()))}"]

    def _mistakes(self) -> list[tuple[str, str]]:
        task: _Task = self._state
        out: list[tuple[str, str]] = []
        if task.user != task.target:
            for sid in task.users[task.target].similar:
                if sid != task.user and f"u:{sid}" not in task.seen:
                    out.append(("wrong_user", format_call("find_user", {"name": task.users[sid].name})))
        missing = self._missing_orders()
        if missing is None:
            return out
        u = task.user
        assert u is not None
        held = task.picked.get(u, [])
        if task.select == "delivered_all" or not held:
            for o in task.lists[u]:
                if o not in task.selected[u] and o not in held and f"o:{o}" not in task.seen:
                    out.append(("wrong_order", format_call("get_order", {"order_id": o})))
        out += self._answer_mistakes(missing)
        return out

    def _answer_mistakes(self, missing: list[str]) -> list[tuple[str, str]]:
        task: _Task = self._state
        orders = self._belief_orders()
        if task.select != "delivered_all" and not orders:
            return []
        candidates: list[tuple[str, int | str | None]] = []
        lines = _lines(task, orders)
        if task.agg == "qty":  # the units are orders
            if len(missing) <= 1:
                drop = missing[0] if missing else orders[-1] if orders else None
                candidates.append(("skip_item", _value(task, [x for x in lines if x[0] != drop])))
        elif not missing:  # the units are products
            remaining = self._missing_products()
            if len(remaining) <= 1 and lines:
                drop = remaining[0] if remaining else lines[-1][1]
                candidates.append(("skip_item", _value(task, [x for x in lines if x[1] != drop])))
        at_answer = not missing and not self._missing_products()
        if at_answer:
            value = _value(task, lines)
            if isinstance(value, int):
                candidates.append(("arithmetic", value + 1 + value % 3))
            else:
                ranked = sorted(_distinct(p for _, p, _ in lines), key=lambda p: -task.products[p].price)
                if len(ranked) >= 2:
                    candidates.append(("wrong_pick", task.products[ranked[1]].name))
        return [
            (kind, f"answer {v}")
            for kind, v in candidates
            if v is not None and not _same_answer(task, str(v), task.answer)
        ]

    def _progress(self) -> str:
        task: _Task = self._state
        picked = {u: o for u, o in sorted(task.picked.items()) if o}
        return json.dumps({"user": task.user, "seen": sorted(task.seen), "picked": picked}, separators=(",", ":"))


# ---------------------------------------------------------------------- helpers
def _shape(
    rng: np.random.Generator, select: str, agg: str, depth: int, pids: list[str]
) -> list[tuple[bool, str, list[tuple[str, int]]]]:
    """One user's orders as (selected, status, items); the selected ones first."""

    def items(n: int, pool: list[str] | None = None) -> list[tuple[str, int]]:
        chosen = pool if pool is not None else [pids[int(i)] for i in rng.choice(len(pids), size=n, replace=False)]
        return [(p, int(rng.integers(1, 5))) for p in chosen]

    def some() -> list[tuple[str, int]]:
        return items(int(rng.integers(1, 4)))

    n_other = 1 + int(rng.integers(2))
    others: tuple[str, ...]
    if select == "recent":
        status = ("delivered", "shipped", "pending")[int(rng.integers(3))]
        others = ("delivered", "cancelled", "returned")
        head = [(True, status, items(depth))]
    elif select == "delivered_one":
        others = ("cancelled", "pending", "shipped", "returned")
        head = [(True, "delivered", items(depth))]
    elif agg == "qty":
        others = ("cancelled", "pending", "returned")
        head = [(True, "delivered", some()) for _ in range(depth)]
    else:  # spending across one or two delivered orders: depth distinct products in all
        others = ("cancelled", "pending", "returned")
        chosen = [pids[int(i)] for i in rng.choice(len(pids), size=depth, replace=False)]
        cut = int(rng.integers(1, depth)) if depth >= 2 else depth
        parts = [chosen[:cut], chosen[cut:]] if depth >= 2 else [chosen]
        head = [(True, "delivered", items(len(part), part)) for part in parts]
    tail = [(False, others[int(rng.integers(len(others)))], some()) for _ in range(n_other)]
    return head + tail


def _separate(task: _Task, rng: np.random.Generator) -> None:
    """Make every single wrong read doom the run: a wrong order or a wrong user's selection never gives
    the true answer (the product asked for appears nowhere else; a total that would tie is bumped)."""
    target = task.target
    truth_lines = _lines(task, task.selected[target])
    truth = _value(task, truth_lines)
    single = task.select != "delivered_all"
    if task.agg == "name":
        best = str(max((p for _, p, _ in truth_lines), key=lambda p: task.products[p].price))
        for order in task.orders.values():
            if order.id in task.selected[target]:
                continue
            present = {p for p, _ in order.items}
            spare = sorted(p for p in task.products if p not in present and p != best)
            order.items = [(spare[int(rng.integers(len(spare)))] if p == best else p, q) for p, q in order.items]
        return
    groups = (
        [[o] for o in task.orders if o not in task.selected[target]]
        if single
        else [task.selected[u] for u in task.users if u != target]
    )
    for group in groups:
        if _value(task, _lines(task, group)) != truth:
            continue
        for oid in group:  # bump one contributing line by one unit
            order = task.orders[oid]
            j = next(
                (
                    j
                    for j, (p, _) in enumerate(order.items)
                    if task.agg != "category" or task.products[p].category == task.category
                ),
                None,
            )
            if j is not None:
                p, q = order.items[j]
                order.items[j] = (p, q + 1)
                break


def _lines(task: _Task, orders: list[str]) -> list[tuple[str, str, int]]:
    return [(o, p, q) for o in orders for p, q in task.orders[o].items]


def _value(task: _Task, lines: list[tuple[str, str, int]]) -> int | str | None:
    """The answer over these order lines (None: no product to name)."""
    if task.agg == "name":
        if not lines:
            return None
        return task.products[max((p for _, p, _ in lines), key=lambda p: task.products[p].price)].name
    if task.agg == "total":
        return sum(q * task.products[p].price for _, p, q in lines)
    if task.agg == "category":
        return sum(q for _, p, q in lines if task.products[p].category == task.category)
    return sum(q for _, _, q in lines)


def _same_answer(task: _Task, answer: str, truth: str) -> bool:
    if task.agg == "name":
        return _norm_name(answer) == _norm_name(truth)
    numbers = _NUMBER.findall(answer.replace(",", ""))
    return len(numbers) == 1 and float(numbers[0]) == float(truth)


def _norm_name(text: str) -> str:
    return " ".join(text.strip().strip("\"'").rstrip(".").split()).lower()


def _norm_id(value: str, prefix: str) -> str:
    text = value.strip().lower()
    return prefix + text if text.isdigit() else text


def _distinct(values: Any) -> list[str]:
    return list(dict.fromkeys(values))


def _json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))
