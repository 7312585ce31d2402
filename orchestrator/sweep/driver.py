"""The sweep's driver: ``run`` starts a sweep, ``resume`` continues one whose driver died;
both then run the stages in order (search, confirm, champion), keep the state file that
makes a resume possible, and end the sweep's MLflow run however the stages end."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
import torch

from orchestrator import config as config_mod
from orchestrator.analysis import progress
from orchestrator.config import Config, ConfigError
from orchestrator.core import ledger, model, modelfile, placement, state, storage
from orchestrator.core.ledger import TrialRecord
from orchestrator.core.prepare import Prepared, prepare
from orchestrator.execution import runtime, trials
from orchestrator.sweep import champion, confirm, screen, search
from orchestrator.sweep.context import Context
from orchestrator.tracking import champions, location, schema, writer

END_DRAIN_S = 60.0  # how long the end of a sweep waits for MLflow to take its last writes


@dataclass
class SweepSummary:
    """What a finished sweep reports: its MLflow runs and trials, the champion with its test
    scores and registered version, and the MLflow writes still pending."""

    experiment_id: str
    parent_run_id: str
    records: list[TrialRecord]
    champion: TrialRecord
    champion_values: dict[str, Any]
    test_metrics: dict[str, float]
    model_version: str | None  # None: MLflow was away at the end (see ``pending``)
    tracking_uri: str  # redacted (config.redact_uri): for showing
    register_as: str
    sizes: dict[str, int]
    confirmed: list[dict[str, Any]]
    config: dict[str, Any]
    pending: int = 0  # MLflow writes kept for `orchestrator tracking replay`
    sweep_dir: str = ""

    @property
    def model_uri(self) -> str | None:
        """The champion's registered model, ``models:/NAME/VERSION`` (None: not yet
        registered, MLflow was away at the end)."""
        return f"models:/{self.register_as}/{self.model_version}" if self.model_version else None


def run(
    cfg: Config,
    out: Callable[[str], None] = print,
    verbose: bool = False,
    tags: dict[str, str] | None = None,
) -> SweepSummary:
    """The whole sweep. Config and data are checked before Ray or MLflow start. ``tags`` go
    on the sweep's MLflow run (a refined sweep names the one it came from)."""
    with screen.reading(out, cfg):
        prep = prepare(cfg, say=out)  # raises ConfigError on bad data: nothing written yet
    cfg = prep.cfg
    trials.search_space(cfg)  # a bad space fails here, before Ray starts
    storage.export_secrets(cfg.sweep.storage_filesystem)  # for the workers Ray starts
    state.check_storage(cfg)  # and storage we cannot write, before the parent run exists
    client, exp_id = writer.connect(cfg, out)  # so does a tracking server that is not up
    runtime.init_ray(verbose)
    concurrency = concurrency_for(cfg, prep)
    parent_id = writer.start_sweep_run(client, exp_id, cfg, prep.fingerprint, prep.sizes)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    where = storage.absolute(cfg.sweep.storage_path)
    ctx = Context(cfg, prep, client, exp_id, parent_id, stamp, where, concurrency, out)
    ctx.path.mkdir()
    client.use_journal(ctx.path)
    save(ctx, state.RUNNING)
    client.set_tag(parent_id, schema.SWEEP_DIR, str(ctx.path))
    for k, v in (tags or {}).items():
        client.set_tag(parent_id, k, v)
    base = prep.baseline
    for key, value in schema.baseline_tags(base.loss, base.accuracy).items():
        client.set_tag(parent_id, key, value)
    path_kind = "in the trial (fast path)" if trials.fast_path(cfg) else "DDP workers"
    out(
        f"[sweep] {cfg.experiment}: {trials.total_trials(cfg)} trials x "
        f"{cfg.scaling.num_workers} worker(s) {path_kind}, {concurrency} at a time; "
        f"{cfg.sweep.searcher} search, {cfg.sweep.scheduler} scheduler"
        f"{' (by promotion)' if config_mod.asha_promotes(cfg) else ''}; data {prep.sizes} "
        f"({prep.loader}); MLflow {config_mod.redact_uri(location.resolve_uri(cfg))}"
    )
    out(f"[sweep] {prep.describe()}")
    _say_model_form(cfg, prep, out)
    out(f"[sweep] if the driver stops: orchestrator resume {ctx.path}")
    return _stages(ctx)


