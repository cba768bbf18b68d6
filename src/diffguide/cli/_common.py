"""Checks every command makes before its work starts (no torch import at module level: `--help` stays fast)."""

from __future__ import annotations

import re
from pathlib import Path

import click

__all__ = ["dashed", "device_or_fail", "finite", "overwrite_option", "refuse_existing", "with_flag_names",
           "writable_or_fail"]


def finite(ctx, param, value, *, low: float | None = None, hint: str = ""):
    """click callback: a finite number (nan and ±inf pass click's FloatRange) — :func:`diffguide.config.check_number`
    as a click error; ``functools.partial(finite, low=0)`` adds a lower bound."""
    from ..config import check_number

    if value is not None:
        try:
            check_number("value", value, low=low, hint=hint)
        except ValueError as err:
            raise click.BadParameter(str(err).removeprefix("value: "), ctx=ctx, param=param) from None
    return value


def device_or_fail(device, param_hint: str = "--device") -> str:
    """:func:`diffguide.devices.resolve_device` as a click error naming the flag."""
    from ..devices import resolve_device

    try:
        return str(resolve_device(device, what=param_hint))
    except ValueError as err:
        raise click.BadParameter(str(err).removeprefix(f"{param_hint}: "), param_hint=param_hint) from None


def refuse_existing(paths, overwrite: bool, param_hint: str = "--out") -> None:
    """A click error naming the flag when one of ``paths`` exists and ``overwrite`` was not given."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        raise click.BadParameter(f"{', '.join(existing)} already exists; pass --overwrite to replace it, or choose "
                                 "another output", param_hint=param_hint)


def writable_or_fail(path, *, is_dir: bool, param_hint: str = "--out") -> None:
    """A click error naming the flag when the output cannot be written (checked before the work starts)."""
    from ..io import check_writable

    try:
        check_writable(path, what=param_hint, is_dir=is_dir)
    except ValueError as err:
        raise click.BadParameter(str(err).removeprefix(f"{param_hint}: "), param_hint=param_hint) from None


def overwrite_option(function):
    return click.option("--overwrite", is_flag=True,
                        help="Replace the output files if they exist (without it an existing output is an error).")(
        function)


_LEAD = re.compile(r"^((?:[A-Za-z]\w*\.)?[a-z_]\w*(?:, (?:[A-Za-z]\w*\.)?[a-z_]\w*)*): ")


def with_flag_names(message: str, flags: dict[str, str], *, keep_names: bool = False) -> str:
    """A library message ``"lr: expected ..."`` / ``"TrainConfig.num_train_timesteps: ..."`` as the CLI user knows it:
    the leading argument names replaced by their flags (``flags``: argument or ``Owner.field`` -> flag), or with
    ``keep_names`` followed by the name in brackets (where a --config JSON holds it); names with no flag are kept."""
    match = _LEAD.match(message)
    if not match:
        return message

    def shown(name: str) -> str:
        flag = flags.get(name, flags.get(name.rsplit(".", 1)[-1]))
        return name if flag is None else f"{flag} ({name})" if keep_names else flag

    names = [shown(name) for name in match.group(1).split(", ")]
    return ", ".join(names) + ": " + message[match.end():]


def dashed(names) -> dict[str, str]:
    """{python_name: --python-name} for the given argument names."""
    return {name: "--" + name.replace("_", "-") for name in names}
