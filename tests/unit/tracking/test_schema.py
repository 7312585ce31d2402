"""Every MLflow key in one schema module: nothing else spells one, the baseline is numbers
(and the prose 0.1 wrote is still read)."""

from __future__ import annotations

import math
import re

import pytest

from conftest import ROOT
from orchestrator.tracking import schema

# "orchestrator.json" is the sweep folder's state file, "orchestrator.cli" a module path
NOT_KEYS = {"orchestrator.json", "orchestrator.cli"}


def _is_module(name: str) -> bool:
    """``orchestrator.core.diagnosis`` in a docstring is a module, not a key."""
    path = ROOT.joinpath(*name.rstrip(".").split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def test_no_module_but_the_schema_spells_an_mlflow_key() -> None:
    found = []
    for path in sorted((ROOT / "orchestrator").rglob("*.py")):
        if path == ROOT / "orchestrator/tracking/schema.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for key in re.findall(r"""["'](orchestrator\.[a-z_.]+)""", line):
                if key not in NOT_KEYS and not key.startswith(
                    ("orchestrator.core", "orchestrator.t")
                ):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {key}")
    assert not found, found


def test_the_keys_keep_the_names_0_1_wrote() -> None:
    assert schema.ROLE == "orchestrator.role" and schema.DIAGNOSIS == "orchestrator.diagnosis"
    assert schema.CHAMPION_VERSION == "orchestrator.champion_version"
    assert (
        schema.OUTBOX_ID == "orchestrator.outbox_id" and schema.BASELINE == "orchestrator.baseline"
    )
    values = [v for k, v in vars(schema).items() if k.isupper() and isinstance(v, str)]
    assert len(values) == len(set(values))  # no key twice under two names


def test_the_baseline_is_read_back_as_numbers_and_from_0_1_prose() -> None:
    tags = schema.baseline_tags(2.302585, 0.1012)
    assert schema.read_baseline(tags) == (2.302585, 0.1012)
    legacy = {schema.BASELINE: "loss=2.3026 accuracy=0.1000 (predicting the training ...)"}
    assert schema.read_baseline(legacy) == pytest.approx((2.3026, 0.1))
    loss, acc = schema.read_baseline({})
    assert math.isnan(loss) and math.isnan(acc)
