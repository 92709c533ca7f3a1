"""The booking family: oracle, several valid solutions, mistakes, policy rules, snapshots, splits, noise."""

from __future__ import annotations

import json
import re
import string
from typing import Any

import numpy as np
import pytest

from stepcredit.envs.base import CORRECT, NEUTRAL, WRONG
from stepcredit.envs.booking import _AIRPORTS, BookingEnv

MISTAKE_KINDS = {
    "over_budget",
    "wrong_cabin",
    "wrong_date",
    "wrong_payment",
    "duplicate_booking",
    "forbidden_cancel",
    "forbidden_bags",
    "wrong_count",
    "extra_write",
    "premature_answer",
}


def finish(env: BookingEnv, info: dict[str, Any], pick: int = 0) -> tuple[list[dict[str, Any]], bool]:
    """Follow the expert (alternative ``pick`` modulo the choices) to the end: the infos, success."""
    infos: list[dict[str, Any]] = []
    done = False
    while not done:
        expert = info["expert"]
        _, _, terminated, truncated, info = env.step(expert[pick % len(expert)])
        infos.append(info)
        done = terminated or truncated
    return infos, bool(info["success"])


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_oracle_solves_every_task_with_every_step_correct(split: str) -> None:
    for depth in range(1, 7):
        env = BookingEnv(split=split, depth=depth)  # type: ignore[arg-type]
        for task in range(50):
            _, info = env.reset(options={"task": task})
            infos, success = finish(env, info, pick=task)
            assert success, (split, depth, task)
            assert all(i["label"] == CORRECT for i in infos), [(i["label"], i["calls"]) for i in infos]
            assert len(infos) <= 2 * depth + 2 < env.max_steps
            assert infos[-1]["answer"] == "done"


def test_every_expert_alternative_leads_to_success() -> None:
    alternatives = []
    for split in ("train", "test"):
        for task in range(12):
            env = BookingEnv(split=split, depth=3)  # type: ignore[arg-type]
            _, info = env.reset(options={"task": task})
            while info["expert"][0] != "answer done":
                at = env.snapshot()
                alternatives.append(len(info["expert"]))
                for action in info["expert"]:
                    env.restore(at)
                    _, _, _, _, after = env.step(action)
                    assert after["label"] == CORRECT, (task, action, after["calls"])
                    infos, success = finish(env, after)
                    assert success and all(i["label"] == CORRECT for i in infos), (task, action)
                env.restore(at)
                _, _, _, _, info = env.step(info["expert"][-1])
    assert max(alternatives) >= 4


def test_a_booking_goal_has_several_valid_solutions() -> None:
    counts = []
    env = BookingEnv(depth=1)
    for task in range(60):
        _, info = env.reset(options={"task": task})
        while not info["expert"][0].startswith(("book_flight", "answer", "cancel", "add_bags")):
            _, _, _, _, info = env.step(info["expert"][0])
        if info["expert"][0].startswith("book_flight"):
            flights = {re.search(r"flight=(\w+)", a).group(1) for a in info["expert"]}  # type: ignore[union-attr]
            payments = {re.search(r"payment_id=(\w+)", a).group(1) for a in info["expert"]}  # type: ignore[union-attr]
            counts.append((len(flights), len(payments)))
    assert counts and all(f >= 2 for f, _ in counts)
    assert any(p >= 2 for _, p in counts) and any(p == 1 for _, p in counts)


def test_every_mistake_kind_is_wrong_and_dooms_the_run() -> None:
    seen: dict[str, int] = {}
    for split in ("train", "test"):
        for depth in (1, 3, 5):
            env = BookingEnv(split=split, depth=depth)  # type: ignore[arg-type]
            for task in range(8):
                _, info = env.reset(options={"task": task})
                while True:
                    at = env.snapshot()
                    for kind, action in info["mistakes"]:
                        env.restore(at)
                        _, reward, terminated, _, after = env.step(action)
                        assert after["label"] == WRONG, (kind, action, after["calls"])
                        seen[kind] = seen.get(kind, 0) + 1
                        if kind == "premature_answer":
                            assert terminated and reward == 0.0 and not after["success"]
                            continue
                        assert after["tool_ok"] == 1  # the wrong write went through
                        infos, success = finish(env, after)
                        assert not success, (kind, action)
                        # correct calls inside a failed run; the final answer is not blamed again
                        assert all(i["label"] == CORRECT for i in infos[:-1]), (kind, [i["calls"] for i in infos])
                        assert infos[-1]["answer"] == "done" and infos[-1]["label"] == NEUTRAL
                    env.restore(at)
                    if info["expert"][0] == "answer done":
                        break
                    _, _, _, _, info = env.step(info["expert"][0])
    assert set(seen) == MISTAKE_KINDS, (MISTAKE_KINDS - set(seen), seen)


