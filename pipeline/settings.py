"""The one home of settings validation: the node's configuration (``dicom_node.config``), the
training recipe (``training.settings``) and the preprocessing parameters
(``pipeline.prep.params``) check their values here, and every error names the key the same
way, ``section.key: what is wrong`` (``node.port: must be between 1 and 65535, got 0``,
``training.epochs: must be at least 1, got 0``, ``preprocessing.slice_offset: ...``).

A wrong type raises :class:`SettingTypeError` (a ``TypeError`` too), a wrong value
:class:`SettingError` (a ``ValueError``). :func:`build_section` reads one TOML table into
a frozen dataclass by its field types, :func:`apply_env` lays ``PREFIX_SECTION_KEY``
environment variables over it first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

__all__ = [
    "SettingError",
    "SettingTypeError",
    "check_bool",
    "check_int",
    "check_number",
    "check_choice",
    "check_known",
    "build_section",
    "coerce",
    "apply_env",
    "parse_env",
]


class SettingError(ValueError):
    """A setting cannot be used; the message starts with the key (``section.key: ...``)."""


class SettingTypeError(SettingError, TypeError):
    """A setting has the wrong type (a ``TypeError`` as well as a :class:`SettingError`)."""


def check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise SettingTypeError(f"{key}: must be true or false, got {value!r}")


def check_int(key: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingTypeError(f"{key}: must be an integer, got {value!r}")
    _check_bounds(key, value, minimum, maximum, strict=False)


def check_number(key: str, value: Any, minimum: float | None = None, maximum: float | None = None, *,
                 strict: bool = False) -> None:
    """A finite int or float, at least ``minimum`` (above it when ``strict``), at most ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingTypeError(f"{key}: must be a number, got {value!r}")
    if not math.isfinite(value):
        raise SettingError(f"{key}: must be finite, got {value!r}")
    _check_bounds(key, value, minimum, maximum, strict=strict)


def _check_bounds(key: str, value: float, minimum: float | None, maximum: float | None, *, strict: bool) -> None:
    if minimum is not None and strict and value <= minimum:
        raise SettingError(f"{key}: must be greater than {minimum:g}, got {value!r}")
    if minimum is not None and not strict and value < minimum:
        raise SettingError(f"{key}: must be at least {minimum:g}, got {value!r}")
    if maximum is not None and value > maximum:
        raise SettingError(f"{key}: must be at most {maximum:g}, got {value!r}")


def check_choice(key: str, value: Any, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if not isinstance(value, str):
        raise SettingTypeError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
    if value not in choices:
        raise SettingError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")


def check_known(section: str, table: Mapping[str, Any], known: Iterable[str]) -> None:
    """Every key of ``table`` is one of ``known``; else the first unknown one is named."""
    if not isinstance(table, Mapping):
        raise SettingTypeError(f"{section}: must be a table ([{section}]), got {type(table).__name__}")
    known = tuple(known)
    for key in table:
        if key not in known:
            raise SettingError(f"{section}.{key}: unknown key (known: {', '.join(known)})")


def build_section(name: str, cls: type, table: Mapping[str, Any]) -> Any:
    """``cls(**table)`` with every value checked against its field's type (bool, int, float,
    str, tuple of str); an int is taken where a float is expected (TOML writes ``30``)."""
    known = {f.name: f for f in fields(cls)}
    check_known(name, table, known)
    return cls(**{key: coerce(f"{name}.{key}", str(known[key].type), value) for key, value in table.items()})


def coerce(key: str, type_name: str, value: Any) -> Any:
    """``value`` as the field type ``type_name`` (a dataclass annotation) wants, or a SettingTypeError."""
    if type_name == "bool":
        check_bool(key, value)
        return value
    if type_name == "int":
        check_int(key, value)
        return value
    if type_name == "int | str":  # a count, or a word such as "auto"
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise SettingTypeError(f"{key}: must be a whole number or a word, got {value!r}")
        return value
    if type_name == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingTypeError(f"{key}: must be a number, got {value!r}")
        return float(value)
    if type_name.startswith("tuple"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SettingTypeError(f"{key}: must be a list of strings, got {value!r}")
        return tuple(value)
    if not isinstance(value, str):
        raise SettingTypeError(f"{key}: must be a string, got {value!r}")
    return value


def apply_env(prefix: str, section: str, cls: type, table: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Lay ``{prefix}{SECTION}_{KEY}`` environment variables over ``table`` (in place)."""
    for f in fields(cls):
        variable = f"{prefix}{section.upper()}_{f.name.upper()}"
        if variable in environ:
            table[f.name] = parse_env(f"{section}.{f.name}", str(f.type), environ[variable])


def parse_env(key: str, type_name: str, text: str) -> Any:
    """An environment variable's text as the field type ``type_name``; a list is comma-separated."""
    try:
        if type_name == "bool":
            lowered = text.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(text)
        if type_name == "int":
            return int(text)
        if type_name == "int | str":
            return int(text) if text.strip().lstrip("+-").isdigit() else text.strip()
        if type_name == "float":
            return float(text)
        if type_name.startswith("tuple"):
            return [item.strip() for item in text.split(",") if item.strip()]
    except ValueError:
        raise SettingError(f"{key}: environment value {text!r} is not a {type_name}") from None
    return text
