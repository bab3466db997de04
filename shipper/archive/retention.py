"""Retention classes: how long an archived event must be kept, and which class an event is in.

Frameworks ask for different periods (SOC 2 three years or more, HIPAA six, SOX and PCI seven).
A sink that locks what it archives (the ``s3`` sink) maps class names to periods and picks a class
per event with rules; an object holds events of one class, locked for that class's period.

* A **period** is a number of days (``2190`` or ``"2190d"``) or of calendar years (``"6y"``). A
  year is a calendar year: six years from 2026-12-02 is 2032-12-02 (from 29 February, 1 March),
  never a day less than the law says, whatever the leap days.
* A **rule** names a class and one or more conditions, all of which must hold: ``source`` (source
  ids), ``agent`` (shell-style globs on the agent id: ``"clinical-*"``), ``field`` plus
  ``equals`` (a dotted path into the agent's record, and the values it may have). The first rule
  that matches an event gives its class; an event no rule matches is in class ``default``.
  Events without a record (malformed input) or an agent only match rules that need neither.

Pure: no I/O, no clock (callers pass the time).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

DEFAULT_CLASS: Final = "default"
_PERIOD_RE: Final = re.compile(r"\s*(\d+)\s*([dy]?)\s*")
#: The longest period taken (a lock cannot be shortened: a typo of 10000 years is for good).
MAX_DAYS: Final = 100 * 366


@dataclass(frozen=True, slots=True)
class Period:
    """A retention period: ``count`` days, or ``count`` calendar years."""

    count: int
    years: bool = False

    @classmethod
    def parse(cls, value: object) -> Period:
        """From ``2190``, ``"2190d"`` or ``"6y"``; ValueError says what was expected."""
        expected = 'expected a number of days (2190, "2190d") or of years ("6y")'
        if isinstance(value, bool):
            raise ValueError(expected)
        if isinstance(value, int):
            count, years = value, False
        elif isinstance(value, str) and (match := _PERIOD_RE.fullmatch(value)):
            count, years = int(match.group(1)), match.group(2) == "y"
        else:
            raise ValueError(expected)
        if count < 1 or (count * 366 if years else count) > MAX_DAYS:
            raise ValueError(expected + ", from 1 day to 100 years")
        return cls(count, years)

    def __str__(self) -> str:
        return f"{self.count}{'y' if self.years else 'd'}"

    def after(self, start: datetime) -> datetime:
        """The moment this period after ``start`` ends."""
        if not self.years:
            return start + timedelta(days=self.count)
        try:
            return start.replace(year=start.year + self.count)
        except ValueError:  # 29 February, in a year without one
            return start.replace(year=start.year + self.count, month=3, day=1)


@dataclass(frozen=True, slots=True)
class Rule:
    """Events that match every condition given are in ``cls``."""

    cls: str
    sources: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    field: tuple[str, ...] = ()
    equals: tuple[Any, ...] = ()

    def matches(self, source: str, agent: str | None, record: Mapping[str, Any] | None) -> bool:
        if self.sources and source not in self.sources:
            return False
        if self.agents and (
            agent is None or not any(fnmatch.fnmatchcase(agent, glob) for glob in self.agents)
        ):
            return False
        if self.field:
            value: Any = record
            for name in self.field:
                if not isinstance(value, Mapping) or name not in value:
                    return False
                value = value[name]
            if value not in self.equals:
                return False
        return True


@dataclass(frozen=True, slots=True)
class Classes:
    """Class names and their periods (``default`` among them), and the rules that pick one."""

    periods: Mapping[str, Period]
    rules: Sequence[Rule] = ()

    def __post_init__(self) -> None:
        if DEFAULT_CLASS not in self.periods:
            raise ValueError(f"retention classes need a {DEFAULT_CLASS!r} class")
        for rule in self.rules:
            if rule.cls not in self.periods:
                raise ValueError(f"rule for unknown class {rule.cls!r}")

    def classify(self, source: str, agent: str | None, record: Mapping[str, Any] | None) -> str:
        """The class of an event from source ``source``, of agent ``agent``, with ``record``."""
        for rule in self.rules:
            if rule.matches(source, agent, record):
                return rule.cls
        return DEFAULT_CLASS

    def longest_after(self, start: datetime) -> datetime:
        """When the longest class's period after ``start`` ends (a manifest entry, which every
        class's objects need, is locked until then)."""
        return max(period.after(start) for period in self.periods.values())