def test_mistakes_are_deterministic() -> None:
    a, b = BookingEnv(depth=4), BookingEnv(depth=4)
    _, ia = a.reset(seed=1, options={"task": 9})
    _, ib = b.reset(seed=2, options={"task": 9})
    for _ in range(6):
        assert ia["mistakes"] == ib["mistakes"] and ia["expert"] == ib["expert"]
        if ia["expert"][0] == "answer done":
            break
        _, _, _, _, ia = a.step(ia["expert"][0])
        _, _, _, _, ib = b.step(ib["expert"][0])


def _state(env: BookingEnv) -> Any:
    return env._state


def _goal_task(kind: str, allowed: bool, depth: int = 1) -> tuple[BookingEnv, dict[str, Any]]:
    """The first task with a goal of this kind and permission (depth > 1 for forbidden goals)."""
    env = BookingEnv(depth=depth, max_steps=40)
    for task in range(400):
        _, info = env.reset(options={"task": task})
        goals = [g for g in _state(env).goals if g.kind == kind and g.allowed == allowed]
        if goals:
            return env, info
    raise AssertionError(f"no task with a {kind} goal (allowed={allowed})")


def test_a_forbidden_cancellation_is_read_and_left_alone() -> None:
    env, info = _goal_task("cancel", allowed=False, depth=3)
    goal = next(g for g in _state(env).goals if g.kind == "cancel" and not g.allowed)
    env.step(f"get_user(user_id={_state(env).user})")
    _, _, _, _, info = env.step(f"get_reservation(reservation_id={goal.res})")
    assert info["label"] == CORRECT
    record = json.loads(info["calls"][0]["result"])
    assert not record["insured"] and record["cabin"] != "business"
    assert f"cancel_reservation(reservation_id={goal.res})" not in info["expert"]
    assert ("forbidden_cancel", f"cancel_reservation(reservation_id={goal.res})") in info["mistakes"]
    _, _, _, _, info = env.step(f"cancel_reservation(reservation_id={goal.res})")
    assert info["label"] == WRONG and info["tool_ok"] == 1 and _state(env).doomed


def test_allowed_cancellations_follow_the_24_hour_insurance_business_rule() -> None:
    env = BookingEnv(depth=1)
    checked = 0
    for task in range(200):
        env.reset(options={"task": task})
        goal = _state(env).goals[0]
        if goal.kind != "cancel":
            continue
        res = _state(env).reservations[goal.res]
        now = np.datetime64(_state(env).now.replace(" ", "T"))
        hours = (now - np.datetime64(res.booked.replace(" ", "T"))) / np.timedelta64(1, "h")
        assert hours < 24 or res.insured or res.cabin == "business"
        checked += 1
    assert checked > 20


def test_bag_fees_follow_the_membership_allowance() -> None:
    env = BookingEnv(depth=1)
    seen = set()
    for task in range(200):
        _, info = env.reset(options={"task": task})
        st = _state(env)
        goal = st.goals[0]
        if goal.kind != "bags":
            continue
        res = st.reservations[goal.res]
        free = {"regular": 0, "silver": 1, "gold": 2}[st.member]
        before = res.bags
        infos, success = finish(env, info)
        assert success
        charged = json.loads(next(c for i in infos for c in i["calls"] if c["name"] == "add_bags")["result"])["charged"]
        assert charged == 50 * (max(0, before + goal.bags - free) - max(0, before - free))
        seen.add((st.member, charged > 0))
    assert len(seen) >= 4


