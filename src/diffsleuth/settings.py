"""Settings dataclasses to and from plain JSON, strictly: unknown keys are errors, not silence.

:func:`config_from_dict` validates before it builds: every value must have its field's type (an
int is accepted for a float), every number must be finite (the NaN and Infinity that Python's
JSON reader accepts are refused here), a field with ``metadata={"range": (low, high)}`` must lie in it,
and the dataclass's own checks (``__post_init__``) must pass. Every number a detector config
holds has a range (:func:`ranged`): a setting outside what the code can run sensibly (a grid of
1000x1000 crops, a 0-pixel side) is refused on load instead of scoring nonsense. A failure is a
:class:`ConfigError` that names the field, dotted from the top (``config.preprocess.size``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting is unknown, missing, of the wrong type, out of range or not finite.

    ``field`` is its dotted name, ``reason`` what is wrong, ``source`` the file (when known)."""

    def __init__(self, field: str, reason: str, source: str | Path | None = None) -> None:
        self.field, self.reason, self.source = field, reason, source
        where = f"{source}: " if source is not None else ""
        super().__init__(f"{where}{field + ': ' if field else ''}{reason}")

    def located(self, source: str | Path, prefix: str = "") -> ConfigError:
        """The same error, naming the file and the path of the section it was read from."""
        field = ".".join(p for p in (prefix, self.field) if p)
        return ConfigError(field, self.reason, source)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_value(tp: Any, value: Any, field: str) -> Any:
    """``value`` checked against the type hint ``tp`` (recursively), converted where JSON cannot
    say it (lists to tuples, nested dicts to dataclasses); raises :class:`ConfigError`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is None or isinstance(tp, TypeVar):
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(field, f"must be an object of {tp.__name__} settings, got {value!r}")
        return config_from_dict(tp, value, field)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error, naming the nested field it is about
            return check_value(options[0], value, field)
        errors = []
        for arg in options:
            try:
                return check_value(arg, value, field)
            except ConfigError as exc:
                errors.append(exc.reason)
        raise ConfigError(field, " or ".join(dict.fromkeys(errors)) or f"got {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(field, f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(field, f"must be a finite number, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(field, f"must be a whole number, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(field, f"must be {'a string' if tp is str else 'true or false'}, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(field, f"must be a path string, got {value!r}")
        return value
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(field, f"must be a list, got {value!r}")
        if args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(field, f"must have {len(args)} items, got {len(value)}")
            return tuple(check_value(a, v, f"{field}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        return tuple(check_value(item, v, f"{field}[{i}]") for i, v in enumerate(value))
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise ConfigError(field, f"must be a list, got {value!r}")
        item = args[0] if args else Any
        return [check_value(item, v, f"{field}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(field, f"must be an object, got {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {k: check_value(item, v, f"{field}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(field, f"must be {_type_name(tp)}, got {value!r}")
    return value


def _check_range(spec: dataclasses.Field, value: Any, field: str) -> None:
    bounds = spec.metadata.get("range")
    if bounds is None or value is None:
        return
    low, high = bounds
    values = value if isinstance(value, (tuple, list)) else (value,)
    for item in values:
        if (low is not None and item < low) or (high is not None and item > high):
            span = f"between {low} and {high}" if low is not None and high is not None else (
                f"at least {low}" if low is not None else f"at most {high}")
            raise ConfigError(field, f"must be {span}, got {value!r}")


def ranged(default: Any, low: float | None, high: float | None) -> Any:
    """A dataclass field with ``default`` whose value (or each item of it) must lie in [low, high]."""
    return dataclasses.field(default=default, metadata={"range": (low, high)})


def config_to_dict(config: Any) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    return json.loads(json.dumps(data))


def config_from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build ``cls`` from ``data``, validated (see the module docstring), recursing into nested
    dataclasses; ``where`` is the dotted name of ``data`` itself, for messages."""
    if not isinstance(data, dict):
        raise ConfigError(where, f"must be an object of {cls.__name__} settings, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(where, f"{cls.__name__}: unknown config keys {unknown} (known: {sorted(fields)})")
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        kwargs[key] = check_value(hints.get(key, Any), value, name)
        _check_range(fields[key], kwargs[key], name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(where, f"{cls.__name__}: {exc}") from exc


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (value parsed as JSON when it parses, else a string)."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return out


def load_json(path: str | Path) -> Any:
    """Parse a JSON file; raises :class:`ConfigError` naming it. (NaN and Infinity parse, and
    :func:`config_from_dict` refuses them naming the field.)"""
    try:
        with Path(path).open(encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise ConfigError("", f"cannot read it ({exc.strerror or exc})", path) from exc
    except (ValueError, RecursionError) as exc:
        raise ConfigError("", f"not valid JSON ({exc})", path) from exc
