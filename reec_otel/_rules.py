"""Retention days: how they are written, read and checked.

Days are whole numbers, optionally followed by ``d`` (``10`` or ``10d``).
Rules map a final state or a job name to days; in the environment they are
written ``Failed=30,Succeeded=3``, or as a JSON object when a name holds a
comma or an equals sign (``{"export, nightly": 7}``).
"""

from __future__ import annotations

import json
import types
from collections.abc import Mapping
from typing import Any, Final

from reec_otel._attributes import StateJob
from reec_otel._errors import ConfigurationError

__all__ = ["check_days", "name_rules", "parse_day_rules", "parse_days", "state_rules"]

MAX_DAYS: Final = 36_500


def check_days(value: Any, what: str) -> int:
    """Return *value* if it is a whole number of days from 0 to 36 500."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DAYS:
        raise ConfigurationError(
            f"{what} must be a whole number of days from 0 to {MAX_DAYS}; got {value!r}."
        )
    return value


def parse_days(raw: str, what: str) -> int:
    """Days from text: ``10``, ``10d``, or weeks as ``2w``."""
    text = raw.strip().lower()
    per_unit = 7 if text.endswith("w") else 1
    digits = text[:-1] if text.endswith(("d", "w")) else text
    if not digits.isascii() or not digits.isdigit():
        raise ConfigurationError(
            f"{what} must be a number of days such as 10, 10d or 2w; got {raw!r}."
        )
    return check_days(int(digits) * per_unit, what)


def parse_day_rules(raw: str, what: str) -> dict[str, int]:
    """Rules from text: ``key=days,key=days`` or a JSON object of days."""
    text = raw.strip()
    if not text:
        return {}
    if text.startswith("{"):
        return _json_rules(text, what)
    rules: dict[str, int] = {}
    for part in text.split(","):
        key, equals, days = part.rpartition("=")
        if not equals or not key.strip():
            raise ConfigurationError(
                f"{what} must be written key=days separated by commas (for example "
                f"Failed=30,Succeeded=3) or as a JSON object; {part.strip()!r} is not."
            )
        rules[key.strip()] = parse_days(days, f"{what} (for {key.strip()!r})")
    return rules


def _json_rules(text: str, what: str) -> dict[str, int]:
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{what} is not a valid JSON object: {exc.msg}.") from None
    if not isinstance(loaded, dict):
        raise ConfigurationError(f"{what} must be a JSON object of days; got {text!r}.")
    return {str(key): check_days(days, f"{what} (for {key!r})") for key, days in loaded.items()}


def state_rules(rules: Mapping[Any, Any], what: str) -> Mapping[StateJob, int]:
    """Days per final state, keys read as states (any case), read-only."""
    _require_mapping(rules, what)
    checked: dict[StateJob, int] = {}
    by_lower = {state.value.lower(): state for state in StateJob}
    for key, days in rules.items():
        state = by_lower.get(key.lower()) if isinstance(key, str) else None
        if state is None:
            raise ConfigurationError(
                f"{what} has {key!r}, which is not a state; use "
                f"{', '.join(s.value for s in StateJob)}."
            )
        checked[state] = check_days(days, f"{what}[{state.value!r}]")
    return types.MappingProxyType(checked)


def name_rules(rules: Mapping[Any, Any], what: str) -> Mapping[str, int]:
    """Days per job name, read-only."""
    _require_mapping(rules, what)
    checked: dict[str, int] = {}
    for key, days in rules.items():
        if not isinstance(key, str) or not key or len(key) > 255:
            raise ConfigurationError(
                f"{what} keys must be job names of 1 to 255 characters; got {key!r}."
            )
        checked[key] = check_days(days, f"{what}[{key!r}]")
    return types.MappingProxyType(checked)


def _require_mapping(rules: Any, what: str) -> None:
    if not isinstance(rules, Mapping):
        raise ConfigurationError(f"{what} must be a mapping of days; got {rules!r}.")