PT2_TRY_MAX = 20_000_000  # parameters: a bigger model's export is tried at the end only


def _say_model_form(cfg: Config, prep: Prepared, out: Callable[[str], None]) -> None:
    """Try torch.export on the driver now, so the user learns before the sweep, not after
    it, what form the champion will have in MLflow (``champions.pt2_refusal``)."""
    spec = modelfile.spec_of(cfg, prep.encoding, prep.task)
    with torch.device("meta"):  # counted first: a big model is not built twice on the driver
        size = sum(p.numel() for p in model.network(cfg, prep.encoding, prep.task).parameters())
    if prep.encoding.numeric() and size > PT2_TRY_MAX:
        return  # tried when the champion is logged
    net = model.network(cfg, prep.encoding, prep.task) if prep.encoding.numeric() else None
    why_not = champions.pt2_refusal(model.Outputs(net, prep.task) if net else None, spec)
    if why_not is None:
        return
    needs = "this package" + (
        f" and {cfg.model.kind}" if cfg.model.kind not in ("mlp", "cnn") else ""
    )
    out(
        f"[sweep] the champion is logged without a pt2 program: {why_not}. "
        f"mlflow.pyfunc.load_model loads its pickle-free form through this package's "
        f"loader (needs {needs} importable) and takes a DataFrame of the raw columns; "
        "orchestrator serve takes the same columns as named records"
    )


def resume(
    experiment: str,
    storage_path: str = "results",
    out: Callable[[str], None] = print,
    verbose: bool = False,
) -> SweepSummary:
    """Continue a sweep whose driver died: finished trials stay finished, unfinished ones
    go on from their last checkpoint, the searcher keeps its state, and MLflow keeps one
    run per trial."""
    path = state.find_sweep(experiment, storage_path)
    saved = state.read(path)
    if saved["phase"] == state.DONE:
        pilot = "autopilot" in saved  # its data curve, if the driver died in it, comes apart
        raise ConfigError(
            "EXPERIMENT",
            f"the {'autopilot' if pilot else 'sweep'} in {path} already finished",
            f"measure its data curve with `orchestrator curve {path}`, or start a new one"
            if pilot
            else "start a new one with `orchestrator sweep CONFIG`",
        )
    if "autopilot" in saved:  # an autopilot's folder: it goes on at the round it was in
        from orchestrator.sweep import autopilot

        return autopilot.resume(path, saved, out, verbose)
    # the state holds secrets redacted: they come back from the environment (or fail here,
    # naming the variable, before Ray or MLflow start)
    prep = prepare(state.saved_config(saved))
    same_data(prep, saved, "sweep")
    ctx = reopen(path, saved, prep.cfg, prep, out, verbose)
    out(f"[sweep] resuming {path.name} (MLflow parent run {ctx.parent_id})")
    return _stages(ctx)


def same_data(prep: Prepared, saved: dict[str, Any], what: str) -> None:
    """ConfigError naming ``data.path`` when the data is not what the saved sweep (or
    autopilot: ``what``) started on."""
    if prep.fingerprint != saved["fingerprint"]:
        raise ConfigError(
            "data.path",
            f"the data changed since the {what} started "
            f"({prep.fingerprint} != {saved['fingerprint']})",
            f"resume against the same data, or start a new {what}",
        )


def reopen(
    path: storage.Folder,
    saved: dict[str, Any],
    cfg: Config,
    prep: Prepared,
    out: Callable[[str], None],
    verbose: bool,
) -> Context:
    """A resumed driver's context for the sweep (or autopilot) in ``path``: MLflow connected
    with the folder's journal, Ray up, the parent run RUNNING again and tagged resumed."""
    storage.export_secrets(cfg.sweep.storage_filesystem)  # for the workers Ray starts
    client, exp_id = writer.connect(cfg, out)
    client.use_journal(path)
    runtime.init_ray(verbose)
    concurrency = concurrency_for(cfg, prep)
    parent_id = saved["parent_run_id"]
    client.update_run(parent_id, status="RUNNING")
    client.set_tag(parent_id, schema.RESUMED, time.strftime("%Y-%m-%d %H:%M:%S"))
    return Context(
        cfg,
        prep,
        client,
        exp_id,
        parent_id,
        saved["stamp"],
        str(path.parent),  # the storage path as found (a URI resumes on any machine)
        concurrency,
        out,
        resume=True,
    )


