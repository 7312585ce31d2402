"""Secrets in the config: redacted wherever a config is written or shown, read back from the
environment when a saved config is used again. A field is secret by its ``secret(...)`` mark
in ``schema.py``; nothing else here names a key."""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel

from orchestrator.config.errors import ConfigError
from orchestrator.config.schema import REDACTED, SECRET, Config, get

# secret options of a filesystem (sweep.storage_filesystem) and their standard variables
SECRET_OPTIONS = {
    "access_key": "AWS_ACCESS_KEY_ID",
    "secret_key": "AWS_SECRET_ACCESS_KEY",
    "session_token": "AWS_SESSION_TOKEN",
}
URI_VARIABLES = 2  # a URI secret's environment: the user's variable and the password's

# scheme://USERINFO@: greedy up to the token's last '@', so a password holding an unencoded
# '@' or '/' is hidden whole (an '@' later in a path hides the host too: safe side)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s'\"<>]+@")


def redact_uri(text: str) -> str:
    """Every ``scheme://user:password@host`` in ``text`` as ``scheme://***@host``: for a URI
    on its own, or any message that may quote one."""
    return _USERINFO.sub(rf"\g<scheme>{REDACTED}@", text)


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``http://user:pw@host:5000`` -> (``http://host:5000``, user, pw), percent-decoded."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri, None, None
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), user, password


def secret_fields(cls: type[BaseModel] | None = None, prefix: str = "") -> dict[str, dict]:
    """Every field marked with ``secret(...)``: dotted key -> its mark."""
    cls = Config if cls is None else cls
    out: dict[str, dict[str, Any]] = {}
    for name, f in cls.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            out.update(secret_fields(f.annotation, f"{prefix}{name}."))
        elif isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get(SECRET):
            out[f"{prefix}{name}"] = dict(f.json_schema_extra)
    return out


def redacted_value(kind: str, value: Any) -> Any:
    """``value`` as it is written or shown (``kind``: a field's ``secret(...)`` kind)."""
    if value is None or value == "":
        return value  # nothing to hide (and "unset" stays visible as such)
    if kind == "options":  # a dict of options, some of them secret by name
        return {
            k: REDACTED if k in SECRET_OPTIONS and v not in (None, "") else v
            for k, v in value.items()
        }
    if isinstance(value, dict):
        return {k: redacted_value(kind, v) for k, v in value.items()}
    if kind == "uri":
        return redact_uri(str(value))
    return REDACTED


def redact(cfg: Config) -> Config:
    """A copy with every secret field redacted: what goes into MLflow params, config.yaml,
    the sweep folder's state files, printed output and error messages."""
    out = cfg.model_copy(deep=True)
    for dotted, meta in secret_fields().items():
        _set(out, dotted, redacted_value(meta[SECRET], get(out, dotted)))
    return out


def secrets_set(cfg: Config) -> dict[str, tuple[str, ...]]:
    """The secret keys this config gives a value to (a URI: only with credentials in it),
    each with the environment variables that carry it instead."""
    out = {}
    for dotted, meta in secret_fields().items():
        value, kind = get(cfg, dotted), meta[SECRET]
        if value not in (None, "") and (
            redacted_value(kind, value) != value or is_redacted(kind, value)
        ):
            out[dotted] = tuple(meta["env"])
    return out


def is_redacted(kind: str, value: Any) -> bool:
    """Whether ``value`` is a redacted secret of this kind (to be read back, not used)."""
    if kind == "uri":
        return isinstance(value, str) and f"://{REDACTED}@" in value
    if kind == "options":
        return isinstance(value, dict) and REDACTED in value.values()
    return value == REDACTED


def restore(cfg: Config, keys: Sequence[str] | None = None) -> Config:
    """A copy with each redacted secret (of ``keys``, default all) read back from the
    environment; ConfigError naming the key and the variable when one is not set."""
    out = cfg.model_copy(deep=True)
    for dotted, meta in secret_fields().items():
        value, env = get(out, dotted), tuple(meta["env"])
        if (keys is not None and dotted not in keys) or not is_redacted(meta[SECRET], value):
            continue
        if meta[SECRET] == "options":
            value = dict(value)
            for option, variable in SECRET_OPTIONS.items():
                if value.get(option) != REDACTED:
                    continue
                if not os.environ.get(variable):
                    raise ConfigError(
                        f"{dotted}.{option}",
                        "was saved redacted (secrets are never written)",
                        f"export {variable}",
                    )
                value[option] = os.environ[variable]
        elif meta[SECRET] == "uri":
            user, password = (
                (os.environ.get(env[0]), os.environ.get(env[1]))
                if len(env) == URI_VARIABLES
                else (None, None)
            )
            if not user:
                raise ConfigError(
                    dotted,
                    f"{value} was saved with its credentials redacted (secrets are never written)",
                    f"export {' and '.join(env)} (that server's credentials)",
                )
            userinfo = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
            value = value.replace(f"://{REDACTED}@", f"://{userinfo}@", 1)
        else:
            value = os.environ.get(env[0]) if env else None
            if not value:
                raise ConfigError(
                    dotted,
                    "was saved redacted (secrets are never written)",
                    f"export {env[0] if env else 'its value'}",
                )
        _set(out, dotted, value)
    return out


def _set(cfg: Config, dotted: str, value: Any) -> None:
    """Set a secret on a copy being built here (nothing else assigns to a config)."""
    *parents, leaf = dotted.split(".")
    node: Any = cfg
    for part in parents:
        node = getattr(node, part)
    setattr(node, leaf, value)
