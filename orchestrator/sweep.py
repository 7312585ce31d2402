"""Ray Tune edge: search the regularization axis (trials run as ``orchestrator.execution.trials``
says), the driver as MLflow's only writer, resume after a crash, confirm the best with more
seeds, then the champion: refit, test once, register, alias."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator import config as config_mod
from orchestrator.analysis import plots, progress
from orchestrator.config import Config, ConfigError
from orchestrator.core import checkpoint, data, diagnosis, ledger, loop, model, placement
from orchestrator.core.ledger import TrialRecord
from orchestrator.execution import runtime, trials
from orchestrator.tracking import champions, location, outbox, schema, writer


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


@dataclass
class Prepared:
    """What the driver knows of the data, in memory or from one streaming pass."""

    cfg: Config  # with data.path made absolute
    loader: str
    fingerprint: str
    sizes: dict[str, int]
    classes: list
    num_features: int
    splits: data.Splits | None = None  # memory
    summary: data.Summary | None = None  # stream

    @property
    def baseline(self) -> diagnosis.Baseline:
        """What predicting the training split's class frequencies scores (the yardstick
        of the bias/variance labels)."""
        if self.splits is not None:
            return diagnosis.baseline(
                np.bincount(self.splits.y_train, minlength=len(self.classes)).tolist()
            )
        assert self.summary is not None
        return diagnosis.baseline(self.summary.class_counts)

    def test_batches(self) -> Iterator[loop.Batch]:
        """The test split in CPU batches (streamed through Ray Data for big data)."""
        if self.splits is not None:
            x, y = torch.from_numpy(self.splits.x_test), torch.from_numpy(self.splits.y_test)
            for idx in torch.arange(len(y)).split(4096):
                yield x[idx], y[idx]
            return
        from orchestrator.execution import ray_train

        assert self.summary is not None
        test = ray_train.stream_datasets(self.cfg, self.summary)["test"]
        for b in test.iter_torch_batches(batch_size=4096, device="cpu"):
            yield b["x"], b["y"]


def prepare(cfg: Config) -> Prepared:
    """Check the data (ConfigError on any problem, before Ray or MLflow start) and pick the
    loader: small data is read whole, big data is scanned batch by batch and streamed."""
    cfg = cfg.model_copy(
        update={"data": cfg.data.model_copy(update={"path": data.absolute(cfg.data.path)})}
    )
    loader = data.choose_loader(cfg.data, data.size_bytes(cfg.data))
    if loader == "stream":
        summary = data.scan(cfg.data)
        return Prepared(
            cfg,
            loader,
            summary.fingerprint,
            summary.sizes(),
            summary.classes,
            len(summary.feature_names),
            summary=summary,
        )
    splits = data.load_splits(cfg.data)
    return Prepared(
        cfg,
        loader,
        splits.fingerprint,
        splits.sizes(),
        splits.classes,
        splits.num_features,
        splits=splits,
    )


def check_storage(cfg: Config) -> None:
    """``sweep.storage_path`` can hold files: a probe file created and deleted in it, or in
    its nearest existing parent while it does not exist yet (permissions alone do not say,
    e.g. for root or a read-only mount). Checked before any MLflow run exists: found out
    later, the parent run would stay RUNNING."""
    root = Path(cfg.sweep.storage_path).absolute()
    # probed where it exists so far: a sweep refused later (MLflow away) leaves no folder
    where = root
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        if not where.is_dir():
            raise NotADirectoryError(20, "not a folder", str(where))
        probe = where / f".orchestrator-probe-{os.getpid()}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            "sweep.storage_path",
            f"{str(root)!r} is not a folder this process can write ({e.strerror or e})",
            "point it at a writable folder (on a cluster: storage every node "
            "mounts), or fix its permissions",
        ) from None


# ---------------------------------------------------------------- the Ray / MLflow edge


STATE_FILE = "orchestrator.json"


@dataclass
class Context:
    """One sweep's handles, shared by its stages (search, confirm, champion)."""

    cfg: Config
    prep: Prepared
    client: outbox.Outbox
    exp_id: str
    parent_id: str
    stamp: str
    storage: str
    concurrency: int
    out: Callable[[str], None]
    resume: bool = False

    @property
    def name(self) -> str:
        """The sweep's Tune run name: the experiment and the sweep's start time."""
        return f"{self.cfg.experiment}-{self.stamp}"

    @property
    def path(self) -> Path:
        """The sweep's folder under the storage path."""
        return Path(self.storage) / self.name


