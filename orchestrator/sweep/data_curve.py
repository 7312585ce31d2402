"""`orchestrator curve EXPERIMENT`: would more data help the champion?

The champion's configuration is trained again on 1/8, 1/4, 1/2 and all of its training rows
(``data.max_train_rows``: the first N of the same shuffled training split, so the sizes are
nested), with ``curve.SEEDS`` fresh seeds each, through the sweep's own machinery (a Tune
grid of fast-path or TorchTrainer trials, a trial book writing one MLflow run per point).
The validation split stays the one the sweep used (``data.seed``). Each run's best-epoch
validation loss makes the curve that ``core.curve`` reads: the loss expected at 2x and 4x
the rows with its interval, and a verdict. In MLflow: one run with role ``curve`` under the
sweep's run, the points under it, the picture, the numbers and the verdict as tags; beside
the sweep: ``data_curve.json`` and ``data_curve.png``, which ``report`` shows.
"""

from __future__ import annotations

import ast
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray import tune

from orchestrator import config as config_mod
from orchestrator.analysis import plots
from orchestrator.config import Config, ConfigError
from orchestrator.core import curve, state, storage
from orchestrator.core.ledger import TrialRecord
from orchestrator.core.prepare import prepare
from orchestrator.execution import runtime, trials
from orchestrator.sweep import screen, tuner
from orchestrator.sweep.book import Book
from orchestrator.sweep.context import Context
from orchestrator.tracking import location, schema, writer

ROWS_KEY = "data.max_train_rows"


@dataclass
class CurveSummary:
    """What ``orchestrator curve`` found: the curve read, its points, and where it is."""

    result: curve.Curve
    points: list[tuple[int, int, float]]
    run_id: str
    folder: str


def champion_config(cfg: Config, tags: dict[str, str]) -> Config:
    """The sweep's config with its champion's searched values (the sweep run's
    ``orchestrator.champion.<key>`` tags), its seed left to the curve."""
    values = {
        k[len(schema.CHAMPION_VALUE) :]: _literal(v)
        for k, v in tags.items()
        if k.startswith(schema.CHAMPION_VALUE)
    }
    values.pop("train.seed", None)
    return config_mod.with_values(cfg, values)


def _literal(text: str) -> Any:
    """A value the driver tagged with ``str(value)``: a Python literal read back (``None``,
    ``1e-05``, ``[128, 128]``, ``True``), or the text itself (a string value)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run(
    experiment: str,
    storage_path: str = "results",
    out: Callable[[str], None] = print,
    verbose: bool = False,
    seeds: int = curve.SEEDS,
) -> CurveSummary:
    """Measure and read the champion's curve over training rows (see the module)."""
    from mlflow.tracking import MlflowClient

    path = state.find_sweep(experiment, storage_path)
    saved = state.read(path)
    if saved["phase"] != state.DONE:
        raise ConfigError(
            "EXPERIMENT",
            f"the sweep in {path} has not finished: it has no champion yet",
            f"finish it first: orchestrator resume {path}",
        )
    base = state.saved_config(saved)  # secrets come back from the environment, or fail here
    parent = MlflowClient(location.resolve_uri(base)).get_run(saved["parent_run_id"])
    cfg = champion_config(base, parent.data.tags)
    with screen.reading(out, cfg):
        prep = prepare(cfg, say=out)
    if prep.fingerprint != saved["fingerprint"]:
        raise ConfigError(
            "data.path",
            f"the data changed since the sweep ({prep.fingerprint} != {saved['fingerprint']})",
            "measure the curve against the data the champion was chosen on",
        )
    cfg = prep.cfg
    storage.export_secrets(cfg.sweep.storage_filesystem)  # for the workers Ray starts
    rows = prep.sizes["train"]
    if cfg.data.max_train_rows is not None:
        rows = min(rows, cfg.data.max_train_rows)
    try:
        sizes = curve.plan_sizes(rows, prep.task.num_classes)
    except ValueError as e:
        raise ConfigError("data.max_train_rows", str(e), "use more training rows") from None
    # Seeds the sweep never used (its confirmation took the next confirm_seeds), so the
    # full-size points are not the runs the champion was chosen on. Each size gets the
    # optimizer steps of the full size (epochs x rows / size, at most 8x): a small subset
    # trained for the same epochs would be undertrained, and the curve would credit to data
    # what is owed to steps.
    first_seed = cfg.train.seed + 1 + cfg.sweep.confirm_seeds
    sets = [
        {
            ROWS_KEY: n,
            "train.seed": first_seed + k,
            "train.epochs": min(round(cfg.train.epochs * rows / n), cfg.train.epochs * 8),
        }
        for n in sizes
        for k in range(seeds)
    ]
    state.check_storage(cfg)  # storage we cannot write fails here, before any run exists
    client, exp_id = writer.connect(cfg, out)
    client.use_journal(path)
    runtime.init_ray(verbose)
    from orchestrator.sweep import driver

    concurrency = driver.concurrency_for(cfg, prep)
    run_id = _start_run(client, exp_id, saved["parent_run_id"], cfg, prep.fingerprint, sizes)
    ctx = Context(
        cfg, prep, client, exp_id, run_id, saved["stamp"], str(path.parent), concurrency, out
    )
    out(
        f"[curve] {cfg.experiment}: the champion's configuration on {len(sizes)} sizes "
        f"({', '.join(f'{n:,}' for n in sizes)} training rows) x {seeds} seeds = "
        f"{len(sets)} runs, {concurrency} at a time; validation split as in the sweep "
        f"({prep.sizes['val']:,} rows)"
    )
    try:
        book = Book(ctx, "curve_point", len(sets))
        trainable = trials.make_trainable(cfg, ctx.stamp, ctx.storage, prep.summary)

        def search() -> tuner.Search:
            return tuner.Search(
                {trials.SET_KEY: tune.grid_search(sets)},
                searcher=tune.search.BasicVariantGenerator(max_concurrent=concurrency),
                concurrency=concurrency,
            )

        name = f"{ctx.name}-curve-{time.strftime('%Y%m%d-%H%M%S')}"
        tuner.run_book(book, trainable, search, name)
        points = curve_points(book.records)
        if not points:
            raise RuntimeError("no curve run finished; see the errors above")
        result = curve.analyse(points)
        for line in table(result):
            out(f"[curve] {line}")
        png = plots.data_curve(result, points, f"{cfg.experiment}: would more data help?")
        writer.log_png(client, run_id, png, curve.PNG_NAME)
        path.write_atomic(curve.PNG_NAME, png)
        path.write_atomic(
            curve.JSON_NAME, json.dumps({"points": points, **result.to_json()}, indent=1)
        )
        for p in result.predictions:
            client.log_metric(run_id, f"curve_val_loss_{p.factor:g}x", p.loss)
            client.log_metric(run_id, f"curve_val_loss_{p.factor:g}x_low", p.low)
            client.log_metric(run_id, f"curve_val_loss_{p.factor:g}x_high", p.high)
    except BaseException as e:
        writer.end_run(client, run_id, "FAILED", failure_tags(e))
        raise
    writer.end_run(
        client,
        run_id,
        "FINISHED",
        {schema.CURVE_VERDICT: result.verdict, schema.CURVE_SUMMARY: result.summary[:4900]},
    )
    client.drain(block=True, patience=0.0 if client.down else 60.0)
    where = (
        f"{len(client.queue)} MLflow write(s) kept: orchestrator tracking replay {path}"
        if client.queue
        else f"and on MLflow run {run_id}"
    )
    out(f"[curve] written: {path}/{curve.PNG_NAME} and {curve.JSON_NAME} beside it ({where})")
    return CurveSummary(result, points, run_id, str(path))


