"""Command-line flags generated from an options dataclass, so that each workflow declares its options once.

A field made with :func:`option` carries its help text, an optional flag name and extra ``argparse``
arguments; :func:`add_dataclass_flags` adds one flag per field and :func:`dataclass_from_args` reads them
back. No torch here: the command line builds its parsers from these before any command runs.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Sequence, TypeVar

__all__ = ["option", "add_dataclass_flags", "dataclass_from_args", "flag_name", "changed_flags"]

T = TypeVar("T")


def option(default: Any, help: str, flag: str | None = None, **argparse_kwargs: Any) -> Any:
    """A dataclass field with ``default`` whose command-line flag has ``help`` (``flag`` overrides the name
    derived from the field's; ``argparse_kwargs`` go to ``add_argument``, e.g. ``type`` or ``choices``)."""
    return dataclasses.field(default=default, metadata=dict(help=help, flag=flag, argparse=argparse_kwargs))


def add_dataclass_flags(parser: argparse.ArgumentParser, options_class: type, exclude: Sequence[str] = (),
                        **defaults: Any) -> None:
    """Add one flag per field of ``options_class`` (``--batch-size`` for ``batch_size``; booleans that
    default to True get ``--no-...``); ``defaults`` override the dataclass defaults for this command."""
    for f in dataclasses.fields(options_class):
        if f.name in exclude or "help" not in f.metadata:
            continue
        meta = f.metadata
        default = defaults.get(f.name, f.default)
        kwargs = dict(meta["argparse"])
        if f.type in ("bool",) and "action" not in kwargs:
            kwargs["action"] = "store_false" if default else "store_true"
        parser.add_argument(flag_name(f), dest=f.name, default=default, help=meta["help"], **kwargs)


def flag_name(field: dataclasses.Field) -> str:
    """The command-line flag of an :func:`option` field (``--batch-size`` for ``batch_size``, or its own)."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def changed_flags(options: Any, exclude: Sequence[str] = ()) -> list[str]:
    """The flags of ``options``' fields (a dataclass instance) whose values differ from the class defaults,
    leaving out those in ``exclude``: what a caller that cannot apply them must refuse."""
    def default(f: dataclasses.Field) -> Any:
        return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]

    return [flag_name(f) for f in dataclasses.fields(options)
            if f.name not in exclude and getattr(options, f.name) != default(f)]


def dataclass_from_args(options_class: type[T], args: argparse.Namespace) -> T:
    """The ``options_class`` instance an argparse namespace (from :func:`add_dataclass_flags`) describes."""
    return options_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(options_class)
                            if hasattr(args, f.name)})
