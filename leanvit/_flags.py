"""Command-line flags generated from an options dataclass, so that each workflow declares its options once.

A field made with :func:`option` carries its help text, an optional flag name and extra ``argparse``
arguments; :func:`add_dataclass_flags` adds one flag per field and :func:`dataclass_from_args` reads them
back. No torch here: the command line builds its parsers from these before any command runs.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Mapping, Sequence, TypeVar

__all__ = ["option", "add_dataclass_flags", "dataclass_from_args", "flag_name", "changed_flags"]

T = TypeVar("T")


def option(default: Any, help: str, flag: str | None = None, exclusive: str | None = None,
           **argparse_kwargs: Any) -> Any:
    """A dataclass field with ``default`` whose command-line flag has ``help`` (``flag`` overrides the name
    derived from the field's, a name without dashes makes a positional argument; fields with the same
    ``exclusive`` name are mutually exclusive flags; ``argparse_kwargs`` go to ``add_argument``, e.g. ``type``
    or ``choices``). A list default is copied for each instance."""
    metadata = dict(help=help, flag=flag, exclusive=exclusive, argparse=argparse_kwargs)
    if isinstance(default, list):
        return dataclasses.field(default_factory=default.copy, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def add_dataclass_flags(parser: argparse.ArgumentParser, options_class: type, exclude: Sequence[str] = (),
                        helps: Mapping[str, str] | None = None, **defaults: Any) -> None:
    """Add one flag per field of ``options_class`` (``--batch-size`` for ``batch_size``; booleans that
    default to True get ``--no-...``); ``helps`` and ``defaults`` override the fields' help texts and
    defaults for this command."""
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(options_class):
        if f.name in exclude or "help" not in f.metadata:
            continue
        meta = f.metadata
        default = defaults.get(f.name, _default(f))
        kwargs = dict(meta["argparse"])
        if f.type in ("bool",) and "action" not in kwargs:
            kwargs["action"] = "store_false" if default else "store_true"
        name = flag_name(f)
        if name.startswith("-"):  # a flag stores into its field (a positional's name is its dest already)
            kwargs["dest"] = f.name
            if meta["flag"] and kwargs.get("action") is None and "choices" not in kwargs:
                # a renamed flag shows its own name as the value's metavar: --batch BATCH, not BATCH_SIZE
                kwargs.setdefault("metavar", name.lstrip("-").replace("-", "_").upper())
        target = parser
        if meta.get("exclusive"):
            if meta["exclusive"] not in groups:
                groups[meta["exclusive"]] = parser.add_mutually_exclusive_group()
            target = groups[meta["exclusive"]]
        help_text = (helps or {}).get(f.name, meta["help"])
        if f.name in defaults and default != _default(f) and kwargs.get("action") not in ("store_true", "store_false"):
            # the field's help names the class default; a command with its own (leanvit demo) says so
            help_text += f" [this command's default: {default}]".replace("%", "%%")
        target.add_argument(name, default=default, help=help_text, **kwargs)


def _default(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default is dataclasses.MISSING else field.default  # type: ignore[misc]


def flag_name(field: dataclasses.Field) -> str:
    """The command-line flag of an :func:`option` field (``--batch-size`` for ``batch_size``, or its own)."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def changed_flags(options: Any, exclude: Sequence[str] = ()) -> list[str]:
    """The flags of ``options``' fields (a dataclass instance) whose values differ from the class defaults,
    leaving out those in ``exclude``: what a caller that cannot apply them must refuse."""
    return [flag_name(f) for f in dataclasses.fields(options)
            if f.name not in exclude and getattr(options, f.name) != _default(f)]


def dataclass_from_args(options_class: type[T], args: argparse.Namespace) -> T:
    """The ``options_class`` instance an argparse namespace (from :func:`add_dataclass_flags`) describes."""
    return options_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(options_class)
                            if hasattr(args, f.name)})
