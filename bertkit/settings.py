"""Settings of a job: one dataclass is the API's keyword arguments, the CLI's flags and their help,
the ``--settings FILE`` format and what a run saves and ``--resume`` reads back.

A field's help, allowed range and CLI form live in its metadata (``option(...)``), so adding an
option to a job is adding one field.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import files


def option(default: Any = MISSING, help: str = "", *, at_least: float | None = None,
           above: float | None = None, at_most: float | None = None,
           choices: tuple | None = None, flag: str | None = None, cli: bool = True,
           parse=None, metavar: str | None = None):
    """A settings field: its default, its help, and what values it accepts.

    ``at_least``/``above``/``at_most`` bound numbers, ``choices`` lists the allowed values;
    ``parse`` turns the flag's text into the value (e.g. comma-separated seeds); ``cli=False``
    keeps a field off the command line.
    """
    metadata = dict(help=help, at_least=at_least, above=above, at_most=at_most,
                    choices=choices, flag=flag, cli=cli, parse=parse, metavar=metavar)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def comma_ints(text: str) -> list[int]:
    """``"1,2,3"`` -> [1, 2, 3]."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"expected whole numbers separated by commas, got {text!r}") from None


def comma_names(text: str) -> list[str]:
    """``"age,price"`` -> ["age", "price"]."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError(f"expected names separated by commas, got {text!r}")
    return names


def one_or_more(kind):
    """A flag parser for ``"2"`` -> 2 and ``"2,3,4"`` -> [2, 3, 4] (a grid to search)."""

    def parse(text: str):
        values = [kind(part) for part in text.split(",") if part.strip()]
        if not values:
            raise ValueError(f"expected a value or values separated by commas, got {text!r}")
        return values[0] if len(values) == 1 else values

    parse.__name__ = kind.__name__
    return parse


class SettingsError(ValueError):
    """A setting out of its range, unknown, or differing from the run being resumed."""


def _typed(spec, value, source: str):
    """A settings file's ``value`` for the field ``spec``, as its type wants it: YAML reads
    ``1e-4`` as text; ``"false"`` is not false."""
    default = spec.default if spec.default is not MISSING else None
    if isinstance(default, bool) and not isinstance(value, bool):
        raise SettingsError(f"{source}: {spec.name} is true or false, got {value!r}.")
    if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(
            value, str):
        try:
            return type(default)(value)
        except ValueError:
            raise SettingsError(f"{source}: {spec.name} is a number, got {value!r}.") from None
    return value


def _same(a, b) -> bool:
    """Equal settings values; two spellings of one path are one path."""
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and a and b:
        first, second = Path(a), Path(b)
        return first == second or (first.exists() and second.exists()
                                   and first.resolve() == second.resolve())
    return False


@dataclass
class Settings:
    """Base of every job's settings dataclass."""

    def __post_init__(self):
        for spec in fields(self):
            if isinstance(getattr(self, spec.name), os.PathLike):  # saved as JSON: a str
                setattr(self, spec.name, os.fspath(getattr(self, spec.name)))
            check_value(spec, getattr(self, spec.name), f"{self.job_name()} setting {spec.name}")

    @classmethod
    def job_name(cls) -> str:
        return cls.__name__.removesuffix("Settings").lower()

    # -- files ---------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: dict, source: str = "settings", **overrides):
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SettingsError(f"{source}: unknown settings {unknown}; known: {sorted(known)}.")
        values = {name: _typed(known[name], value, source) for name, value in values.items()}
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def file_values(cls, path: str | Path) -> dict:
        """The names and values a JSON (or YAML) settings file gives."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as error:
                raise SettingsError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), "
                                    "or write the settings as JSON.") from error
            try:
                values = yaml.safe_load(text)
            except yaml.YAMLError as error:
                mark = getattr(error, "problem_mark", None)
                where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
                problem = getattr(error, "problem", None) or str(error).splitlines()[0]
                raise SettingsError(f"{where}: not valid YAML ({problem}).") from None
        else:
            try:
                values = json.loads(text)
            except json.JSONDecodeError as error:
                raise SettingsError(f"{path}:{error.lineno}:{error.colno}: not valid JSON "
                                    f"({error.msg}).") from None
        if not isinstance(values, dict):
            raise SettingsError(f"{path}: settings are names with values (a mapping), got "
                                f"{type(values).__name__}.")
        return values

    @classmethod
    def from_file(cls, path: str | Path, **overrides):
        """Settings from a JSON (or YAML) file; ``overrides`` that are not None win."""
        return cls.from_dict(cls.file_values(path), str(path), **overrides)

    def save(self, path: str | Path) -> None:
        files.write_json(path, asdict(self))

    def differences(self, other: Settings, ignore: tuple[str, ...] = ()) -> dict:
        """{name: (mine, other's)} for every field whose values differ (``runs/x/`` and
        ``./runs/x``, or a relative and an absolute path to one file, do not)."""
        mine, theirs = asdict(self), asdict(other)
        return {k: (v, theirs[k]) for k, v in mine.items()
                if k not in ignore and not _same(theirs[k], v)}

    def check_resumes(self, saved: Settings, ignore: tuple[str, ...] = ()) -> None:
        """A resumed run keeps the settings it started with: refuse any other value."""
        changed = saved.differences(self, ignore)
        if changed:
            shown = "; ".join(f"--{k.replace('_', '-')} {new!r} (the run has {old!r})"
                              for k, (old, new) in changed.items())
            raise SettingsError(f"--resume continues a run with the settings it was started with, "
                                f"but {shown}. Leave those flags out, or start a new run in "
                                "another --out.")

    # -- the command line ------------------------------------------------------------------------

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        """One ``--flag`` per field; they default to None, so what is not given is not set.
        The job's own fields come first, those it shares with other jobs after them."""
        own = cls.__dict__.get("__annotations__", {})
        for spec in sorted(fields(cls), key=lambda spec: spec.name not in own):
            meta = spec.metadata
            if not meta.get("cli", True):
                continue
            flag = meta.get("flag") or "--" + spec.name.replace("_", "-")
            default = None if spec.default is MISSING else spec.default
            # argparse formats help with %: a literal one ("~30% more time") must be doubled.
            text = (meta.get("help") or spec.name.replace("_", " ")).replace("%", "%%")
            if str(spec.type).startswith("bool"):
                shown = {True: " (default on)", False: " (default off)"}.get(default, "")
                parser.add_argument(flag, dest=spec.name, action=argparse.BooleanOptionalAction,
                                    default=None, help=text + shown)
                continue
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            parser.add_argument(flag, dest=spec.name, default=None, type=_flag_type(spec, flag),
                                choices=meta.get("choices"),
                                metavar=meta.get("metavar") or spec.name.upper(),
                                help=f"{text} (default {shown})" if default is not None
                                else text)

    @classmethod
    def given(cls, args: argparse.Namespace) -> dict:
        """The fields set on the command line."""
        return {f.name: getattr(args, f.name) for f in fields(cls)
                if getattr(args, f.name, None) is not None}


def check_value(spec, value, name: str) -> None:
    """Refuse a value outside the field's range or choices, naming the setting."""
    meta = spec.metadata
    if value is None:
        return
    choices = meta.get("choices")
    if choices and value not in choices:
        raise SettingsError(f"{name} is {value!r}; choose one of {', '.join(map(str, choices))}.")
    values = value if isinstance(value, list) else [value]
    for number in values:
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            continue
        low, above, high = meta.get("at_least"), meta.get("above"), meta.get("at_most")
        if (math.isnan(number) or (low is not None and number < low)
                or (above is not None and number <= above)
                or (high is not None and number > high)):
            raise SettingsError(f"{name} is {number!r}; it must be {_range_text(meta)}.")


def _range_text(meta) -> str:
    parts = []
    if meta.get("at_least") is not None:
        parts.append(f"at least {meta['at_least']:g}")
    if meta.get("above") is not None:
        parts.append(f"above {meta['above']:g}")
    if meta.get("at_most") is not None:
        parts.append(f"at most {meta['at_most']:g}")
    return " and ".join(parts)


def _flag_type(spec, flag: str):
    """Text -> value for a flag, checked against the field's range where it is parsed."""
    annotation = str(spec.type)
    parse = spec.metadata.get("parse")
    if parse is None:
        parse = (int if annotation.startswith("int") else
                 float if annotation.startswith("float") else str)

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{text!r} is not valid: {error}") from None
        try:
            check_value(spec, value, flag)
        except SettingsError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return value

    convert.__name__ = parse.__name__  # argparse names the type in its messages
    return convert
