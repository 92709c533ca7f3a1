"""call_evidence's context clue: the features by hand, the classifier, and an all-fail task whose
repeated mistake only the context gives away."""

from __future__ import annotations

import json

import torch

from stepcredit import CallRecord, StepRecord, TrajectoryRecord, build
from stepcredit.estimators import call_evidence
from stepcredit.estimators._context import (
    _WORD,
    _call_features,
    _picker,
    _Question,
    call_sources,
    context_features,
    feature_strings,
    fit_logistic,
)


def test_features_by_hand():
    text = "compute (6 + 14) - (2 - 8)."
    feats = _call_features("mul", '{"a": 6, "b": 14}', False, text, 24)
    assert feats[0] == "T|mul"
    # the tokens next to each value, and what stands between the two values
    assert {"R|mul|a|+", "L|mul|a|(", "L|mul|b|+", "R|mul|b|)", "M|mul|+"} <= set(feats)
    assert not any(f.startswith("B|") for f in feats)  # no bag of the tokens around a value
    # numbers match whole: 6 is not in 16 or 6.5; a value never seen is flagged by parameter
    assert "U|add|a" in _call_features("add", '{"a": 6}', False, "16 + 6.5", 24)
    assert "U|add|a" not in _call_features("add", '{"a": 6.0}', False, "take 6 apples", 24)
    # nested parameters by path (list positions dropped), strings case-insensitive
    nested = _call_features("book", '{"trip": {"legs": ["SFO", "lax"]}}', True, "from sfo to LAX".casefold(), 8)
    assert {"E|book", "L|book|trip.legs|from", "R|book|trip.legs|to"} <= set(nested)
    # values nested past any reading are unseen; a sentence's full stop does not hide a number
    deep = '{"x": ' + "[" * 40 + "1" + "]" * 40 + "}"
    assert "U|f|x" in _call_features("f", deep, False, "1", 8)
    assert "U|f|x" not in _call_features("f", '{"x": 450}', False, "costing at most $450.", 8)
    # arguments that are not JSON, non-finite numbers
    assert _call_features("f", "not json", False, "x", 8) == ["T|f", "X|f"]
    assert "U|f|x" in _call_features("f", '{"x": Infinity}', False, "infinity", 8)


def test_pair_features_by_hand():
    text = "compute (6 + 14) * 3, then 14 - 2."
    # 14 occurs twice: the pair is found at any occurrence
    assert {"NO|mul|ab", "N|mul|+"} <= set(_call_features("mul", '{"a": 6, "b": 14}', False, text, 24))
    assert {"NO|mul|ba", "N|mul|+"} <= set(_call_features("mul", '{"a": 14, "b": 6}', False, text, 24))
    assert {"NO|sub|ab", "N|sub|-"} <= set(_call_features("sub", '{"a": 14, "b": 2}', False, text, 24))
    # the closest pair wins: "1 , 2" (3 characters between) over "2 plus 1" (6)
    feats = set(_call_features("f", '{"a": 1, "b": 2}', False, "2 plus 1 , 2", 24))
    assert {"NO|f|ab", "N|f|,"} <= feats and "N|f|plus" not in feats
    # an operand off by one stands next to nothing; one argument has no pair
    feats = set(_call_features("add", '{"a": 7, "b": 14}', False, text, 24))
    assert "N0|add" in feats and not any(f.startswith(("N|", "NO|")) for f in feats)
    assert not any(f.startswith(("N|", "NO|", "N0|")) for f in _call_features("neg", '{"a": 6}', False, text, 24))
    # at most _NEXT_TO (8) characters between the two values
    assert "NO|f|ab" in _call_features("f", '{"a": 1, "b": 2}', False, "1" + "_" * 8 + "2", 24)
    assert "N0|f" in _call_features("f", '{"a": 1, "b": 2}', False, "1" + "_" * 9 + "2", 24)


def test_fit_logistic_learns_and_is_deterministic():
    # calls with feature 3 are positives, with feature 5 negatives; feature 7 is noise on all
    feats = [[3, 7], [5, 7], [3], [5], [3, 7], [5, 7], [3], [5]]
    flat = torch.tensor([f for fs in feats for f in fs])
    offsets = torch.tensor([0, *torch.tensor([len(fs) for fs in feats]).cumsum(0)[:-1].tolist()])
    target = torch.tensor([1.0, 0.0] * 4)
    train = torch.tensor([True] * 4 + [False] * 4)
    z = fit_logistic(flat, offsets, train, target)
    assert bool((z[0::2] > 0).all()) and bool((z[1::2] < 0).all())
    assert torch.equal(z, fit_logistic(flat, offsets, train, target))
    # no training rows: every logit is the (zero) bias
    assert torch.equal(fit_logistic(flat, offsets, torch.zeros(8, dtype=torch.bool), target), torch.zeros(8))


