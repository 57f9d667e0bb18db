"""The base of the typed configs in :mod:`asearcher.config` (generated from the Rust schema):
conversion to and from dicts and files, ``a.b.c=v`` overrides, and validation. Reading files,
resolving their paths, applying overrides and validating are all done by Rust, so a config
behaves the same whether it comes from Python, a file or the command line, and every error is a
:class:`~asearcher.exceptions.ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from . import _core
from .exceptions import ConfigError

C = TypeVar("C", bound="Config")


class Config:
    """Base class of every generated config dataclass."""

    __asearcher_config__: ClassVar[bool] = True
    _root: ClassVar[str | None] = None
    """The name of the Rust root config this class validates as (``None``: a part of one)."""
    _nested: ClassVar[dict[str, type[Config]]] = {}
    """Fields that hold another config (directly, in a list or optional)."""

    # --- conversions -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (what a JSON/TOML/YAML file would hold)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any] | Config) -> C:
        """Builds the config from a dict (absent keys take their defaults). A root config is
        validated by Rust first; an unknown key or a bad value raises ConfigError naming it."""
        if isinstance(data, Config):
            data = data.to_dict()
        if cls._root is not None:
            data = _core.check_config(cls._root, dict(data))
        return _build(cls, data, "")

    @classmethod
    def from_file(cls: type[C], path: str | os.PathLike[str], *overrides: str) -> C:
        """Reads a TOML, YAML or JSON file (relative paths in it are taken relative to the
        file's directory), applies ``a.b.c=v`` overrides and validates."""
        root = cls._require_root("from_file")
        return _build(cls, _core.load_config(root, os.fspath(path), list(overrides)), "")

    def replace(self: C, **changes: Any) -> C:
        """A copy with some top-level fields changed (``cfg.replace(k=8)``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def override(self: C, *settings: str) -> C:
        """A copy with ``a.b.c=v`` settings applied (the value is read as YAML: ``0.3``,
        ``true``, ``null``, ``[1, 2]``, a bare string), validated by Rust."""
        data = _core.apply_overrides(self.to_dict(), list(settings))
        return type(self).from_dict(data)

    def validate(self: C) -> C:
        """Checks every value (in Rust); returns the config as Rust reads it."""
        self._require_root("validate")
        return type(self).from_dict(self)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Rust's defaults for a root config, as a dict (what ``cls().to_dict()`` must equal)."""
        return _core.config_defaults(cls._require_root("defaults"))

    @classmethod
    def _require_root(cls, what: str) -> str:
        if cls._root is None:
            raise ConfigError(
                f"{cls.__name__} is part of a larger config; {what}() works on the root configs "
                "(TrainConfig, EvalConfig, RolloutConfig, ...)"
            )
        return cls._root

    # --- display -----------------------------------------------------------------------------
    def __str__(self) -> str:
        """The config as TOML, every field shown (unset optional fields as comments)."""
        return to_toml(self.to_dict()).strip("\n")


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _build(cls: type[C], data: Mapping[str, Any], prefix: str) -> C:
    """``cls`` from plain data, nested configs built too; unknown keys raise ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"invalid setting `{prefix or cls.__name__}`: must be a table, got {data!r}"
        )
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(
                f"invalid setting `{dotted}`: unknown key (valid: {', '.join(sorted(names))})"
            )
        sub = cls._nested.get(key)
        if sub is not None and isinstance(value, Mapping):
            value = _build(sub, value, f"{dotted}.")
        elif sub is not None and isinstance(value, list):
            value = [_build(sub, v, f"{dotted}.") for v in value]
        kwargs[key] = value
    return cls(**kwargs)


def to_toml(data: Mapping[str, Any], table: str = "") -> str:
    """A small TOML writer for configs: scalars and lists first, then one table per section;
    ``None`` (no TOML equivalent) is written as a comment."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            tables.append((f"{table}.{key}" if table else key, value))
        elif value is None:
            lines.append(f"# {key} = null")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for name, sub in tables:
        out += f"\n[{name}]\n" + to_toml(sub, name)
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{" + inner + "}"
    return json.dumps(value)


def as_config_dict(config: Config | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A typed config or a dict as a dict (``None`` stays ``None``), for native calls."""
    if config is None:
        return None
    if isinstance(config, Config):
        return config.to_dict()
    return dict(config)


__all__ = ["Config", "as_config_dict", "to_toml"]
