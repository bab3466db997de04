"""Retention classes: periods in days or calendar years, and the rules that pick an event's class."""

from __future__ import annotations

from datetime import UTC, datetime
from types import MappingProxyType

import pytest

from shipper.archive.retention import Classes, Period, Rule


def test_periods_parse_from_days_and_years() -> None:
    """``2190``, ``"2190d"`` and ``"6y"`` parse; zero, negatives, booleans and units other
    than d and y are refused saying what is expected."""
    assert Period.parse(2190) == Period(2190)
    assert Period.parse("2190d") == Period(2190)
    assert Period.parse("6y") == Period(6, years=True)
    assert str(Period.parse("6y")) == "6y"
    for bad in (0, -1, True, "6m", "y", "1000y", 1.5):
        with pytest.raises(ValueError, match="expected a number of days"):
            Period.parse(bad)


def test_years_are_calendar_years_never_shorter() -> None:
    """Six years from a date is the same date six years on (a leap day moves to 1 March), so a
    lock is never a day shorter than the law's years."""
    start = datetime(2026, 12, 2, 18, 0, tzinfo=UTC)
    assert Period(6, years=True).after(start) == datetime(2032, 12, 2, 18, 0, tzinfo=UTC)
    leap = datetime(2028, 2, 29, tzinfo=UTC)
    assert Period(1, years=True).after(leap) == datetime(2029, 3, 1, tzinfo=UTC)
    assert Period(4, years=True).after(leap) == datetime(2032, 2, 29, tzinfo=UTC)
    assert Period(10).after(start) == datetime(2026, 12, 12, 18, 0, tzinfo=UTC)


def test_the_first_matching_rule_picks_the_class_else_default() -> None:
    """Rules are tried in order and every condition of a rule must hold; an event no rule
    matches (or one without an agent or record) is in ``default``."""
    classes = Classes(
        MappingProxyType(
            {
                "default": Period(3, years=True),
                "hipaa": Period(6, years=True),
                "financial": Period(7, years=True),
            }
        ),
        (
            Rule("financial", field=("department",), equals=("finance", "treasury")),
            Rule("hipaa", agents=("clinical-*",)),
            Rule("hipaa", sources=("ehr",), agents=("intake-?",)),
        ),
    )
    assert classes.classify("agents", "clinical-7", {"department": "finance"}) == "financial"
    assert classes.classify("agents", "clinical-7", {"department": "care"}) == "hipaa"
    assert classes.classify("ehr", "intake-1", {}) == "hipaa"
    assert classes.classify("agents", "intake-1", {}) == "default"
    assert classes.classify("ehr", "intake-12", {}) == "default"
    assert classes.classify("agents", None, None) == "default"
    assert classes.classify("agents", "x", {"department": {"nested": 1}}) == "default"
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert classes.longest_after(start) == datetime(2033, 1, 1, tzinfo=UTC)


def test_classes_need_a_default_and_rules_known_classes() -> None:
    """A set of classes without ``default``, or a rule naming a class that is not defined, is
    refused."""
    with pytest.raises(ValueError, match="default"):
        Classes(MappingProxyType({"hipaa": Period(6, years=True)}))
    with pytest.raises(ValueError, match="unknown class 'sox'"):
        Classes(MappingProxyType({"default": Period(1)}), (Rule("sox", sources=("a",)),))
