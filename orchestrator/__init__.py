"""Find the bias/variance sweet spot at cluster scale: Ray Train + Ray Tune + MLflow.

The Python API (``orchestrator.api``): ``load_config``, ``sweep``, ``autopilot``, ``train`` and
``curve``.
Importing the package imports neither Ray, MLflow nor torch; ``load_config`` needs none of
them, and ``orchestrator.sweep`` (the callable package) imports Ray when first touched."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["autopilot", "curve", "load_config", "sweep", "train"]

if TYPE_CHECKING:
    from orchestrator.api import autopilot, curve, load_config, train


def __getattr__(name: str) -> Any:
    """The API's functions, imported on first use (``import orchestrator`` stays cheap).
    ``sweep`` is the ``orchestrator.sweep`` package itself, which is callable."""
    if name == "sweep":
        import importlib

        return importlib.import_module(f"{__name__}.sweep")
    if name in __all__:
        from orchestrator import api

        return getattr(api, name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