def concurrency_for(cfg: Config, prep: Prepared) -> int:
    """How many trials run at once on this cluster (ConfigError when one cannot fit)."""
    return placement.trial_concurrency(
        cfg, ray.cluster_resources(), prep.loader, trials.alive_nodes()
    )


def save(ctx: Context, phase: str, **extra: Any) -> None:
    """The sweep's state file, as it stands (``extra``: an autopilot's rounds)."""
    state.write(
        ctx.path,
        ctx.cfg,
        phase,
        stamp=ctx.stamp,
        parent_run_id=ctx.parent_id,
        experiment_id=ctx.exp_id,
        fingerprint=ctx.prep.fingerprint,
        **extra,
    )


def _stages(ctx: Context) -> SweepSummary:
    """Search, confirm, crown the champion, with MLflow's system metrics sampled on the
    sweep's run until the very end (its last writes included)."""
    assert ctx.parent_id is not None
    monitor = writer.system_monitor(ctx.cfg, ctx.parent_id)
    try:
        return _search_confirm_crown(ctx)
    finally:
        if monitor is not None:
            monitor.finish()


def _search_confirm_crown(ctx: Context) -> SweepSummary:
    """The stages in order; the sweep's run ends FINISHED, or FAILED however they fail."""
    assert ctx.parent_id is not None
    key, mode = config_mod.rank_metric(ctx.cfg)
    try:
        records = search.search(ctx)
        best = ledger.best_trial(records, key, mode)
        if best is None:
            raise RuntimeError("no trial finished an epoch; see the errors above")
        search.log_sweep_plots(ctx.client, ctx.parent_id, ctx.cfg, records, best.trial_id)
        confirmed: list[dict[str, Any]] = []
        if ctx.cfg.sweep.confirm_seeds:
            best, confirmed = confirm.confirm(ctx, records)
        won = champion.crown(ctx, best)
    except progress.SweepStalled as e:
        message = f"{e}; its state is saved: orchestrator resume {ctx.path}"
        writer.end_run(ctx.client, ctx.parent_id, "FAILED", {schema.ERROR: message})
        raise progress.SweepStalled(message) from None
    except BaseException:
        writer.end_run(ctx.client, ctx.parent_id, "FAILED", {})
        raise
    save(ctx, state.DONE)
    return finish(ctx, records, won, confirmed)


def finish(
    ctx: Context, records: list[TrialRecord], won: champion.Champion, confirmed: list[dict]
) -> SweepSummary:
    """End the sweep's run with its champion, wait for MLflow, and sum the sweep up."""
    assert ctx.parent_id is not None
    cfg = ctx.cfg
    writer.end_run(
        ctx.client,
        ctx.parent_id,
        "FINISHED",
        {
            schema.CHAMPION_TRIAL: won.record.trial_id,
            **{f"{schema.CHAMPION_VALUE}{k}": str(v) for k, v in won.values.items()},
        },
    )
    # what the end of the sweep wrote (already waited for, if the server is away)
    sending = ctx.client.queue and not ctx.client.down  # a stage worth showing
    with (
        screen.phase(ctx.out, f"MLflow: sending the last {len(ctx.client.queue)} write(s)")
        if sending
        else contextlib.nullcontext()
    ):
        ctx.client.drain(block=True, patience=0.0 if ctx.client.down else END_DRAIN_S)
    shown = config_mod.redact_uri(location.resolve_uri(cfg))
    if ctx.client.queue:
        ctx.out(
            f"[tracking] MLflow at {shown} still does not answer: "
            f"{len(ctx.client.queue)} write(s) kept in {ctx.path}; training is complete. "
            f"When it is back: orchestrator tracking replay {ctx.path}"
        )
    return SweepSummary(
        ctx.exp_id,
        ctx.parent_id,
        records,
        won.record,
        won.values,
        won.test_metrics,
        won.version,
        shown,
        cfg.tracking.register_as,
        ctx.prep.sizes,
        confirmed,
        config_mod.to_dict(config_mod.redact(cfg)),
        len(ctx.client.queue),
        str(ctx.path),
    )
