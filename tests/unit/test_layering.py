"""The layering rule the redesign (issue 16) builds on: the modules that will form
`orchestrator/core` and `orchestrator/config` import neither Ray nor MLflow, so they load
in a second and are testable without either."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

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


# What each layer may import of the others, as docs/architecture.md draws it: checked on
# every import statement, at module level or inside a function, by reading the source.
LAYERS = ("config", "core", "execution", "tracking", "sweep", "analysis", "serving", "launch")
MAY_NOT = {
    "config": set(LAYERS) - {"config"},
    "core": set(LAYERS) - {"config", "core"},
    "execution": {"tracking", "sweep", "analysis", "serving", "launch"},
    "tracking": {"execution", "sweep", "analysis", "serving", "launch"},
    "sweep": {"serving", "launch"},
    "analysis": {"execution", "sweep", "serving", "launch"},
    "serving": {"sweep", "launch", "analysis"},
    "launch": {"sweep", "serving", "analysis"},
}
# the model server reads the registry; it never loads the writer or the champion code
SERVING_NEVER = {"orchestrator.tracking.writer", "orchestrator.tracking.champions"}


def _imports(path: Path) -> set[str]:
    """Every ``orchestrator.*`` module a source file imports, wherever the import sits."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("orchestrator.")}


def _broken_rules(root: Path) -> list[str]:
    broken = []
    for layer in LAYERS:
        for path in sorted((root / "orchestrator" / layer).glob("*.py")):
            for name in sorted(_imports(path)):
                target = name.split(".")[1]
                if target in MAY_NOT[layer] or (layer == "serving" and name in SERVING_NEVER):
                    broken.append(f"{layer}/{path.name} imports {name}")
    return broken


def test_each_layer_imports_only_the_layers_below_it() -> None:
    assert _broken_rules(ROOT) == []


def test_only_the_sweep_joins_execution_and_tracking() -> None:
    # Outside sweep/, a module that imports both takes nothing of execution but its start-up
    # (runtime: Ray's environment, init_ray): cli.py wires the commands, serve_ray.py starts
    # the Ray Serve application. Trials, seams and Tune stay the sweep's.
    joined = {}
    for path in sorted((ROOT / "orchestrator").rglob("*.py")):
        found = _imports(path)
        if {m.split(".")[1] for m in found} >= {"execution", "tracking"}:
            joined[path.relative_to(ROOT).as_posix()] = sorted(
                m for m in found if m.startswith("orchestrator.execution.")
            )
    outside = {p: mods for p, mods in joined.items() if not p.startswith("orchestrator/sweep/")}
    assert outside == {
        "orchestrator/cli.py": ["orchestrator.execution.runtime"],
        "orchestrator/serving/serve_ray.py": ["orchestrator.execution.runtime"],
    }
    assert "orchestrator/sweep/driver.py" in joined


def test_the_rule_check_catches_a_function_level_import(tmp_path: Path) -> None:
    bad = tmp_path / "orchestrator" / "core"
    bad.mkdir(parents=True)
    (bad / "sneaky.py").write_text("def f():\n    from orchestrator.tracking import writer\n")
    assert _broken_rules(tmp_path) == [
        "core/sneaky.py imports orchestrator.tracking",
        "core/sneaky.py imports orchestrator.tracking.writer",
    ]