def test_system_refusals_are_neutral_and_change_nothing() -> None:
    env, info = _goal_task("book", allowed=True)
    st = _state(env)
    goal = st.goals[0]
    user = st.user
    env.step(f"get_user(user_id={user})")
    _, _, _, _, info = env.step(f"search_flights(origin={goal.org}, destination={goal.dst}, date={goal.date})")
    flight = next(f for f in st.flights.values() if (f.org, f.dst, f.date) == (goal.org, goal.dst, goal.date))
    gift = next(p for p, m in st.payments.items() if m["kind"] == "gift_card")
    st.payments[gift]["bal"] = 1  # a gift card that covers nothing
    key = env._progress()
    for action in (
        f"book_flight(user_id=nobody, flight={flight.id}, cabin={goal.cabin}, payment_id={gift})",
        f"book_flight(user_id={user}, flight=XX000, cabin={goal.cabin}, payment_id={gift})",
        f"book_flight(user_id={user}, flight={flight.id}, cabin=first, payment_id={gift})",
        f"book_flight(user_id={user}, flight={flight.id}, cabin={goal.cabin}, payment_id=cc_0000)",
        f"book_flight(user_id={user}, flight={flight.id}, cabin={goal.cabin}, payment_id={gift})",
        f"book_flight(user_id={user}, flight={flight.id}, cabin={goal.cabin})",
        "get_reservation(reservation_id=ZZZZZZ)",
        "cancel_reservation(reservation_id=ZZZZZZ)",
        f"add_bags(reservation_id={st.user_res[0]}, bags=0, payment_id={gift})",
        f"add_bags(reservation_id={st.user_res[0]}, bags=two, payment_id={gift})",
        "get_user(user_id=someone_else)",
        "no_such_tool(x=1)",
        "book_flight(",
    ):
        _, reward, terminated, truncated, info = env.step(action)
        assert info["label"] == NEUTRAL and info["tool_ok"] in (0, -1), (action, info)
        assert info["state_key"] == key and not terminated and reward == 0.0
        if truncated:
            break
    full = [f for f in st.flights.values() if f.seats[goal.cabin] == 0]
    if full:
        _, _, _, _, info = env.step(
            f"book_flight(user_id={user}, flight={full[0].id}, cabin={goal.cabin}, payment_id=x)"
        )
        assert info["label"] == NEUTRAL


def test_no_seats_and_cancelled_reservations_are_errors() -> None:
    env = BookingEnv(depth=2)
    full_seen = cancelled_seen = False
    for task in range(100):
        _, info = env.reset(options={"task": task})
        st = _state(env)
        cc = next(p for p, m in st.payments.items() if m["kind"] == "credit_card")
        for g in st.goals:
            full = [f for f in st.flights.values() if f.seats[g.cabin or "economy"] == 0]
            if g.kind == "book" and full:
                _, _, _, _, info = env.step(
                    f"book_flight(user_id={st.user}, flight={full[0].id}, cabin={g.cabin}, payment_id={cc})"
                )
                assert info["label"] == NEUTRAL and info["tool_ok"] == 0 and "no " in info["calls"][0]["result"]
                full_seen = True
            if g.kind == "cancel" and g.allowed:
                env.step(f"cancel_reservation(reservation_id={g.res})")
                _, _, _, _, info = env.step(f"cancel_reservation(reservation_id={g.res})")
                assert info["label"] == NEUTRAL and info["tool_ok"] == 0
                cancelled_seen = True
    assert full_seen and cancelled_seen


def test_reads_are_correct_once_then_neutral() -> None:
    env, info = _goal_task("book", allowed=True)
    st = _state(env)
    goal = st.goals[0]
    search = f"search_flights(origin={goal.org}, destination={goal.dst}, date={goal.date})"
    assert [env.step(search)[4]["label"] for _ in range(2)] == [CORRECT, NEUTRAL]
    assert [env.step(f"get_user(user_id={st.user})")[4]["label"] for _ in range(2)] == [CORRECT, NEUTRAL]
    # the reverse route, and a reservation no goal is about
    _, _, _, _, info = env.step(f"search_flights(origin={goal.dst}, destination={goal.org}, date={goal.date})")
    assert info["label"] == NEUTRAL and json.loads(info["calls"][0]["result"])
    other = next(r for r in st.user_res if all(g.res != r for g in st.goals))
    assert env.step(f"get_reservation(reservation_id={other})")[4]["label"] == NEUTRAL