def run(
    cfg: Config,
    out: Callable[[str], None] = print,
    verbose: bool = False,
    tags: dict[str, str] | None = None,
) -> SweepSummary:
    """The whole sweep. Config and data are checked before Ray or MLflow start. ``tags`` go
    on the sweep's MLflow run (a refined sweep names the one it came from)."""
    prep = prepare(cfg)  # raises ConfigError on bad data: nothing written yet
    cfg = prep.cfg

    trials.search_space(cfg)  # a bad space fails here, before Ray starts
    check_storage(cfg)  # and storage we cannot write, before the parent run exists
    client, exp_id = writer.connect(cfg, out)  # so does a tracking server that is not up
    runtime.init_ray(verbose)
    concurrency = _concurrency(cfg, prep)
    parent_id = writer.start_sweep_run(client, exp_id, cfg, prep.fingerprint, prep.sizes)
    ctx = Context(
        cfg,
        prep,
        client,
        exp_id,
        parent_id,
        time.strftime("%Y%m%d-%H%M%S"),
        str(Path(cfg.sweep.storage_path).absolute()),
        concurrency,
        out,
    )
    ctx.path.mkdir(parents=True, exist_ok=True)
    client.use_journal(ctx.path)
    _write_state(ctx, "running")
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
    out(f"[sweep] if the driver stops: orchestrator resume {ctx.path}")
    return _complete(ctx)


def resume(
    experiment: str,
    storage_path: str = "results",
    out: Callable[[str], None] = print,
    verbose: bool = False,
) -> SweepSummary:
    """Continue a sweep whose driver died: finished trials stay finished, unfinished ones
    go on from their last checkpoint, the searcher keeps its state, and MLflow keeps one
    run per trial."""
    path = find_sweep(experiment, storage_path)
    state = json.loads((path / STATE_FILE).read_text())
    if state["phase"] == "done":
        raise ConfigError(
            "EXPERIMENT",
            f"the sweep in {path} already finished",
            "start a new one with `orchestrator sweep CONFIG`",
        )
    # the state holds secrets redacted: they come back from the environment (or fail here,
    # naming the variable, before Ray or MLflow start)
    prep = prepare(config_mod.restore(config_mod.from_dict(state["config"])))
    if prep.fingerprint != state["fingerprint"]:
        raise ConfigError(
            "data.path",
            f"the data changed since the sweep started "
            f"({prep.fingerprint} != {state['fingerprint']})",
            "resume against the same data, or start a new sweep",
        )
    cfg = prep.cfg

    client, exp_id = writer.connect(cfg, out)
    client.use_journal(path)
    runtime.init_ray(verbose)
    concurrency = _concurrency(cfg, prep)
    parent_id = state["parent_run_id"]
    client.update_run(parent_id, status="RUNNING")
    client.set_tag(parent_id, schema.RESUMED, time.strftime("%Y-%m-%d %H:%M:%S"))
    ctx = Context(
        cfg,
        prep,
        client,
        exp_id,
        parent_id,
        state["stamp"],
        str(path.parent),
        concurrency,
        out,
        resume=True,
    )
    out(f"[sweep] resuming {path.name} (MLflow parent run {parent_id})")
    return _complete(ctx)


def find_sweep(experiment: str, storage_path: str) -> Path:
    """A sweep folder, or the newest sweep of that experiment name under the storage path."""
    given = Path(experiment)
    if (given / STATE_FILE).is_file():
        return given.absolute()
    pattern = re.compile(rf"^{re.escape(experiment)}-\d{{8}}-\d{{6}}$")
    root = Path(storage_path)
    found = sorted(
        p
        for p in (root.iterdir() if root.is_dir() else [])
        if pattern.match(p.name) and (p / STATE_FILE).is_file()
    )
    if not found:
        raise ConfigError(
            "EXPERIMENT",
            f"no sweep named {experiment!r} under {root.absolute()}",
            "pass the experiment name from the config (or the folder the sweep "
            "printed), and --storage when sweep.storage_path was changed",
        )
    return found[-1].absolute()


def _write_state(ctx: Context, phase: str) -> None:
    state = {
        "config": config_mod.to_dict(config_mod.redact(ctx.cfg)),
        "stamp": ctx.stamp,
        "phase": phase,
        "parent_run_id": ctx.parent_id,
        "experiment_id": ctx.exp_id,
        "fingerprint": ctx.prep.fingerprint,
    }
    tmp = ctx.path / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(ctx.path / STATE_FILE)  # atomic: a kill never leaves half a state file


def _concurrency(cfg: Config, prep: Prepared) -> int:
    import ray

    return placement.trial_concurrency(
        cfg, ray.cluster_resources(), prep.loader, trials.alive_nodes()
    )


def _complete(ctx: Context) -> SweepSummary:

    monitor = writer.system_monitor(ctx.cfg, ctx.parent_id)
    try:
        return _search_and_register(ctx)
    finally:
        if monitor is not None:
            monitor.finish()


