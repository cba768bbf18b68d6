"""The one config mechanism (the shape of diffusers' ``ConfigMixin``): typed dataclasses that round-trip through JSON,
reject unknown keys with a one-line error naming the key, check numbers in one place (:func:`check_number`,
:func:`check_integer`, :func:`check_choice`) and compare a saved config with the current one in one place
(:meth:`Config.check_resumable`, through :func:`diffguide.io.check_same_settings`).

Every config of the library derives from :class:`Config`: the training run configs (:mod:`diffguide.train.config`),
:class:`~diffguide.checkpoints.NetworkConfig`, :class:`~diffguide.calibration.CalibrationConfig` and
:class:`~diffguide.api.SampleSettings`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from typing import Any, ClassVar, Iterable, Mapping

from .io import check_same_settings, settings_differences

__all__ = ["Config", "check_number", "check_integer", "check_choice", "check_timesteps"]


def check_number(name: str, value, *, low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False, hint: str = "") -> float:
    """``value`` if it is a finite real number (not a bool) in the interval [low, high] (``low_open`` / ``high_open``:
    that end excluded), else a ValueError naming ``name`` (``hint`` is added to the message)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (low is not None and (value < low or (low_open and value == low))) \
            or (high is not None and (value > high or (high_open and value == high))):
        bounds = [f"{'>' if low_open else '≥'} {low}" if low is not None else "",
                  f"{'<' if high_open else '≤'} {high}" if high is not None else ""]
        within = " and ".join(b for b in bounds if b)
        raise ValueError(f"{name}: expected a finite number{' ' + within if within else ''}"
                         f"{f' ({hint})' if hint else ''}, got {value!r}")
    return value


def check_integer(name: str, value, minimum: int | None = 1) -> int:
    """``value`` if it is an integer (not a bool) ≥ ``minimum``, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise ValueError(f"{name}: expected an integer{f' ≥ {minimum}' if minimum is not None else ''}, got {value!r}")
    return value


def check_choice(name: str, value, options: Iterable) -> Any:
    """``value`` if it is one of ``options``, else a ValueError naming ``name`` and listing them."""
    options = list(options)
    if value not in options:
        raise ValueError(f"{name}: expected one of {options}, got {value!r}")
    return value


def check_timesteps(name: str, values, num_train_timesteps: int) -> list[int]:
    """``values`` as a non-empty list of original timesteps in [0, T−1], else a ValueError naming ``name``."""
    timesteps = [int(t) for t in values]
    if not timesteps or any(not 0 <= t < num_train_timesteps for t in timesteps):
        raise ValueError(f"{name}: expected a non-empty list of timesteps in [0, {num_train_timesteps - 1}], "
                         f"got {values!r}")
    return timesteps


def _nested_type(f: dataclasses.Field) -> type | None:
    """The :class:`Config` type of a field whose default is a config (a nested section), else None."""
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
        return type(default) if isinstance(default, Config) else None
    return None


class Config:
    """Base of the library's config dataclasses: ``to_dict`` / ``to_json``, ``from_dict`` / ``from_json`` (unknown keys
    are an error; a nested config section is read into its own type) and the one "may this resume?" check.

    ``RESUMABLE``: the fields that may differ between a saved config and the current one (e.g. how long to run);
    nested fields are compared dotted (``optim.lr``)."""

    RESUMABLE: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict:
        """The fields as plain JSON-able values; a nested config section through its own ``to_dict``."""
        return {f.name: (value.to_dict() if isinstance(value, Config) else copy.deepcopy(value))
                for f in dataclasses.fields(self) for value in [getattr(self, f.name)]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping, source: str | None = None) -> Any:
        owner = source or cls.__name__
        if not isinstance(data, Mapping):
            raise ValueError(f"{owner}: expected a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"{owner}: unknown fields {unknown} (known: {sorted(fields)})")
        values = {}
        for name, value in data.items():
            nested = _nested_type(fields[name])
            values[name] = nested.from_dict(value, f"{owner}.{name}") if nested and isinstance(value, Mapping) \
                else value
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> Any:
        return cls.from_dict(json.loads(text))

    def _flat(self, data: Mapping) -> dict:
        """``data`` with the nested config sections flattened to dotted keys (one level per section)."""
        sections = {f.name for f in dataclasses.fields(self) if _nested_type(f) is not None}
        flat = {}
        for key, value in data.items():
            if key in sections and isinstance(value, Mapping):
                flat.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                flat[key] = value
        return flat

    def _saved_and_current(self, saved: Mapping) -> tuple[dict, dict]:
        """(saved, current) as flat dicts; the saved config is read through this class first, so a config written by an
        earlier version (e.g. with fields a later version no longer writes) compares by meaning, not by spelling."""
        try:
            saved = type(self).from_dict(saved).to_dict()
        except (TypeError, ValueError):
            saved = dict(saved)
        return self._flat(saved), self._flat(self.to_dict())

    def resume_differences(self, saved: Mapping) -> dict[str, tuple]:
        """{field: (saved, current)} for every field that differs, except the ``RESUMABLE`` ones (nested dotted)."""
        saved, current = self._saved_and_current(saved)
        return settings_differences(saved, current, self.RESUMABLE)

    def check_resumable(self, saved: Mapping, *, where: str, hint: str | None = None,
                        ignore: Iterable[str] = ()) -> None:
        """A ValueError listing what differs (:func:`diffguide.io.check_same_settings`) unless ``saved`` equals this
        config up to the ``RESUMABLE`` fields (and ``ignore``)."""
        saved, current = self._saved_and_current(saved)
        default_hint = (f"only {', '.join(self.RESUMABLE)} may change on resume; use another output folder"
                        if self.RESUMABLE else "use the same settings, or another output folder")
        check_same_settings(saved, current, where=where, ignore=(*self.RESUMABLE, *ignore), hint=hint or default_hint)