def test_gift_card_and_certificate_payments() -> None:
    """A gift card is debited; a certificate is used once; both must cover the price."""
    env = BookingEnv(depth=1)
    used = set()
    for task in range(150):
        _, info = env.reset(options={"task": task})
        books = []
        while info["expert"][0] != "answer done":
            books = [a for a in info["expert"] if a.startswith("book_flight")]
            if books:
                break
            _, _, _, _, info = env.step(info["expert"][0])
        st = _state(env)
        for action in books:
            pid = re.search(r"payment_id=(\w+)", action).group(1)  # type: ignore[union-attr]
            kind = st.payments[pid]["kind"]
            if kind == "credit_card" or kind in used:
                continue
            at = env.snapshot()
            bal = st.payments[pid]["bal"]
            _, _, _, _, after = env.step(action)
            price = json.loads(after["calls"][0]["result"])["price"]
            assert after["label"] == CORRECT and price <= bal
            st2 = _state(env)
            assert (pid not in st2.payments) if kind == "certificate" else st2.payments[pid]["bal"] == bal - price
            used.add(kind)
            env.restore(at)
    assert used == {"gift_card", "certificate"}


def test_snapshot_restore_replays_the_same_observations() -> None:
    env = BookingEnv(depth=3, noise=0.5, distractors=2)
    _, info = env.reset(seed=4, options={"task": 7})
    _, _, _, _, info = env.step(info["expert"][0])
    snap = env.snapshot()

    def future() -> list[tuple[str, int]]:
        out, step_info, done = [], info, False
        while not done:
            action = step_info["expert"][-1]
            obs, _, terminated, truncated, step_info = env.step(action)
            out.append((obs, step_info["label"]))
            done = terminated or truncated
        return out

    first = future()
    env.restore(snap)
    assert future() == first
    env.restore(snap)
    assert future() == first


def test_same_index_same_task_and_splits_use_disjoint_entities() -> None:
    for task in range(10):
        assert (
            BookingEnv(depth=3).reset(options={"task": task})[0]
            == BookingEnv(depth=3).reset(seed=9, options={"task": task})[0]
        )
    train = " ".join(BookingEnv(depth=4).reset(options={"task": t})[0] for t in range(30))
    test = " ".join(BookingEnv(split="test", depth=4).reset(options={"task": t})[0] for t in range(30))
    assert not any(a in test for a in _AIRPORTS["train"]) and not any(a in train for a in _AIRPORTS["test"])
    train_users = set(re.findall(r"user id: (\w+)", train))
    test_users = set(re.findall(r"user id: (\w+)", test))
    assert not {u.split("_")[0] for u in train_users} & {u.split("_")[0] for u in test_users}


def test_distractor_calls_are_neutral() -> None:
    env = BookingEnv(depth=2, distractors=4)
    _, info = env.reset(options={"task": 3})
    for action in ("get_weather(city=Oslo)", "send_email(to=a@b.c, text=hi)", "get_time(city=Lima)"):
        _, _, _, _, info = env.step(action)
        assert info["label"] == NEUTRAL and info["tool_ok"] == 1
    assert finish(env, info)[1]


def test_noise_changes_results_but_not_labels() -> None:
    differs = False
    for task in range(10):
        runs = []
        for noise in (0.0, 1.0):
            env = BookingEnv(depth=3, noise=noise)
            _, info = env.reset(seed=task, options={"task": task})
            infos, success = finish(env, info)
            assert success
            runs.append(infos)
        assert [i["label"] for i in runs[0]] == [i["label"] for i in runs[1]]
        differs |= any(a["calls"] != b["calls"] for a, b in zip(*runs, strict=True))
    assert differs


def test_premature_answer_is_wrong_and_answer_after_doom_is_neutral() -> None:
    env = BookingEnv(depth=2)
    _, info = env.reset(options={"task": 0})
    _, reward, terminated, _, info = env.step("answer done")
    assert terminated and reward == 0.0 and info["label"] == WRONG and not info["success"]


def test_observations_are_printable_and_max_steps_leaves_room() -> None:
    env = BookingEnv(depth=6, noise=1.0)
    obs, info = env.reset(options={"task": 1})
    assert env.max_steps == 3 * 6 + 4 and BookingEnv(depth=2, max_steps=5).max_steps == 5
    assert set(obs) <= set(string.printable)
    infos, _ = finish(env, info)
    assert all(set(c["result"]) <= set(string.printable) for i in infos for c in i["calls"])