def _search_and_register(ctx: Context) -> SweepSummary:

    cfg = ctx.cfg
    key, mode = config_mod.rank_metric(cfg)
    try:
        callback = _SweepCallback(
            cfg,
            ctx.client,
            ctx.exp_id,
            ctx.parent_id,
            ctx.prep.fingerprint,
            ctx.out,
            trials.total_trials(cfg),
            resumed=ctx.resume,
            sizes=ctx.prep.sizes,
            base=ctx.prep.baseline,
        )
        trainable = trials.make_trainable(cfg, ctx.stamp, ctx.storage, ctx.prep.summary)
        _fit(
            ctx.path,
            ctx.resume,
            callback,
            trainable,
            lambda: make_tuner(
                cfg,
                trainable,
                trials.search_space(cfg),
                trials.num_samples(cfg),
                trials.scheduler(cfg),
                trials.searcher(cfg, ctx.concurrency),
                ctx.concurrency,
                callback,
                ctx.storage,
                ctx.name,
            ),
        )
        if ctx.resume:
            callback.forget_orphans()
        best = ledger.best_trial(callback.records, key, mode)
        if best is None:
            raise RuntimeError("no trial finished an epoch; see the errors above")
        log_sweep_plots(ctx.client, ctx.parent_id, cfg, callback.records, best.trial_id)
        confirmed: list[dict[str, Any]] = []
        if cfg.sweep.confirm_seeds:
            best, confirmed = confirm(ctx, callback.records)
        # the values that produced the best epoch (a PBT trial's may have moved since)
        champion_values = best.best_values or best.values
        champion_cfg = config_mod.with_values(cfg, champion_values)
        weights = _champion_weights(ctx, champion_cfg, best)
        # the stem's statistics are buffers: load_state_dict brings the trained ones
        d = ctx.prep.num_features
        net = model.from_config(champion_cfg, np.zeros(d), np.ones(d), len(ctx.prep.classes))
        net.load_state_dict(weights)
        test_metrics, example = evaluate_test(net, ctx.prep)
        version: str | None = None
        if ctx.client.drain(block=True, patience=cfg.tracking.drain_timeout):
            version = champions.register_champion(
                champion_cfg,
                ctx.parent_id,
                net,
                example,
                ctx.prep.classes,
                test_metrics,
                ctx.client.run_id(best.run_id) or "",
            )
        else:  # MLflow is still away: keep what registering needs, for the replay
            champions.keep_champion(
                ctx.path,
                champion_cfg,
                ctx.parent_id,
                net,
                example,
                ctx.prep.classes,
                test_metrics,
                best.run_id or "",
            )
    except progress.SweepStalled as e:
        message = f"{e}; its state is saved: orchestrator resume {ctx.path}"
        writer.end_run(ctx.client, ctx.parent_id, "FAILED", {schema.ERROR: message})
        raise progress.SweepStalled(message) from None
    except BaseException:
        writer.end_run(ctx.client, ctx.parent_id, "FAILED", {})
        raise
    _write_state(ctx, "done")
    writer.end_run(
        ctx.client,
        ctx.parent_id,
        "FINISHED",
        {
            schema.CHAMPION_TRIAL: best.trial_id,
            **{f"{schema.CHAMPION_VALUE}{k}": str(v) for k, v in champion_values.items()},
        },
    )
    # what the end of the sweep wrote (already waited for, if the server is away)
    ctx.client.drain(block=True, patience=0.0 if ctx.client.down else 60.0)
    if ctx.client.queue:
        ctx.out(
            f"[tracking] MLflow at {config_mod.redact_uri(location.resolve_uri(cfg))} "
            "still does not answer: "
            f"{len(ctx.client.queue)} write(s) kept in {ctx.path}; training is complete. "
            f"When it is back: orchestrator tracking replay {ctx.path}"
        )
    return SweepSummary(
        ctx.exp_id,
        ctx.parent_id,
        callback.records,
        best,
        champion_values,
        test_metrics,
        version,
        config_mod.redact_uri(location.resolve_uri(cfg)),
        cfg.tracking.register_as,
        ctx.prep.sizes,
        confirmed,
        config_mod.to_dict(config_mod.redact(cfg)),
        len(ctx.client.queue),
        str(ctx.path),
    )


def log_sweep_plots(
    client: outbox.Outbox,
    run_id: str,
    cfg: Config,
    records: list[TrialRecord],
    champion_id: str | None,
) -> None:
    """On the sweep's run: every trial's best ranking metric over weight decay x dropout
    (or the first two searched keys), and a parallel-coordinates plot of all searched keys."""

    key, _ = config_mod.rank_metric(cfg)
    space = cfg.sweep.space
    done = [r for r in records if r.best is not None and key in r.best]
    keys = [k for k in space if all(k in r.values for r in done)]
    if not done or not keys:
        return
    points = [{**r.values, key: r.best[key]} for r in done]  # type: ignore[index]
    logs = {k for k, spec in space.items() if spec["type"] == "loguniform"}
    pair = (
        ["train.weight_decay", "model.dropout"]
        if {"train.weight_decay", "model.dropout"} <= set(keys)
        else keys[:2]
    )
    star = next((i for i, r in enumerate(done) if r.trial_id == champion_id), None)
    if len(pair) == plots.MAP_AXES:
        writer.log_png(
            client,
            run_id,
            plots.regularization_map(
                points,
                pair[0],
                pair[1],
                key,
                log_x=pair[0] in logs,
                log_y=pair[1] in logs,
                champion=star,
            ),
            "regularization_map.png",
        )
    writer.log_png(
        client,
        run_id,
        plots.parallel_coordinates(points, keys, key, logs),
        "parallel_coordinates.png",
    )
    regs = [
        k
        for k in diagnosis.REGULARIZERS
        if k in keys and space[k]["type"] in ("uniform", "loguniform")
    ]
    fits = [
        {
            **r.values,
            "train_loss": r.best["train_loss"],
            "val_loss": r.best["val_loss"],
            "label": r.diagnosis,
        }
        for r in done
        if r.best is not None and "train_loss" in r.best and "val_loss" in r.best
    ]
    if regs and fits:
        writer.log_png(client, run_id, plots.fit_map(fits, regs, logs), "fit_map.png")


