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
    "orchestrator.tracking.schema",
    "orchestrator.tracking.location",
    "orchestrator.tracking.server",
    "orchestrator.analysis.progress",
    "orchestrator.analysis.plots",
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


def _run(code: str, *modules: str) -> object:
    """``code`` run with ``modules`` as its arguments in a fresh interpreter: its last line,
    parsed as JSON."""
    out = subprocess.run(
        [sys.executable, "-c", code, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_core_and_config_modules_import_neither_ray_nor_mlflow() -> None:
    found = _run(PROBE, *PURE)
    assert isinstance(found, dict) and list(found) == PURE
    pulled = {name: mods[:3] for name, mods in found.items() if mods}
    assert not pulled, f"these imported Ray or MLflow at module level: {pulled}"


def test_the_probe_catches_a_module_that_imports_ray() -> None:
    found = _run(PROBE, "orchestrator.config", "orchestrator.execution.tune_asha")
    assert isinstance(found, dict) and found["orchestrator.config"] == []
    assert "ray" in found["orchestrator.execution.tune_asha"]


WRITER = ("orchestrator.tracking.writer", "orchestrator.tracking.champions", "orchestrator.sweep")
LOADED = (
    "import importlib, json, sys\n"
    "importlib.import_module(sys.argv[1])\n"
    "print(json.dumps(sorted(m for m in sys.modules if m.startswith('orchestrator.'))))"
)


def test_the_model_server_uses_the_registry_reader_not_the_tracking_writer() -> None:
    for server in ("orchestrator.serving.serve", "orchestrator.serving.serve_ray"):
        loaded = set(_run(LOADED, server))  # type: ignore[call-overload]
        assert {"orchestrator.tracking.registry", "orchestrator.core.modelfile"} <= loaded
        assert not loaded & set(WRITER), f"{server} pulls in {sorted(loaded & set(WRITER))}"