def _run(tid, group, outcome, prompt, calls):
    steps = [StepRecord(f"call {k}", calls=[CallRecord(n, a, res)]) for k, (n, a, res) in enumerate(calls)]
    return TrajectoryRecord(id=tid, group=group, outcome=outcome, prompt=prompt, steps=[*steps, StepRecord("answer")])


def _call(op, a, b):
    value = {"add": a + b, "mul": a * b}[op]
    return op, f'{{"a":{a},"b":{b}}}', str(value)


def operator_batch():
    """Tasks ``(a + b) * (c + d)``. In the mixed tasks the successes compute both sums and the product;
    the failures take the product of a and b instead of their sum (the same mistake in every failed
    run). In the last task every run fails the same way: both its add and its mul are made by all
    runs, grounded, without errors — only the ``+`` between 3 and 4 says the mul is wrong."""
    runs = []
    tasks = [(2, 5, 7, 3), (4, 9, 6, 2), (8, 3, 5, 5), (6, 6, 2, 9), (7, 4, 3, 8), (5, 8, 9, 4)]
    for t, (a, b, c, d) in enumerate(tasks):
        prompt = f"Compute ({a} + {b}) * ({c} + {d})."
        good = [_call("add", a, b), _call("add", c, d), _call("mul", a + b, c + d)]
        bad = [_call("mul", a, b), _call("add", c, d), _call("mul", a * b, c + d)]
        runs += [_run(f"t{t}s{i}", f"t{t}", 1.0, prompt, good) for i in range(3)]
        runs += [_run(f"t{t}f{i}", f"t{t}", 0.0, prompt, bad) for i in range(3)]
    return build(runs + all_fail_runs(), states="distinct")


def all_fail_runs():
    prompt = "Compute (3 + 4) * (2 + 6)."
    bad = [_call("add", 2, 6), _call("mul", 3, 4), _call("mul", 12, 8)]
    return [_run(f"xf{i}", "x", 0.0, prompt, bad) for i in range(6)]


def test_context_separates_a_repeated_mistake_in_an_all_fail_task():
    r = operator_batch()
    in_x = r.group[r.call_traj] == r.num_groups - 1
    names, args = r.texts.call_name.to_pylist(), r.texts.call_arguments.to_pylist()
    correct = torch.tensor([n == "add" and a == '{"a":2,"b":6}' for n, a in zip(names, args, strict=True)]) & in_x
    wrong = torch.tensor([n == "mul" and a == '{"a":3,"b":4}' for n, a in zip(names, args, strict=True)]) & in_x
    with_context = call_evidence(r).per_call(r)
    assert bool((with_context[correct] > 0).all()) and bool((with_context[wrong] < 0).all())
    # the counting clues alone cannot tell the two apart
    counting = call_evidence(r, context=False).per_call(r)
    torch.testing.assert_close(counting[correct], counting[wrong])


def test_without_a_mixed_task_the_counting_clues_stay():
    r = build(all_fail_runs(), states="distinct")
    torch.testing.assert_close(call_evidence(r).per_call(r), call_evidence(r, context=False).per_call(r))


def test_context_features_follow_the_calls():
    r = operator_batch()
    flat, offsets = context_features(r)
    assert offsets.numel() == r.num_calls and int(offsets[0]) == 0
    assert bool((torch.diff(offsets) > 0).all()) and int(flat.max()) < 1 << 16


ORDERS = '{"user":"u1","orders":[{"id":"o1","date":"2024-01-05","status":"cancelled"},' \
    '{"id":"o2","date":"2024-03-01","status":"delivered"},{"id":"o3","date":"2024-02-11","status":"pending"}]}'


def _record_feats(arguments, prompt, result, name="get_order"):
    prompt, result = prompt.casefold(), result.casefold()
    question = _Question(frozenset(_WORD.findall(prompt)), len(prompt))
    return set(_call_features(name, arguments, False, prompt + "\n" + result, 24, question,
                              _picker([json.loads(result)])))


def test_record_features_by_hand():
    prompt = "What did Ann pay for her most recent delivered order?"
    latest = _record_feats('{"order_id": "o2"}', prompt, ORDERS)
    # the picked record holds the latest date; its status is a word of the question
    assert {"K|get_order|order_id|date|max", "KQ|get_order|order_id|date|max|recent",
            "S|get_order|order_id|status|delivered", "SQ|get_order|order_id|status"} <= latest
    oldest = _record_feats('{"order_id": "o1"}', prompt, ORDERS)
    assert {"K|get_order|order_id|date|min", "S|get_order|order_id|status|cancelled"} <= oldest
    assert "SQ|get_order|order_id|status" not in oldest
    middle = _record_feats('{"order_id": "o3"}', prompt, ORDERS)
    assert "K|get_order|order_id|date|mid" in middle
    # a single record: its text and boolean fields, no ranks; ``credit_card`` is two words
    reservation = '{"res":"R7","cabin":"basic_economy","insured":false,"booked":"2024-06-24 09:00"}'
    single = _record_feats('{"reservation_id": "R7"}', "Cancel R9 and pay by credit card", reservation, "cancel")
    assert {"S|cancel|reservation_id|cabin|basic_economy", "S|cancel|reservation_id|insured|false"} <= single
    assert not any(f.startswith(("K|", "KQ|", "SQ|")) for f in single)
    paid = _record_feats('{"payment_id": "cc_1"}', "pay with my credit card",
                         '{"pay":[{"id":"cc_1","kind":"credit_card"},{"id":"gc_2","kind":"gift_card"}]}', "book")
    assert "SQ|book|payment_id|kind" in paid
    # a text field without a word (a time) is never "a word of the question"
    timed = _record_feats('{"flight": "f1"}', "book a flight at noon", '{"flight":"f1","dep":"11:00"}', "book")
    assert "S|book|flight|dep|11:00" in timed and "SQ|book|flight|dep" not in timed
    # a value the question names still has the record it was last read in (the reservation to cancel);
    # a value read only in the prompt has none; equal dates rank nothing
    assert "S|get_order|order_id|status|delivered" in _record_feats('{"order_id": "o2"}', "order o2?", ORDERS)
    assert not any(f.startswith(("S|", "K|")) for f in _record_feats('{"order_id": "o9"}', "order o9?", ORDERS))
    ties = ORDERS.replace("2024-01-05", "2024-03-01").replace("2024-02-11", "2024-03-01")
    assert not any(f.startswith("K|") for f in _record_feats('{"order_id": "o2"}', prompt, ties))


def test_a_value_is_picked_from_the_record_it_identifies():
    user = ('{"user":"u1","pay":[{"id":"cc_1","kind":"credit_card"},{"kind":"certificate","id":"cert_2"}],'
            '"seat":{"row":2,"deck":"upper"}}')
    reservation = '{"res":"R7","flight":"F9","cabin":"economy","paid":"cert_2","bags":2}'
    calls = [("get_user", '{"user_id":"u1"}', user), ("get_reservation", '{"reservation_id":"R7"}', reservation),
             ("add_bags", '{"reservation_id":"R7","payment_id":"cert_2"}', "ok"),
             ("get_flight", '{"flight":"F9"}', "ok"), ("pick", '{"n":2}', "ok")]
    r = build([_run("a", "g", 0.0, "Customer u1: add a bag to R7.", calls)], states="distinct")
    feats = [{f for f in fs if f.startswith("S|")} for fs in feature_strings(r)]
    # the certificate is the user's payment method (its ``id`` field, wherever it stands), not the
    # reservation it paid for, although the reservation was read later
    assert "S|add_bags|payment_id|kind|certificate" in feats[2]
    assert not any(f.startswith("S|add_bags|payment_id|") and "kind" not in f for f in feats[2])
    assert "S|add_bags|reservation_id|cabin|economy" in feats[2]
    # a value no record holds as an identifier is picked from the latest record holding it anywhere,
    # and so is a number (the reservation's 2 bags, not the older seat row 2)
    assert "S|get_flight|flight|cabin|economy" in feats[3]
    assert "S|pick|n|cabin|economy" in feats[4] and "S|pick|n|deck|upper" not in feats[4]


def _question_feats(r):
    """Per call, its question features (``Q…``)."""
    return [{f for f in feats if f.startswith("Q")} for feats in feature_strings(r)]


def test_question_features_read_intermediate_results_as_the_question_parts_they_came_from():
    prompt = "Compute ((19 - 11) / 2) - 6."
    right = [("sub", '{"a":19,"b":11}', "8"), ("div", '{"a":8,"b":2}', "4"), ("sub", '{"a":4,"b":6}', "-2")]
    wrong = [("sub", '{"a":19,"b":11}', "8"), ("add", '{"a":8,"b":2}', "10"), ("sub", '{"a":6,"b":10}', "-4"),
             ("mul", '{"a":7,"b":3}', "21")]
    r = build([_run("a", "g", 1.0, prompt, right), _run("b", "g", 0.0, prompt, wrong)], states="distinct")
    feats = _question_feats(r)
    # both values in the question: the operator between them
    assert {"Q|sub|-", "QO|sub|ab"} <= feats[0] and {"Q|sub|-", "QO|sub|ab"} <= feats[3]
    # 8 stands for "19 - 11", so ``/`` (and the closing parenthesis) stand between it and 2: a div,
    # not an add
    assert {"Q|div|)", "Q|div|/", "QO|div|ab"} <= feats[1] and {"Q|add|)", "Q|add|/"} <= feats[4]
    # 4 stands for "(19 - 11) / 2", itself built on a result; 10 for the add's part, reversed
    assert {"Q|sub|)", "Q|sub|-", "QO|sub|ab"} <= feats[2]
    assert {"Q|sub|-", "QO|sub|ba"} <= feats[5]
    # values the question never gives, nor read from a call, stand next to nothing
    assert feats[6] == {"Q0|mul"}


def test_number_features_compare_with_the_lines_the_call_is_about():
    prompt = ("Customer user id: u1.\n1. Book an economy flight from AAA to BBB on 2024-05-01, costing at most $300.\n"
              "2. Add 2 checked bags to my economy reservation R7.")
    flights = '[{"flight":"F1","price":{"economy":250,"business":900}},{"flight":"F2","price":{"economy":350}}]'
    calls = [
        ("search_flights", '{"origin":"AAA","destination":"BBB","date":"2024-05-01"}', flights),
        ("book_flight", '{"flight":"F1","cabin":"economy","user_id":"u1"}', '{"res":"X1"}'),
        ("book_flight", '{"flight":"F2","cabin":"economy","user_id":"u1"}', '{"res":"X2"}'),
        ("add_bags", '{"reservation_id":"R7","bags":2}', "ok"),
        ("add_bags", '{"reservation_id":"R7","bags":3}', "ok"),
    ]
    r = build([_run("a", "g", 0.0, prompt, calls)], states="distinct")
    feats = [{f for f in fs if f.startswith(("AQ|", "RQ|"))} for fs in feature_strings(r)]
    # the flight was picked from the search, which stands on request 1: its price in the cabin the call
    # names against the request's numbers (the budget after "$")
    assert "RQ|book_flight|flight|price.@|lt|$" in feats[1]
    assert "RQ|book_flight|flight|price.@|gt|$" in feats[2] and "RQ|book_flight|flight|price.@|lt|$" not in feats[2]
    # "economy" stands on both requests, so it names no line: request 2's bag count is not compared
    assert not any(f.endswith("|add") for f in feats[1] | feats[2])
    # the bags against the numbers of the line that names the reservation
    assert feats[3] == {"AQ|add_bags|bags|eq|add"} and feats[4] == {"AQ|add_bags|bags|gt|add"}


def test_numbers_too_large_for_a_float_are_no_numbers():
    huge = 10**400
    prompt = f"Customer u1.\nBook flight AAA to BBB on day 5 for at most ${huge}."
    flights = (f'[{{"flight":"F1","price":{{"economy":{huge}}},"seats":{huge},"stops":1}},'
               '{"flight":"F2","price":{"economy":3},"seats":2,"stops":0}]')
    calls = [
        ("search_flights", '{"origin":"AAA","destination":"BBB"}', flights),
        ("book_flight", f'{{"flight":"F1","cabin":"economy","bags":{10 * huge}}}', "ok"),
    ]
    r = build([_run("a", "g", 0.0, prompt, calls)], states="distinct")
    feats = list(feature_strings(r))
    # the huge numbers are neither compared nor ranked; the ordinary ones still are
    numeric = {f for f in feats[1] if f.startswith(("AQ|", "RQ|", "K|"))}
    assert numeric == {"RQ|book_flight|flight|stops|lt|day", "K|book_flight|flight|stops|max"}
    assert context_features(r)[0].numel() == sum(map(len, feats))


def test_call_sources_by_hand():
    calls = [
        ("find_user", '{"name":"Ann"}', '{"id":"u1","city":"Oslo"}'),
        ("list_orders", '{"user_id":"u1"}', '{"orders":[{"id":"o1"},{"id":"o2"}],"user":"u1"}'),
        ("get_order", '{"order_id":"o2"}', '{"id":"o2","items":[{"p":"p5","qty":2}]}'),
        ("get_product", '{"product_id":"p5","city":"oslo"}', '{"id":"p5"}'),
        ("get_order", '{"order_id":"o9"}', "error"),  # read nowhere
    ]
    r = build([_run("a", "g", 0.0, "Ann's orders, please", calls)], states="distinct")
    call, source = call_sources(r)
    # "Ann" is in the prompt; u1 is read last in list_orders' result; p5 in get_order's; "oslo" in
    # find_user's (case-insensitive)
    assert list(zip(call.tolist(), source.tolist(), strict=True)) == [(1, 0), (2, 1), (3, 0), (3, 2)]


def test_data_flow_leaves_calls_built_on_a_deviant_call_out_of_training(monkeypatch):
    """Mixed tasks: a failed run reads the wrong user, then that user's orders (built on a call no
    successful run made); with ``data_flow`` the classifier never trains on the second read."""
    from stepcredit.estimators import evidence

    runs = []
    for t in range(3):
        good = [("find_user", '{"name":"Ann"}', f'{{"id":"u{t}"}}'), ("list_orders", f'{{"user_id":"u{t}"}}', "[]")]
        bad = [("find_user", '{"name":"Anne"}', f'{{"id":"w{t}"}}'), ("list_orders", f'{{"user_id":"w{t}"}}', "[]")]
        runs += [_run(f"t{t}s", f"t{t}", 1.0, "Ann's orders", good), _run(f"t{t}f", f"t{t}", 0.0, "Ann's orders", bad)]
    runs += [_run(f"xf{i}", "x", 0.0, "Bo's orders", [("find_user", '{"name":"Bo"}', '{"id":"b"}')]) for i in range(2)]
    r = build(runs, states="distinct")
    seen = []
    real = evidence.fit_logistic
    monkeypatch.setattr(evidence, "fit_logistic",
                        lambda f, o, train, y: seen.append(train.clone()) or real(f, o, train, y))
    call_evidence(r)
    call_evidence(r, data_flow=False)
    names, args = r.texts.call_name.to_pylist(), r.texts.call_arguments.to_pylist()
    downstream = torch.tensor(["w" in a for a in args]) & torch.tensor([n == "list_orders" for n in names])
    assert int(downstream.sum()) == 3
    assert not bool(seen[0][downstream].any()) and bool(seen[1][downstream].all())
    assert torch.equal(seen[0], seen[1] & ~downstream)


def test_training_takes_first_occurrences_and_a_re_read_stays_a_success_read(monkeypatch):
    """Mixed tasks: a failed run reads the right user twice, then lists the orders as the successes
    do. With repeats apart the re-read is a call of its own that no success made, but the list built
    on it still trains (the read it came from is a success's read); the re-read itself does not."""
    from stepcredit.estimators import evidence

    runs = []
    for t in range(3):
        read = ("find_user", '{"name":"Ann"}', f'{{"id":"u{t}"}}')
        orders = ("list_orders", f'{{"user_id":"u{t}"}}', "[]")
        runs += [_run(f"t{t}s", f"t{t}", 1.0, "Ann's orders", [read, orders]),
                 _run(f"t{t}f", f"t{t}", 0.0, "Ann's orders", [read, read, orders])]
    runs += [_run(f"xf{i}", "x", 0.0, "Bo's orders", [("find_user", '{"name":"Bo"}', '{"id":"b"}')]) for i in range(2)]
    r = build(runs, states="distinct")
    seen = []
    real = evidence.fit_logistic
    monkeypatch.setattr(evidence, "fit_logistic",
                        lambda f, o, train, y: seen.append((train.clone(), y.clone())) or real(f, o, train, y))
    call_evidence(r)
    train, target = seen[0]
    per_task = [True, True, True, False, True]  # success: read, list; failed run: read, re-read, list
    assert train.tolist() == per_task * 3 + [False, False]
    assert target[train].tolist() == [1.0] * 12  # every trained call is one a success made