# Tune pickles the run's callbacks into the experiment folder; a resumed run must get the
# live one of this driver (with its MLflow client and output), looked up by the run's name
# (not its path: the results folder may have moved or be reached another way).
_LIVE: dict[str, Any] = {}


def _live_callback(key: str) -> Any:
    if key not in _LIVE:
        raise RuntimeError(
            f"no live sweep callback for {key!r}: restore a sweep through "
            "`orchestrator resume`, which provides one"
        )
    return _LIVE[key]


def _fit(
    path: Path, resume: bool, callback: Any, trainable: Any, new_tuner: Callable[[], Any]
) -> Any:
    """Start the Tune run, or restore it from its folder: finished trials are kept as they
    are, unfinished ones continue from their last checkpoint, errored ones stay failed."""
    from ray import tune

    callback.key = path.name
    _LIVE[path.name] = callback
    if resume and tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(
            str(path), trainable=trainable, resume_unfinished=True, resume_errored=False
        )
    else:
        tuner = new_tuner()
    return tuner.fit()


# the sweep's stages are to fold these into one context value (issue 16, sweep step)
def make_tuner(  # noqa: PLR0913
    cfg: Config,
    trainable: Any,
    space: dict[str, Any],
    num_samples: int,
    scheduler: Any,
    search_alg: Any,
    concurrency: int,
    callback: Any,
    storage: str,
    name: str,
) -> Any:
    """A Tune tuner of ``trainable`` over ``space``, ranked by the config's metric, with the
    stall watchdog beside ``callback`` and checkpoints kept as the scheduler needs them."""
    from ray import tune

    key, mode = config_mod.rank_metric(cfg)
    if hasattr(scheduler, "bind"):  # ASHA by promotion steers the searcher's cap
        grid = trials.total_trials(cfg) // trials.num_samples(cfg)
        scheduler.bind(search_alg, concurrency, num_samples * grid)
    watchdog = _Watchdog(cfg.sweep.stall_timeout, cfg.train.epochs)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=key,
            mode=mode,
            num_samples=num_samples,
            search_alg=search_alg,
            scheduler=scheduler,
            max_concurrent_trials=concurrency,
            # a fast-path trial's process (torch imported, data
            # read) serves the next trial too: ~1 s saved per trial
            reuse_actors=trials.fast_path(cfg),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=[callback, watchdog] if callback else [watchdog],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=trials.max_failures(cfg)),
            # fast-path trials checkpoint through Tune: keep the best N and the latest (PBT
            # clones any trial's latest, which a best-N policy may already have deleted)
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=None if cfg.sweep.scheduler == "pbt" else cfg.train.keep_checkpoints,
                checkpoint_score_attribute=key,
                checkpoint_score_order=mode,
            ),
        ),
    )


