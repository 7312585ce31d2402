"""A multi-worker trial cannot hang at its end, and a stalled trial stops the sweep with an
error naming it. Real local Ray: Tune running a 2-worker TorchTrainer trial, and a real
Tune run with the sweep's watchdog.

Ray 2.60's own bridge (``TuneReportCallback``) deadlocks when the trial takes the Train run's
last report only after ``fit()`` has returned (see ``orchestrator/execution/relay.py``). The
first test forces that interleaving: every ``ray.util.queue.Queue.get`` in the trial's process
waits a few seconds first, so the last report is taken late. With Ray's bridge this trial
hangs every time (checked before the fix); with the project's relay it ends with every epoch."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import make_cfg
from orchestrator.execution import runtime

pytestmark = pytest.mark.slow
DELAY_S = 6.0  # longer than a Train run takes to shut down after its last report here


@pytest.fixture(scope="module")
def ray_runtime() -> Any:
    import ray

    runtime.init_ray()
    yield
    ray.shutdown()


def _fit_with_deadline(tuner: Any, seconds: float) -> Any:
    box: dict[str, Any] = {}

    def fit() -> None:
        try:
            box["results"] = tuner.fit()
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the Tune run did not end in {seconds:g} s: a trial hung"
    if "error" in box:
        raise box["error"]
    return box["results"]


def test_a_late_take_of_the_last_report_does_not_hang_a_multi_worker_trial(
    ray_runtime: Any, digits_path: Path, tmp_path: Path
) -> None:
    from ray import tune

    from orchestrator.execution import trials

    cfg = make_cfg(
        str(digits_path),
        **{
            "scaling.num_workers": 2,
            "train.epochs": 2,
            "model.hidden": [16],
            "data.max_train_rows": 200,
            "experiment": "trialend",
        },
    )
    inner = trials.make_trainable(cfg, "stamp", str(tmp_path), None)

    def late_takes(trial_config: dict[str, Any]) -> None:
        from ray.util import queue

        original = queue.Queue.get

        def slow_get(self: Any, *args: Any, **kw: Any) -> Any:
            time.sleep(DELAY_S)  # the relay (Ray's or ours) takes each report late
            return original(self, *args, **kw)

        queue.Queue.get = slow_get  # type: ignore[method-assign]
        inner(trial_config)

    trainable = tune.with_resources(late_takes, trials.trial_resources(cfg))
    tuner = tune.Tuner(
        trainable,
        param_space={},
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(name="trialend", storage_path=str(tmp_path), verbose=0),
    )
    results = _fit_with_deadline(tuner, 240)
    result = results[0]
    assert result.error is None, result.error
    assert result.metrics["epoch"] == 2  # the last epoch reached Tune
    assert result.metrics["checkpoint_path"]  # with the path of its checkpoint
    assert result.metrics["training_iteration"] == 2  # two results: one per epoch, no more


def test_a_silent_trial_stops_the_sweep_with_an_error_naming_it(
    ray_runtime: Any, tmp_path: Path
) -> None:
    from ray import tune

    from orchestrator.analysis import progress
    from orchestrator.sweep import tuner

    def stuck(trial_config: dict[str, Any]) -> None:
        tune.report({"epoch": 1, "val_loss": 1.0})
        time.sleep(3600)  # a trial that never reports again nor ends

    cfg = make_cfg(**{"sweep.stall_timeout": 4, "train.epochs": 12})
    run = tuner.make_tuner(
        cfg,
        tune.with_resources(stuck, {"cpu": 0, "memory": 2**20}),
        tuner.Search({"model.dropout": 0.25}),
        [],
        str(tmp_path),
        "stuck",
    )
    started = time.monotonic()
    with pytest.raises(progress.SweepStalled) as err:
        _fit_with_deadline(run, 120)
    text = str(err.value)
    assert re.search(r"^trial \w+_00000 \(", text), text
    assert "model.dropout=0.2500" in text and "epoch 1 of 12" in text, text
    assert "sweep.stall_timeout is 4 s" in text, text
    assert time.monotonic() - started < 60
