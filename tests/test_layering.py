"""The layering rule the redesign (issue 16) builds on: the modules that will form
`orchestrator/core` and `orchestrator/config` import neither Ray nor MLflow, so they load
in a second and are testable without either."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def _package(name: str) -> list[str]:
    """A package and every module in it, found on disk (a new module is covered unasked)."""
    folder = ROOT.joinpath(*name.split("."))
    return [name] + sorted(f"{name}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__")


# core and config import neither Ray nor MLflow (the rule); the rest are pure today
PURE = [
    *_package("orchestrator.config"),
    *_package("orchestrator.core"),
    "orchestrator.progress",
    "orchestrator.plots",
    "jobs.curves",
]
FORBIDDEN = ("ray", "mlflow")

PROBE = f"""
import importlib, json, sys
FORBIDDEN = {FORBIDDEN!r}
found = {{}}
for name in sys.argv[1:]:
    importlib.import_module(name)
    # cumulative: the first module after which a forbidden package appears pulled it in
    found[name] = sorted(k for k in sys.modules if k.split(".")[0] in FORBIDDEN)
print(json.dumps(found))
"""


def test_core_and_config_modules_import_neither_ray_nor_mlflow() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *PURE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    found = json.loads(out.strip().splitlines()[-1])
    assert list(found) == PURE
    pulled = {name: mods[:3] for name, mods in found.items() if mods}
    assert not pulled, f"these imported Ray or MLflow at module level: {pulled}"


def test_the_probe_catches_a_module_that_imports_ray() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "orchestrator.config", "orchestrator.tune_asha"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    found = json.loads(out.strip().splitlines()[-1])
    assert found["orchestrator.config"] == [] and "ray" in found["orchestrator.tune_asha"]