def confirm(ctx: Context, records: list[TrialRecord]) -> tuple[TrialRecord, list[dict[str, Any]]]:
    """Rerun the top ``confirm_top`` configurations with ``confirm_seeds`` fresh seeds each
    and choose the champion by the mean. Fresh seeds, not the searched one: the search
    picked each winner partly for its lucky seed, and counting that run again would keep
    the luck in the mean."""
    from ray import tune

    cfg, sw = ctx.cfg, ctx.cfg.sweep
    key, mode = config_mod.rank_metric(cfg)
    done = [r for r in records if r.best is not None and r.status != "ERROR"]
    top: list[TrialRecord] = []
    for r in sorted(done, key=lambda r: r.best[key], reverse=mode == "max"):  # type: ignore[index]
        if _without_seed(r.values) not in {_without_seed(t.values) for t in top}:
            top.append(r)  # the same values drawn twice are one configuration
    top = top[: sw.confirm_top]
    sets = [
        {**r.values, "train.seed": cfg.train.seed + 1 + k}
        for r in top
        for k in range(sw.confirm_seeds)
    ]
    ctx.out(
        f"[confirm] {len(top)} best configuration(s) x {sw.confirm_seeds} seeds = "
        f"{len(sets)} runs, full budget"
    )
    callback = _SweepCallback(
        cfg,
        ctx.client,
        ctx.exp_id,
        ctx.parent_id,
        ctx.prep.fingerprint,
        ctx.out,
        len(sets),
        role="confirm",
        resumed=ctx.resume,
        sizes=ctx.prep.sizes,
        base=ctx.prep.baseline,
    )
    trainable = trials.make_trainable(cfg, ctx.stamp, ctx.storage, ctx.prep.summary)
    name = f"{ctx.name}-confirm"
    _fit(
        Path(ctx.storage) / name,
        ctx.resume,
        callback,
        trainable,
        lambda: make_tuner(
            cfg,
            trainable,
            {trials.SET_KEY: tune.grid_search(sets)},
            1,
            None,
            tune.search.BasicVariantGenerator(max_concurrent=ctx.concurrency),
            ctx.concurrency,
            callback,
            ctx.storage,
            name,
        ),
    )
    if ctx.resume:
        callback.forget_orphans()
    rows: list[dict[str, Any]] = []
    for r in top:
        runs = [
            c
            for c in callback.records
            if c.best is not None
            and c.status != "ERROR"
            and _without_seed(c.values) == _without_seed(r.values)
        ]
        if not runs:
            continue
        scores = np.array([c.best[key] for c in runs])  # type: ignore[index]
        accs = np.array([c.best.get("val_accuracy", np.nan) for c in runs])  # type: ignore[union-attr]
        rows.append(
            {
                "trial_id": r.trial_id,
                "values": r.values,
                "record": r,
                "runs": runs,
                "mean": float(scores.mean()),
                "std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
                "n": len(runs),
                "val_accuracy": float(np.nanmean(accs)),
                "search": r.best[key],  # type: ignore[index]
            }
        )
    if not rows:
        raise RuntimeError("no confirmation run finished; see the errors above")
    rows.sort(key=lambda row: row["mean"], reverse=mode == "max")
    for i, row in enumerate(rows):
        ctx.out(
            f"[confirm] {'*' if i == 0 else ' '} trial {row['trial_id']}: {key} "
            f"{row['mean']:.4f} +- {row['std']:.4f} over {row['n']} seeds "
            f"(search run {row['search']:.4f}; val_accuracy {row['val_accuracy']:.4f})"
        )
        ctx.client.set_tag(
            ctx.parent_id,
            f"{schema.CONFIRM}{row['trial_id']}",
            f"{key} mean={row['mean']:.5f} std={row['std']:.5f} n={row['n']}",
        )
    win = rows[0]
    ctx.client.log_metric(ctx.parent_id, f"confirm_{key}_mean", win["mean"])
    ctx.client.log_metric(ctx.parent_id, f"confirm_{key}_std", win["std"])
    best_run = (min if mode == "min" else max)(win["runs"], key=lambda c: c.best[key])
    base: TrialRecord = win["record"]
    # refit length: the median of the seeds' best epochs, robust to one early or late seed
    epochs = float(np.median([c.best["epoch"] for c in win["runs"]]))
    champion = TrialRecord(
        base.trial_id,
        base.values,
        base.run_id,
        base.epochs,
        {
            **(best_run.best or {}),
            key: win["mean"],
            "epoch": round(epochs),
            "val_accuracy": win["val_accuracy"],
        },
        best_run.checkpoint,
        base.status,
    )
    table = [{k: v for k, v in row.items() if k not in ("record", "runs")} for row in rows]
    return champion, table


def _without_seed(values: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in values.items() if k != "train.seed"}, sort_keys=True)


@dataclass
class TrainSummary:
    """What ``orchestrator train`` reports: its MLflow run, its trial record, and the
    tracking server it went to."""

    run_id: str
    record: TrialRecord
    tracking_uri: str  # redacted (config.redact_uri): for showing


def train_run(
    cfg: Config, out: Callable[[str], None] = print, verbose: bool = False
) -> TrainSummary:
    """One training run of the config as it stands (no search): in a single trial on the
    fast path, or a TorchTrainer of ``scaling.num_workers`` DDP workers; restarted from its
    last checkpoint up to ``scaling.max_failures`` times; one MLflow run, ``role=train``."""
    prep = prepare(cfg)
    cfg = prep.cfg

    check_storage(cfg)
    client, exp_id = writer.connect(cfg, out)
    runtime.init_ray(verbose)
    _concurrency(cfg, prep)  # fails now if one run cannot fit
    storage = str(Path(cfg.sweep.storage_path).absolute())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    client.use_journal(Path(storage) / f"{cfg.experiment}-{stamp}-train")
    out(
        f"[train] {cfg.experiment}: {cfg.scaling.num_workers} DDP worker(s), "
        f"{cfg.train.epochs} epochs; data {prep.sizes} ({prep.loader})"
    )
    callback = _SweepCallback(
        cfg, client, exp_id, None, prep.fingerprint, out, 1, sizes=prep.sizes, base=prep.baseline
    )
    trainable = trials.make_trainable(cfg, stamp, storage, prep.summary)
    no_search = cfg.model_copy(update={"sweep": cfg.sweep.model_copy(update={"max_failures": 0})})
    make_tuner(
        no_search,
        trainable,
        {},
        1,
        None,
        None,
        1,
        callback,
        storage,
        f"{cfg.experiment}-{stamp}-train",
    ).fit()
    rec = callback.records[0]
    assert rec.run_id is not None
    if not client.drain(block=True, patience=cfg.tracking.drain_timeout):
        shown = config_mod.redact_uri(location.resolve_uri(cfg))
        out(
            f"[tracking] MLflow at {shown} does not answer: "
            f"{len(client.queue)} write(s) kept; when it is back: orchestrator tracking "
            f"replay {Path(storage) / f'{cfg.experiment}-{stamp}-train'} --tracking-uri "
            f"{shown}"
        )
    return TrainSummary(
        client.run_id(rec.run_id) or rec.run_id,
        rec,
        config_mod.redact_uri(location.resolve_uri(cfg)),
    )


