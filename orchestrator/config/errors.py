"""``ConfigError``: the one form every bad setting is reported in (dotted key, problem, fix)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration value: ``key`` is the dotted path, ``fix`` one line on what to do."""

    def __init__(self, key: str, problem: str, fix: str):
        self.key, self.problem, self.fix = key, problem, fix
        super().__init__(f"config error at '{key}': {problem}\n  fix: {fix}")

    def __reduce__(self) -> tuple:  # so it crosses Ray's process boundaries intact
        return (ConfigError, (self.key, self.problem, self.fix))


def check(ok: bool, key: str, problem: str, fix: str) -> None:
    """Raise ``ConfigError(key, problem, fix)`` unless ``ok``: one line per rule."""
    if not ok:
        raise ConfigError(key, problem, fix)
