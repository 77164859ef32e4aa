"""Frozen, typed configuration dataclasses that validate themselves.

Every config in clearvae derives from :class:`Config`. Construction checks the type of every
field (a float NaN is refused in any of them), ``from_dict`` rejects unknown keys with the list
of valid ones, and ``to_dict`` gives plain JSON-able data so that a config can be stored inside
a model file and read back. ``check_range`` words the message for a value out of range.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from clearvae.errors import ConfigError

C = TypeVar("C", bound="Config")


@dataclasses.dataclass(frozen=True)
class Config:
    """Base class: subclasses are ``@dataclass(frozen=True)`` and may override ``validate``."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = _coerce(getattr(self, field.name), hints[field.name], self._where(field.name))
            object.__setattr__(self, field.name, value)
        self.validate()
        for field in dataclasses.fields(self):  # after validate: its messages say the range
            if _has_nan(getattr(self, field.name)):
                raise ConfigError(f"{self._where(field.name)}: NaN is not a valid value, got "
                                  f"{getattr(self, field.name)!r}")

    def validate(self) -> None:
        """Check relations between fields; raise ConfigError with a helpful message."""

    @classmethod
    def _where(cls, key: str) -> str:
        return f"{cls.__name__}.{key}"

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any] | None) -> C:
        """Build from a mapping; unknown keys fail loudly with the valid ones listed."""
        data = dict(data or {})
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ConfigError(
                f"unknown key(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
                f"valid keys are: {', '.join(valid)}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in data.items():
            kind = _config_class(hints[key], value)
            kwargs[key] = kind.from_dict(value) if kind and isinstance(value, dict) else value
        try:
            return cls(**kwargs)
        except TypeError as exc:  # a required field is missing
            raise ConfigError(f"{cls.__name__}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists for tuples) that ``from_dict`` accepts back."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _config_class(hint: Any, value: Any = None) -> type[Config] | None:
    """The config class a field's value builds: for a union of several, the one whose
    ``kind`` the value names (the first when it names none)."""
    options = [o for o in get_args(hint) or (hint,)
               if isinstance(o, type) and issubclass(o, Config)]
    if len(options) > 1 and isinstance(value, dict) and "kind" in value:
        named = [o for o in options if getattr(o, "kind", None) == value["kind"]]
        if not named:
            kinds = ", ".join(repr(o.kind) for o in options if hasattr(o, "kind"))
            raise ConfigError(f"kind {value['kind']!r} is not one of {kinds}")
        return named[0]
    return options[0] if options else None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the type ``hint`` (ints widen to floats, lists to tuples)."""
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        for option in get_args(hint):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not a valid {_name(hint)}")
    if origin is Literal:
        if value not in get_args(hint):
            choices = ", ".join(map(repr, get_args(hint)))
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if isinstance(hint, type) and issubclass(hint, Config):
        if isinstance(value, dict):
            return hint.from_dict(value)
        if not isinstance(value, hint):
            raise ConfigError(f"{where}: expected a {hint.__name__} mapping, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint in (str, bool):
        if not isinstance(value, hint):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {hint!r} at {where}")  # programming error


def _has_nan(value: Any) -> bool:
    """A float NaN in ``value`` or in a tuple of it (nested configs check their own)."""
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, tuple) and any(_has_nan(v) for v in value)


def check_range(key: str, value: float | None, low: float, *, low_open: bool = False,
                finite: bool = False, what: str = "") -> None:
    """Raise a ConfigError naming ``key``, ``value`` and the valid range unless ``value`` is at
    least ``low`` (``low_open``: above it; ``finite``: not infinite). ``None`` passes (an
    optional key left off); NaN never does."""
    if value is None:
        return
    ok = not math.isnan(value) and not (finite and math.isinf(value))
    if not (ok and (value > low if low_open else value >= low)):
        noun = ("an integer" if isinstance(value, int) else
                "a finite number" if finite else "a number")
        bound = f"{'>' if low_open else '>='} {low:g}"
        raise ConfigError(f"{key} must be {noun} {bound}{what}, got {value!r}")


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"model.latent_dim=32"`` into (["model", "latent_dim"], 32) with YAML typing."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. model.latent_dim=32)")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def set_nested(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``data[path[0]][path[1]]... = value``, creating mappings as needed."""
    for key in path[:-1]:
        data = data.setdefault(key, {})
        if not isinstance(data, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {key!r} is not a mapping")
    data[path[-1]] = value