def _champion_weights(ctx: Context, cfg: Config, best: TrialRecord) -> dict[str, torch.Tensor]:
    """Refit on train + validation for the best epoch count (as scikit-learn's refit does),
    so the champion learns from every row but the test split; or take the trial's weights."""
    assert best.best is not None and best.checkpoint is not None
    if not cfg.sweep.refit:
        return checkpoint.load_checkpoint(best.checkpoint)["model"]
    epochs = int(best.best["epoch"])
    refit_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs})})
    ctx.out(
        f"[sweep] refitting the champion ({best.trial_id}) on train+validation for {epochs} epochs"
    )
    trainable = trials.make_trainable(
        refit_cfg, ctx.stamp, ctx.storage, ctx.prep.summary, refit=True
    )
    grid = make_tuner(
        refit_cfg,
        trainable,
        {},
        1,
        None,
        None,
        1,
        None,
        ctx.storage,
        f"{ctx.name}-refit-{time.strftime('%H%M%S')}",
    ).fit()
    result = grid[0]
    if result.error is not None:
        raise RuntimeError(f"the champion's refit failed: {result.error}")
    return checkpoint.load_checkpoint(trials.final_checkpoint(result))["model"]


@torch.no_grad()
def evaluate_test(net: torch.nn.Module, prep: Prepared) -> tuple[dict[str, float], np.ndarray]:
    """The one and only look at the test split. Also returns its first rows, the logged
    model's input example, so a streamed test split is read once."""
    num_classes = len(prep.classes)
    first: list[np.ndarray] = []

    def batches() -> Iterator[loop.Batch]:
        for x, y in prep.test_batches():
            if not first:
                first.append(x[:5].numpy())
            yield x, y

    scores = loop.evaluate(
        net.cpu(), batches(), num_classes, loop.make_loss(num_classes), loop.LocalSeam(), "test"
    )
    return scores, first[0]


def _callback_base() -> type:
    from ray.tune import Callback

    return Callback


