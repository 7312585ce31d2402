"""Loading: a YAML file (or nothing), dotted ``key=value`` overrides, validated once.

Every error names the dotted key and says the fix, and is raised before Ray or MLflow
start (``ConfigError``; the CLI turns it into exit code 2). Validation never changes what
it checks: it builds a new ``Config``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from orchestrator.config import checks
from orchestrator.config.errors import ConfigError
from orchestrator.config.schema import REDACTED, Config
from orchestrator.config.secrets import redact, restore


def load(
    path: str | os.PathLike[str] | None, overrides: Sequence[str] = (), only: str | None = None
) -> Config:
    """Read a YAML file (or nothing), apply ``key=value`` overrides, validate.

    ``only="serve"`` checks types everywhere but the value rules of that section alone
    (serving needs no data path)."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(
                "<file>",
                f"config file {str(p)!r} does not exist",
                "pass the path of a YAML file, e.g. jobs/configs/quickstart.yaml",
            )
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError("<file>", f"{p} is not valid YAML: {e}", "fix the YAML syntax") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                "<file>",
                f"{p} must hold a mapping of sections",
                "start the file with keys such as 'data:' and 'train:'",
            )
        raw = loaded or {}
    for item in overrides:
        apply_override(raw, item)
    # a redacted secret (`orchestrator submit` sends only those) is read from the environment
    if only == "serve":
        return restore(parse(raw, only="serve"))
    return restore(from_dict(raw))


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (numbers, lists)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(
            item,
            "an override must look like key=value",
            "write e.g. train.lr=0.01 or model.hidden=[128,128]",
        )
    if text.strip() == REDACTED:  # a redacted secret (what submit sends); YAML reads an alias
        set_dotted(raw, key, REDACTED)
        return
    set_dotted(raw, key, yaml.safe_load(text) if text.strip() else None)


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict of raw config (before validation)."""
    parts = key.split(".")
    if key.startswith("sweep.space."):  # space keys themselves contain dots
        parts = ["sweep", "space", key[len("sweep.space.") :]]
    node = raw
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if node is None:  # `sweep:` with nothing under it, or `sweep: null`
            section = ".".join(parts[: i + 1])
            raise ConfigError(
                section,
                f"is empty (null), so {key} has no section to go in",
                f"remove '{parts[i]}:' from the file to keep its defaults, or give it keys",
            )
        if not isinstance(node, dict):
            raise ConfigError(key, f"'{part}' is not a section", "override a leaf key")
    node[parts[-1]] = value


def from_dict(raw: dict[str, Any]) -> Config:
    """A validated ``Config`` from nested raw values (a parsed YAML file, a saved config)."""
    cfg = parse(raw)
    checks.cross_section(cfg)
    checks.space(cfg, with_values)
    return cfg


def parse(raw: Any, only: str | None = None) -> Config:
    """Types, unknown keys and each section's own rules (pydantic), as a ``ConfigError``."""
    if not isinstance(raw, dict):
        raise ConfigError(
            "<root>", f"expected a mapping, got {_show(raw)}", "write the config as sections"
        )
    try:
        return Config.model_validate(raw, context={"only": only})
    except ValidationError as e:
        raise _config_error(e.errors()[0]) from None


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """A validated copy of ``cfg`` with dotted keys set (how a trial gets its config)."""
    raw = to_dict(cfg)
    for dotted, v in values.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = v
    out = parse(raw)
    checks.cross_section(out)  # the space was checked with the config it came from
    return out


# ---------------------------------------------------------------- pydantic's errors, as ours

_TYPE_NAMES = {
    "int_type": ("an integer", "int", "to e.g. 4"),
    "float_type": ("a number", "float", "to e.g. 0.1"),
    "bool_type": ("true or false", "bool", ": true"),
    "string_type": ("text", "str", ': "..."'),
    "list_type": ("a list", "list", ": [...]"),
    "dict_type": ("a mapping", "dict", ": {}"),
}


def _config_error(err: ErrorDetails) -> ConfigError:
    """One pydantic error in today's words: dotted key, problem, one-line fix."""
    ctx = err.get("ctx") or {}
    if isinstance(ctx.get("error"), ConfigError):  # a rule beside the fields
        return ctx["error"]
    loc = err["loc"]
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        names = sorted(_section_at(loc[:-1]).model_fields)
        return ConfigError(key, "unknown key", f"remove it or use one of: {', '.join(names)}")
    if kind == "model_type":  # a section that is not a mapping
        if value is None:  # `sweep:` with every key under it commented out, or `sweep: null`
            return ConfigError(
                key,
                "is empty (null), not a section of keys",
                f"remove '{loc[-1]}:' to keep its defaults, or give it keys",
            )
        return ConfigError(
            key, f"expected a mapping, got {_show(value)}", f"write '{key}:' as a section of keys"
        )
    if kind == "finite_number":
        return ConfigError(key, f"must be a finite number, got {value!r}", f"set {key} to e.g. 0.1")
    if kind == "literal_error":
        return ConfigError(
            key,
            f"unknown {str(loc[-1]).replace('_', ' ')} {value!r}",
            f"use {ctx.get('expected', 'one of the documented values')}",
        )
    what, name, example = _TYPE_NAMES.get(kind, ("another value", "?", " as documented"))
    if value is None:
        return ConfigError(key, "is empty", f"give it a value of type {name}")
    return ConfigError(key, f"expected {what}, got {_show(value)}", f"set {key}{example}")


def _section_at(loc: tuple[int | str, ...]) -> type[Any]:
    cls: Any = Config
    for part in loc:
        if isinstance(part, str) and part in cls.model_fields:
            cls = cls.model_fields[part].annotation
    return cls


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


# ---------------------------------------------------------------- writing it out


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain nested values (what ``from_dict`` reads back)."""
    return cfg.model_dump()


def flatten(cfg: Config) -> dict[str, Any]:
    """Dotted params for MLflow: ``train.weight_decay`` -> value (the search space as JSON),
    secrets redacted."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict) and k != "space":
                walk(v, f"{prefix}{k}.")
            elif isinstance(v, (dict, list)):
                out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True)
            else:
                out[f"{prefix}{k}"] = v

    walk(to_dict(redact(cfg)), "")
    return out


def config_hash(cfg: Config) -> str:
    """Of the redacted config: the same with any password, and no oracle to guess one by."""
    raw = to_dict(redact(cfg))
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:12]


def to_yaml(cfg: Config) -> str:
    """The config as YAML, secrets redacted (what is written or shown, never read back as
    is: ``restore`` brings the secrets back from the environment)."""
    return yaml.safe_dump(to_dict(redact(cfg)), sort_keys=False)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a config file (`orchestrator config schema`): editors use it to
    check and complete YAML files."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
