"""The lookup family's rule teacher (``LookupEnv``): task kinds by the question's words, and the checks
of a failed episode against what the question asks and what the tools showed."""

from __future__ import annotations

from stepcredit.envs.actions import parse_action
from stepcredit.envs.teaching.base import (
    EpisodeText,
    Lesson,
    Teacher,
    abstract_action,
    error_line,
    json_or_none,
    printable,
)

__all__ = ["LookupTeacher"]

_KINDS = (  # (kind, keywords that must all appear), first match wins; LookupEnv's question texts
    ("total_recent", ("total price", "most recent order")),
    ("priciest_delivered", ("highest unit price", "delivered order")),
    ("category_recent", ("category", "most recent order")),
    ("items_delivered", ("how many items", "delivered orders")),
    ("spend_delivered", ("how much did", "spend", "delivered orders")),
)
_TEXT = {
    "total_recent": "the total price of a user's most recent order",
    "priciest_delivered": "the priciest product of a user's delivered order",
    "category_recent": "the items of one category in a user's most recent order",
    "items_delivered": "the items a user received across delivered orders",
    "spend_delivered": "what a user spent across delivered orders",
}
_ANSWER = {
    "total_recent": "Answer the sum of quantity x unit price over the items of the most recent order.",
    "spend_delivered": "Answer the sum of quantity x unit price over the items of every delivered order.",
    "category_recent": "Answer the sum of the quantities of the most recent order's items in the category.",
    "items_delivered": "Answer the sum of the quantities over the items of every delivered order.",
    "priciest_delivered": "Answer the name of the product with the highest unit price in the delivered "
    "order, as get_product shows it.",
}


class LookupTeacher(Teacher):
    """Kinds: a "Look the data up with the tools" prompt; the kind is the question kind of ``LookupEnv``
    (``total_recent``, ``priciest_delivered``, ``category_recent``, ``items_delivered``,
    ``spend_delivered``), or none when the question matches none.

    Checks: reading an order the question excludes (not the most recent, not delivered), or answering
    before every product (or delivered order) was read."""

    family = "lookup"
    error_rules = (
        ("no user named", "Pass find_user the user's full name exactly as the question writes it."),
        (r"no (?:user|order|product) with id", "Pass {tool} an id exactly as an earlier tool result showed it."),
    )

    def kind(self, prompt: str) -> str | None:
        low = prompt.casefold()
        if "look the data up with the tools" not in low:
            return None
        question = low.split("look the data up", 1)[0]
        return next((k for k, words in _KINDS if all(w in question for w in words)), "")

    def describe(self, kind: str) -> str:
        return f"questions about {_TEXT[kind]}" if kind in _TEXT else "database questions"

    def check(self, episode: EpisodeText, kind: str) -> Lesson | None:
        listed: dict[str, tuple[str, str, int]] = {}  # order id -> (date, status, which listing)
        latest: dict[int, str] = {}
        read_orders: list[str] = []
        items: set[str] = set()
        products: set[str] = set()
        for action, obs in zip(episode.actions, episode.observations, strict=True):
            calls = parse_action(action).calls
            if len(calls) != 1 or error_line(obs) is not None:
                continue
            call, data = calls[0], json_or_none(obs)
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
                            f"{abstract_action(action)} of a {printable(status)[:20]} order",
                            "Read only orders whose status is delivered; skip pending, shipped, cancelled and "
                            "returned ones.",
                        )
                read_orders.append(oid)
                lines = data.get("items")
                if isinstance(lines, list):
                    items |= {str(r["p"]) for r in lines if isinstance(r, dict) and "p" in r}
            elif call.name == "get_product" and isinstance(data, dict):
                products.add(str(data.get("id", "")))
        if not episode.actions or not episode.actions[-1].lstrip().startswith("answer"):
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
                f"{abstract_action(episode.actions[-1])} before reading every product",
                "Read every product of the selected order(s) with get_product before answering.",
            )
        return None

    def answer_principle(self, kind: str) -> str:
        return _ANSWER.get(kind, "Answer only from values the tools returned, computed as the question asks.")