class _SweepCallback(_callback_base()):  # type: ignore[misc]
    """Runs in the driver: keeps the ledger, writes MLflow (its only writer), prints progress.

    Its ledger is saved with Tune's experiment state (``get_state``), so a resumed sweep
    knows every trial it had; a trial Tune re-runs finds its MLflow run again rather than
    opening a second one, and an epoch replayed from a checkpoint is logged once."""

    # the sweep's stages are to fold these into one context value (issue 16, sweep step)
    def __init__(  # noqa: PLR0913
        self,
        cfg: Config,
        client: outbox.Outbox,
        exp_id: str,
        parent_id: str | None,
        fingerprint: str,
        out: Callable[[str], None],
        total: int,
        role: str = "trial",
        resumed: bool = False,
        sizes: dict[str, int] | None = None,
        base: diagnosis.Baseline | None = None,
    ):
        self.cfg, self.client, self.exp_id, self.parent_id = cfg, client, exp_id, parent_id
        self.sizes = sizes  # row counts per split: the dataset lineage on every run
        self.base = base  # the bias/variance yardstick: each ended trial gets its label
        self.fingerprint, self.out, self.total, self.role = fingerprint, out, total, role
        self.resumed = resumed
        self.key = ""
        self.by_id: dict[str, TrialRecord] = {}
        self._started: set[str] = set()  # trials (re)started and not yet reporting

    def __reduce__(self) -> tuple:
        return (_live_callback, (self.key,))

    def get_state(self) -> dict[str, Any]:
        return {"by_id": self.by_id}

    def set_state(self, state: dict[str, Any]) -> None:

        self.by_id = state["by_id"]
        key, mode = config_mod.rank_metric(self.cfg)
        for rec in self.by_id.values():
            if not rec.run_id:
                continue
            run = self.client.get_run(rec.run_id)
            logged = writer.last_step(self.client, rec.run_id)
            if rec.status == "RUNNING":
                # MLflow may hold epochs that Tune's last save missed; a trial that then
                # finished reports nothing more, so the ledger takes them from MLflow
                for row in writer.epochs_since(self.client, rec.run_id, rec.epochs):
                    ledger.update(rec, row, key, mode)
                best_ckpt = run.data.tags.get(schema.BEST_CHECKPOINT)
                if rec.best is not None and best_ckpt:
                    rec.checkpoint = best_ckpt
            # and the other way round: epochs the ledger holds that were still in the dead
            # driver's outbox (writes are sent from a thread, up to half a second later)
            for row in plots.by_epoch(rec.history):
                if int(row["epoch"]) > logged:
                    writer.log_epoch(self.client, rec.run_id, row)
            rec.logged = max(logged, rec.epochs)
            if rec.status != "RUNNING" and run.info.status == "RUNNING":
                self._close(rec)  # it ended, but its end had not reached MLflow
        done = sum(r.status != "RUNNING" for r in self.by_id.values())
        self.out(
            f"[{self._tag}] restored {len(self.by_id)} trial(s): {done} finished (not "
            f"rerun), {len(self.by_id) - done} to continue from their last checkpoint"
        )

    @property
    def _tag(self) -> str:
        return "sweep" if self.role == "trial" else self.role

    @property
    def records(self) -> list[TrialRecord]:
        return list(self.by_id.values())

    def _record(self, trial: Any) -> TrialRecord:

        rec = self.by_id.get(trial.trial_id)
        if rec is None:
            values = trials.values_of(trial.config)
            rec = TrialRecord(trial.trial_id, values)
            found = (
                writer.find_trial_run(self.client, self.exp_id, self.parent_id, trial.trial_id)
                if self.resumed and self.parent_id
                else None
            )
            if found:  # started just before the driver died, after Tune's last save
                rec.run_id, rec.logged = found
                self.client.update_run(rec.run_id, status="RUNNING")
            else:
                rec.run_id = writer.start_trial_run(
                    self.client,
                    self.exp_id,
                    self.parent_id,
                    trial.trial_id,
                    config_mod.with_values(self.cfg, values),
                    self.fingerprint,
                    self.role,
                    sizes=self.sizes,
                )
            if self.parent_id is None:
                self.out(f"[train] MLflow run {rec.run_id}")
            self.by_id[trial.trial_id] = rec
        return rec

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rec = self._record(trial)
        self._started.add(trial.trial_id)
        if self.parent_id is not None and rec.epochs == 0:
            self.out(f"[{self._tag}] trial {rec.trial_id} started ({_show(rec.values)})")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.out(f"[{self._tag}] trial {trial.trial_id} crashed; retrying from its last checkpoint")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:

        rec = self._record(trial)
        epoch = int(result.get("epoch", 0))
        if trial.trial_id in self._started:
            self._started.discard(trial.trial_id)
            if epoch > 1:  # a retry, a resumed sweep, an unpaused or exploited (PBT) trial
                self.out(f"[{self._tag}] trial {rec.trial_id} continues from epoch {epoch - 1}")
        values = trials_mod.values_of(trial.config)
        if values != rec.values:  # PBT moved this trial to new values and a better one's
            rec.values = values  # checkpoint, which may be some epochs behind this trial
            rec.epochs = min(rec.epochs, epoch - 1)
            assert rec.run_id is not None
            self.client.set_tag(rec.run_id, f"{schema.VALUES_AT_EPOCH}{epoch}", _show(values))
        if epoch <= rec.epochs:
            return  # an epoch replayed from a checkpoint: in the ledger already
        if epoch > rec.epochs + 1 and self.cfg.sweep.scheduler != "pbt":
            # epochs this driver never got (reports in flight when an earlier driver was
            # killed; the worker group went on from a later checkpoint): filled in from
            # the history in the next checkpoint this trial reports
            rec.gap = (rec.epochs, epoch)
        key, mode = config_mod.rank_metric(self.cfg)
        if ledger.update(rec, result, key, mode) and rec.checkpoint:
            self._note_checkpoint(rec)
        if epoch > rec.logged:
            assert rec.run_id is not None
            writer.log_epoch(self.client, rec.run_id, result)
            rec.logged = epoch
        if rec.gap and result.get("checkpoint_path"):
            self._fill_gap(rec, str(result["checkpoint_path"]))
        if self.parent_id is None:
            self.out(progress.epoch_line(result))

    def on_checkpoint(
        self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any
    ) -> None:
        # Fast-path trials checkpoint through Tune: the path arrives here, after the result.
        rec = self._record(trial)
        if rec.best is not None and rec.best.get("epoch") == trial.last_result.get("epoch"):
            rec.checkpoint = checkpoint.path
            self._note_checkpoint(rec)
        if rec.gap:
            self._fill_gap(rec, checkpoint.path)

    def _fill_gap(self, rec: TrialRecord, checkpoint_dir: str) -> None:

        assert rec.gap is not None and rec.run_id is not None
        lo, hi = rec.gap
        path = Path(checkpoint_dir) / checkpoint.HISTORY_FILE
        if not path.is_file():
            return
        rows = [r for r in json.loads(path.read_text()) if lo < int(r["epoch"]) < hi]
        for row in rows:
            writer.log_epoch(self.client, rec.run_id, row)
        # In the history, not a candidate for the best epoch: their checkpoints are gone.
        rec.history = sorted(rec.history + rows, key=lambda r: r["epoch"])
        rec.gap = None
        if rows:
            self.out(
                f"[{self._tag}] trial {rec.trial_id}: epochs {lo + 1}-{hi - 1} "
                "recovered from its checkpoint"
            )

    def _note_checkpoint(self, rec: TrialRecord) -> None:
        # in MLflow too: a resumed sweep whose Tune state missed this epoch finds it there
        assert rec.run_id is not None and rec.checkpoint is not None
        self.client.set_tag(rec.run_id, schema.BEST_CHECKPOINT, rec.checkpoint)

    def _finish(self, trial: Any, status: str, error: str | None = None) -> None:
        rec = self._record(trial)
        rec.status, rec.error = status, error
        self._close(rec)

    def _close(self, rec: TrialRecord) -> None:
        """End a finished trial's run: its learning curves, its status, and a progress line."""

        error = rec.error
        assert rec.run_id is not None
        tags = {
            schema.EPOCHS_RUN: str(rec.epochs),
            schema.STATUS: progress.status_of(rec, self.cfg.train.epochs),
        }
        if error:
            tags[schema.ERROR] = error[-5000:]
        found = (
            diagnosis.failed(rec.epochs)
            if error
            else diagnosis.diagnose(
                rec.history,
                self.base,
                config_mod.with_values(self.cfg, rec.best_values or rec.values),
                self.cfg.diagnosis,
            )
            if self.base is not None
            else None
        )
        if found is not None:
            rec.diagnosis, rec.diagnosis_reasons = found.label, found.reasons
            rec.diagnosis_fixes = found.fixes
            tags.update(
                {
                    schema.DIAGNOSIS: found.label,
                    f"{schema.DIAGNOSIS}_reasons": found.reasons,
                    f"{schema.DIAGNOSIS}_fixes": "; ".join(found.fixes),
                }
            )
        if rec.history:  # the trial's learning curves, as a picture on its run
            title = (
                f"{self._tag} {rec.trial_id}: {_show(rec.values)}"
                if rec.values
                else f"{self._tag} {rec.trial_id}"
            )
            writer.log_png(
                self.client,
                rec.run_id,
                plots.learning_curves(rec.history, title),
                "learning_curves.png",
            )
        writer.end_run(self.client, rec.run_id, "FAILED" if error else "FINISHED", tags)
        if self.parent_id is not None:
            key, mode = config_mod.rank_metric(self.cfg)
            line = progress.progress_line(self.records, self.total, key, mode)
            self.out(
                line.replace(
                    "[sweep]", f"[{self._tag}] trial {rec.trial_id} {tags[schema.STATUS]};"
                )
            )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "ERROR", _error_text(trial))
        lines = (self.by_id[trial.trial_id].error or "").strip().splitlines() or ["?"]
        self.out(f"[{self._tag}] trial {trial.trial_id} failed: {lines[-1]}")

    def forget_orphans(self) -> None:
        """Runs opened for trials Tune no longer knows (started after its last save before
        the driver died; Tune runs them again under new ids): deleted, so every trial has
        exactly one run."""

        if self.parent_id is None:
            return
        # a record may still hold a placeholder id from an outage: compare real ids
        known = {self.client.run_id(r.run_id) for r in self.records}
        for run in writer.child_runs(self.client, self.exp_id, self.parent_id):
            if (
                run.info.run_id not in known
                and run.info.status == "RUNNING"
                and run.data.tags.get(schema.ROLE) == self.role
            ):
                self.client.delete_run(run.info.run_id)


