"""The configuration reference (``docs/configuration.md``), generated from the schema: every
section and key with its type, default and documentation, so the page cannot drift from the
code (a test compares the two). `orchestrator config reference --out docs/configuration.md`
rewrites it."""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from orchestrator.config.schema import SECRET, Config

INLINE_DEFAULT = 60  # characters of a dict default shown in its row; longer: "see meaning"

HEADER = """# Configuration reference

Generated from `orchestrator/config/schema.py` by
`orchestrator config reference --out docs/configuration.md`; do not edit by hand.

A config is YAML plus dotted `key=value` overrides (`train.lr=0.01`, `model.hidden=[128,128]`),
the same for every command and for `jobs/`. Types are strict: an integer key refuses `"4"`
and `4.0`, a boolean `"yes"` and `1`; a number key takes a number or text that reads as one,
never `inf` or `nan`. Every error names the dotted key and a fix, and exits with code 2.
`orchestrator config schema` prints the JSON Schema (for editors); `orchestrator config check
CONFIG [key=value ...]` validates a config and prints it, secrets redacted.
"""


def markdown() -> str:
    """The whole reference page."""
    out = [HEADER]
    top = [(name, f) for name, f in Config.model_fields.items() if not _section(f)]
    for name, f in top:
        out.append(f"`{name}` ({_type(f)}, default {_default(f)}): {_doc(f)}\n")
    for name, f in Config.model_fields.items():
        section = _section(f)
        if section is not None:
            out += _table(name, section)
    return "\n".join(out)


def _table(prefix: str, cls: type[BaseModel]) -> list[str]:
    rows, nested = [], []
    for name, f in cls.model_fields.items():
        sub = _section(f)
        if sub is not None:
            nested += _table(f"{prefix}.{name}", sub)
            continue
        rows.append(f"| `{prefix}.{name}` | {_type(f)} | {_default(f)} | {_doc(f)} |")
    doc = " ".join((cls.__doc__ or "").split())
    head = [
        f"## `{prefix}`\n",
        f"{doc}\n",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    return [*head, *rows, "", *nested]


def _section(f: FieldInfo) -> type[BaseModel] | None:
    tp = f.annotation
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _type(f: FieldInfo) -> str:
    tp = f.annotation
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    return _name(tp).replace("|", "\\|")


def _name(tp: Any) -> str:
    """A type as the reader writes it: ``float | None``, not ``Optional[Annotated[...]]``
    (pydantic unwraps a bare ``Number``'s validator, but not one inside a union)."""
    if typing.get_origin(tp) is typing.Annotated:
        return _name(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _default(f: FieldInfo) -> str:
    if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get(SECRET):
        return "unset (secret)" if f.default is None else "(secret)"
    if f.default_factory is not None:
        if f.annotation is str:  # read from the environment (sweep.storage_path)
            return "see meaning"
        value: Any = f.default_factory()  # type: ignore[call-arg]
    else:
        value = f.default
    if isinstance(value, dict):
        return (
            "see meaning" if len(json.dumps(value)) > INLINE_DEFAULT else f"`{json.dumps(value)}`"
        )
    return "unset" if value is None else f"`{json.dumps(value)}`"


def _doc(f: FieldInfo) -> str:
    return " ".join((f.description or "").split()).replace("|", "\\|")
