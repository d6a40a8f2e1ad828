# SPDX-License-Identifier: MIT
"""docs/configuration.md names every configuration key, and only keys that exist.

The key set comes from the loader itself: the dataclasses of ``fastmta.config``
give the candidates, and ``config.from_dict`` decides what a key is called in
TOML and whether it is known (the same check that makes unknown keys errors).
The page lists each key as the first cell of a table row: ``| `limits.max_hops` |``.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastmta import config

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "configuration.md"
ROW = re.compile(r"^\| `([a-z_][a-z0-9_.]*)` \|", re.MULTILINE)


class _Bad:
    """A value no converter accepts: the loader then reports the key as known or unknown."""


def _errors(raw: dict[str, Any]) -> list[str]:
    try:
        config.from_dict(raw)
    except config.ConfigError as e:
        return e.errors
    return []


def _nest(parts: list[str], shapes: tuple[bool, ...], leaf: Any) -> dict[str, Any]:
    """``["a", "b", "c"]`` as nested tables around ``leaf``; ``shapes[i]`` makes part i an array."""
    value: Any = {parts[-1]: leaf}
    for i in range(len(parts) - 2, -1, -1):
        value = {parts[i]: [value] if shapes[i] else value}
    return value


def loader_knows(key: str) -> bool:
    """Whether ``from_dict`` accepts ``key`` (in some shape of tables and arrays of tables)."""
    parts = key.split(".")
    for shapes in itertools.product((False, True), repeat=len(parts) - 1):
        errors = _errors(_nest(parts, shapes, _Bad()))
        if not any(e.endswith(("unknown key", "expected a table")) or "array of tables" in e for e in errors):
            return True
    return False


def _dataclass_of(hint: Any) -> type | None:
    """``SomeConfig`` or ``tuple[SomeConfig, ...]`` → the dataclass, else None."""
    if dataclasses.is_dataclass(hint):
        return typing.cast(type, hint)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and args and dataclasses.is_dataclass(args[0]):
        return typing.cast(type, args[0])
    return None


def _toml_name(prefix: str, field_name: str) -> str:
    """A table's name in TOML, as the loader knows it: the field name or its singular
    (``listeners`` → ``[[listener]]``)."""
    for name in (field_name, field_name.removesuffix("s")):
        key = prefix + name
        parts = key.split(".")
        if f"{key}: unknown key" not in _errors(_nest(parts, (False,) * (len(parts) - 1), {})):
            return name
    raise AssertionError(f"the loader knows no table for {prefix}{field_name}")


def config_keys(cls: type = config.Config, prefix: str = "") -> Iterator[str]:
    """Every leaf key of ``cls`` (fields with a converter), named as TOML names it."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "conv" in f.metadata:
            yield prefix + f.name
            continue
        nested = _dataclass_of(hints[f.name])
        if nested is not None:
            yield from config_keys(nested, prefix + _toml_name(prefix, f.name) + ".")


def documented_keys() -> set[str]:
    return set(ROW.findall(PAGE.read_text()))


def _flatten(table: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for name, value in table.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{name}.")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                yield from _flatten(item, f"{prefix}{name}.")
        else:
            yield prefix + name


def test_the_loader_probe_tells_known_from_unknown() -> None:
    assert loader_knows("limits.max_recipients")
    assert loader_knows("listener.address")
    assert loader_knows("delivery.shaping.match")
    assert not loader_knows("limits.no_such_key")
    assert not loader_knows("listeners.address")


def test_every_config_key_is_on_the_page() -> None:
    keys = set(config_keys())
    assert "limits.max_recipients" in keys and "listener.address" in keys and "delivery.shaping.match" in keys
    missing = sorted(keys - documented_keys())
    assert not missing, f"docs/configuration.md lacks: {missing}"


def test_the_page_names_only_real_keys() -> None:
    unknown = sorted(k for k in documented_keys() if not loader_knows(k))
    assert not unknown, f"docs/configuration.md names keys config.py does not have: {unknown}"


def test_the_deployed_configuration_is_documented() -> None:
    with open(ROOT / "deploy" / "fastmta.toml", "rb") as f:
        keys = set(_flatten(tomllib.load(f)))
    assert keys, "deploy/fastmta.toml parsed to nothing"
    missing = sorted(keys - documented_keys())
    assert not missing, f"deploy/fastmta.toml uses keys docs/configuration.md lacks: {missing}"