def failure_tags(error: BaseException) -> dict[str, str]:
    """The failed curve run's error tag: the exception, any credentials in a URI in it
    redacted (a tracking or storage URI may carry a password), cut to fit MLflow."""
    return {schema.ERROR: config_mod.redact_uri(f"{type(error).__name__}: {error}")[:4900]}


def _start_run(
    client: Any, exp_id: str, sweep_run: str, cfg: Config, fingerprint: str, sizes: list[int]
) -> str:
    tags = {
        schema.ROLE: "curve",
        "mlflow.parentRunId": sweep_run,
        schema.CURVE_SIZES: ",".join(str(n) for n in sizes),
        **writer.common_tags(cfg, fingerprint),
    }
    run = client.create_run(exp_id, run_name=f"curve-{cfg.experiment}", tags=tags)
    writer.log_params(client, run.info.run_id, cfg)
    return str(run.info.run_id)


def curve_points(records: list[TrialRecord]) -> list[tuple[int, int, float]]:
    """(training rows, seed, best-epoch validation loss) of each run that finished without
    an error (a run that crashed early would be a point with a loss it never trained to)."""
    points = []
    for r in records:
        if r.status == "ERROR":
            continue
        losses = [h["val_loss"] for h in r.history if math.isfinite(h.get("val_loss", math.nan))]
        if losses and ROWS_KEY in r.values:
            points.append(
                (int(r.values[ROWS_KEY]), int(r.values.get("train.seed", 0)), min(losses))
            )
    return sorted(points)


def table(result: curve.Curve) -> list[str]:
    """The curve for the terminal: the measured sizes, the predictions, the verdict."""
    lines = [f"{'training rows':>14}  {'best val_loss':>14}  {'std over seeds':>14}"]
    lines += [
        f"{n:>14,}  {m:>14.4f}  {s:>14.4f}"
        for n, m, s in zip(result.sizes, result.means, result.stds, strict=True)
    ]
    if result.fit is not None:
        f = result.fit
        lines.append(f"fit: val_loss = {f.a:.4g} * rows^-{f.b:.3g} + {f.c:.4g}")
    for p in result.predictions:
        lines.append(
            f"{p.rows:>14,}  {p.loss:>14.4f}  {curve.LEVEL:.0%}: {p.low:.4f} to {p.high:.4f} "
            f"({p.factor:g}x the rows, predicted)"
        )
    lines.append(f"verdict: {result.verdict}: {result.summary}")
    return lines
