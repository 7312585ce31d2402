"""`orchestrator report`: the self-contained HTML report of a sweep (written into a real
MLflow SQLite store by hand, no Ray), opened in a real headless Chromium (Debian's) to
check that every picture in it renders."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from conftest import rendered_in_browser, sweep_on_disk
from orchestrator import cli
from orchestrator.analysis import report, review

pytestmark = pytest.mark.slow


def test_the_report_is_one_file_whose_pictures_render_in_a_browser(tmp_path: Path) -> None:
    folder = sweep_on_disk(tmp_path)
    assert cli.main(["report", "rev", "--storage", str(tmp_path / "results")]) == 0
    page = folder / report.REPORT
    text = page.read_text()
    # self-contained: every picture inlined, nothing to fetch
    assert not re.search(r'(src|href)="(http|file|/)', text)
    sources = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(sources) == 5  # parallel coordinates, fit map, 3 learning curves
    assert all(base64.b64decode(s)[:4] == b"\x89PNG" for s in sources)
    for expected in (
        "overfit",
        "good_fit",
        "underfit",
        "sweep:",
        "train.weight_decay",
        "No champion was registered",
    ):
        assert expected in text
    assert rendered_in_browser(page, tmp_path) == (5, 5)
    # and the same check catches a picture that does not render
    broken = tmp_path / "broken.html"
    broken.write_text(text.replace(sources[0], "bm90IGEgcGljdHVyZQ=="))
    assert rendered_in_browser(broken, tmp_path) == (5, 4)


def test_the_report_lands_on_the_sweeps_mlflow_run(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    sweep_on_disk(tmp_path)
    view = review.load("rev", str(tmp_path / "results"))
    report.write(view)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert report.REPORT in [a.path for a in client.list_artifacts(view.parent_run_id)]