class _Watchdog(_callback_base()):  # type: ignore[misc]
    """Turns "a running trial has reported nothing for ``sweep.stall_timeout`` seconds" into
    ``SweepStalled`` naming it. Tune's controller loop keeps turning while a trial hangs in
    its own process (as trials did at their end with Ray's own Train-to-Tune bridge), so a
    check at each step of that loop sees any trial's silence."""

    def __init__(self, timeout: float, planned_epochs: int) -> None:
        self.timeout, self.planned = timeout, planned_epochs
        self._seen: dict[str, float] = {}  # running trial -> when it last started or reported

    def __getstate__(self) -> dict[str, Any]:
        # Tune saves its callbacks with the experiment; a resumed sweep starts its clocks anew
        return {**self.__dict__, "_seen": {}}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._seen[trial.trial_id] = time.monotonic()

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self._seen[trial.trial_id] = time.monotonic()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        running = {t.trial_id: t for t in trials if t.status == "RUNNING"}
        # a paused, pending or ended trial is not silent; one that runs again starts anew
        self._seen = {tid: self._seen.get(tid, now) for tid in running}
        found = progress.stalled(self._seen, now, self.timeout)
        if found is None:
            return
        trial = running[found[0]]
        epoch = int((trial.last_result or {}).get("epoch", 0))
        raise progress.SweepStalled(
            progress.stall_message(
                found[0],
                trials_mod.values_of(trial.config),
                epoch,
                self.planned,
                found[1],
                self.timeout,
            )
        )


trials_mod = trials


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        return Path(path).read_text()[-5000:]
    return str(getattr(trial, "error_msg", None) or "trial failed")


def _show(values: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )
