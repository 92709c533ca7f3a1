"""Feedback options are frozen dataclasses checked from their type hints (as components' parameters
are), and the RL loop reaches the methods only through their hooks."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from stepcredit.core.registry import options
from stepcredit.feedback import METHODS, Feedback, build, parse_options
from stepcredit.feedback.critique import Critique, CritiqueOptions
from stepcredit.feedback.opd import OPDOptions
from stepcredit.feedback.r3 import R3Options
from stepcredit.feedback.skills import SkillsOptions


def test_defaults_and_given_options() -> None:
    assert options(CritiqueOptions, {}, "critique") == CritiqueOptions()
    assert options(CritiqueOptions, None, "critique") == CritiqueOptions()
    got = options(OPDOptions, {"votes": 3, "w_opd": 0.5}, "opd")
    assert (got.votes, got.w_opd, got.judge) == (3, 0.5, "env")
    assert options(R3Options, R3Options(keep_quantile=0.5), "r3").keep_quantile == 0.5  # an instance passes through
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.votes = 1  # type: ignore[misc]


def critic(attempt: Any) -> str:
    return "try again"


def test_a_callable_critic_or_judge_from_python() -> None:
    assert options(CritiqueOptions, {"critic": critic}, "critique").critic is critic
    with pytest.raises(ValueError, match=r"critique\.critic must be 'env' \| a callable"):
        options(CritiqueOptions, {"critic": "gpt-judge"}, "critique")


@pytest.mark.parametrize(
    ("cls", "given", "fragment"),
    [
        (CritiqueOptions, {"gama": 0.1}, "unknown option(s) ['gama']"),
        (CritiqueOptions, {"gamma": 0.0}, "critique.gamma must be"),
        (CritiqueOptions, {"clip": 1}, "critique.clip must be bool"),
        (CritiqueOptions, {"refine": "some"}, "critique.refine must be 'failed' | 'all'"),
        (OPDOptions, {"votes": True}, "opd.votes must be int"),  # a bool is not a count
        (OPDOptions, {"votes": 1.5}, "opd.votes must be int"),
        (OPDOptions, {"w_rl": float("nan")}, "opd.w_rl must be a finite number"),
        (R3Options, {"keep_quantile": 0.0}, "r3.keep_quantile must be"),
        (R3Options, {"weighting": "cubic"}, "r3.weighting must be"),
        (SkillsOptions, {"threshold": 1.5}, "skills.threshold must be"),
        (SkillsOptions, {"top_k": 0}, "skills.top_k must be"),
        (SkillsOptions, [1, 2], "mapping of options"),
    ],
)
def test_bad_options_are_one_line_naming_the_field(cls: type[Any], given: Any, fragment: str) -> None:
    where = next(name for name, (c, _) in METHODS.items() if c is cls)
    with pytest.raises(ValueError) as info:
        options(cls, given, where)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_parse_options_and_build_in_method_order() -> None:
    assert parse_options("critique", None) is None
    setup = None
    hooks = build({"critique": parse_options("critique", {}), "opd": None}, setup)  # type: ignore[arg-type]
    assert [type(h) for h in hooks] == [Critique]
    assert hooks[0].off_policy_shaping() == (0.1, False)


def test_every_method_is_a_feedback_with_its_name() -> None:
    for name, (cls, make) in METHODS.items():
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        hook = make(cls(), None)  # type: ignore[arg-type]
        assert isinstance(hook, Feedback) and hook.name == name


def test_the_loop_knows_no_method_by_name() -> None:
    import stepcredit.train.loop as loop

    source = inspect.getsource(loop)
    for name in METHODS:
        assert f'"{name}"' not in source and f"config.{name}" not in source and f".{name}(" not in source, name
