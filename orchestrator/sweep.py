"""Ray Tune edge: search the regularization axis, one TorchTrainer (DDP) per trial, the
driver as MLflow's only writer, then the champion: refit, test once, register, alias."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator import config as config_mod
from orchestrator import data, loop, model, progress
from orchestrator.config import Config, ConfigError
from orchestrator.progress import TrialRecord


@dataclass
class SweepSummary:
    experiment_id: str
    parent_run_id: str
    records: list[TrialRecord]
    champion: TrialRecord
    champion_values: dict[str, Any]
    test_metrics: dict[str, float]
    model_version: str
    tracking_uri: str
    register_as: str
    sizes: dict[str, int]


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

    def test_batches(self) -> Iterator[loop.Batch]:
        """The test split in CPU batches (streamed through Ray Data for big data)."""
        if self.splits is not None:
            x, y = torch.from_numpy(self.splits.x_test), torch.from_numpy(self.splits.y_test)
            for idx in torch.arange(len(y)).split(4096):
                yield x[idx], y[idx]
            return
        from orchestrator import ray_train

        assert self.summary is not None
        test = ray_train.stream_datasets(self.cfg, self.summary)["test"]
        for b in test.iter_torch_batches(batch_size=4096, device="cpu"):
            yield b["x"], b["y"]


def prepare(cfg: Config) -> Prepared:
    """Check the data (ConfigError on any problem, before Ray or MLflow start) and pick the
    loader: small data is read whole, big data is scanned batch by batch and streamed."""
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, path=data.absolute(cfg.data.path)))
    loader = data.choose_loader(cfg.data, data.size_bytes(cfg.data))
    if loader == "stream":
        summary = data.scan(cfg.data)
        return Prepared(cfg, loader, summary.fingerprint, summary.sizes(), summary.classes,
                        len(summary.feature_names), summary=summary)
    splits = data.load_splits(cfg.data)
    return Prepared(cfg, loader, splits.fingerprint, splits.sizes(), splits.classes,
                    splits.num_features, splits=splits)


# ---------------------------------------------------------------- decisions (pure, no Ray)


def search_space(cfg: Config) -> dict[str, Any]:
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in cfg.sweep.space.items():
        kind = spec["type"]
        if kind == "uniform":
            out[key] = tune.uniform(spec["low"], spec["high"])
        elif kind == "loguniform":
            out[key] = tune.loguniform(spec["low"], spec["high"])
        elif kind == "randint":
            out[key] = tune.randint(spec["low"], spec["high"])
        elif kind == "choice":
            out[key] = tune.choice(spec["values"])
        else:
            out[key] = tune.grid_search(spec["values"])
    return out


def trial_concurrency(cfg: Config, cluster: dict[str, float], loader: str = "memory") -> int:
    """How many trials fit at once; ConfigError naming what is missing when not even one does.
    A streamed trial also keeps ``scaling.data_cpus`` free for its Ray Data tasks: with every
    CPU held by training workers the read and map tasks would never run."""
    s = cfg.scaling
    need_cpu = s.num_workers * s.cpus_per_worker + (s.data_cpus if loader == "stream" else 0)
    fits = math.floor(cluster.get("CPU", 0) / need_cpu + 1e-9)
    if s.use_gpu:
        fits = min(fits, math.floor(cluster.get("GPU", 0) / s.num_workers + 1e-9))
    if fits < 1:
        have = f"{cluster.get('CPU', 0):g} CPU, {cluster.get('GPU', 0):g} GPU"
        want = f"{need_cpu:g} CPU" + (f", {s.num_workers} GPU" if s.use_gpu else "")
        raise ConfigError("scaling.num_workers", f"one trial needs {want}; the cluster has {have}",
                          "lower scaling.num_workers or scaling.cpus_per_worker, or add nodes")
    if cfg.sweep.max_concurrent is not None:
        fits = min(fits, cfg.sweep.max_concurrent)
    return max(1, fits)


# ---------------------------------------------------------------- the Ray / MLflow edge


def init_ray(verbose: bool = False) -> None:
    """Join the cluster in ``RAY_ADDRESS`` (set by `ray job submit`; ``auto`` finds one
    started with `ray start`), or start a local one.

    A local Ray gets its dashboard on a free port: Train needs the dashboard to free the
    workers of a trial that the scheduler stops, and with 8265 taken by another Ray on the
    machine the dashboard would not start and the next trial would wait forever.
    """
    import ray

    if ray.is_initialized():
        return
    level = logging.INFO if verbose else logging.ERROR
    address = os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        ray.init(address=address, log_to_driver=verbose, logging_level=level)
        return
    ctx = ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                   dashboard_port=_free_port(), log_to_driver=verbose, logging_level=level)
    if not getattr(ctx, "dashboard_url", None):
        ray.shutdown()
        raise RuntimeError("Ray's dashboard did not start; without it, trials stopped early "
                           "leak their workers. Check `ray[default]` is installed.")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(cfg: Config, out: Callable[[str], None] = print, verbose: bool = False) -> SweepSummary:
    """The whole sweep. Config and data are checked before Ray or MLflow start."""
    prep = prepare(cfg)  # raises ConfigError on bad data: nothing written yet
    cfg = prep.cfg
    import ray
    from ray import tune

    from orchestrator import tracking

    scheduler: Any = None
    if cfg.sweep.scheduler == "asha":
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="epoch", max_t=cfg.train.epochs,
            grace_period=min(cfg.sweep.grace_period, cfg.train.epochs),
            reduction_factor=cfg.sweep.reduction_factor)
    space = search_space(cfg)
    init_ray(verbose)
    concurrency = trial_concurrency(cfg, ray.cluster_resources(), prep.loader)
    client, exp_id = tracking.connect(cfg)
    uri = tracking.resolve_uri(cfg)
    parent_id = tracking.start_sweep_run(client, exp_id, cfg, prep.fingerprint, prep.sizes)
    storage = str(Path(cfg.sweep.storage_path).absolute())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out(f"[sweep] {cfg.experiment}: {cfg.sweep.num_samples} trials x {cfg.scaling.num_workers} "
        f"DDP worker(s), {concurrency} at a time; data {prep.sizes} ({prep.loader}); "
        f"MLflow {uri}")

    callback = _SweepCallback(cfg, client, exp_id, parent_id, prep.fingerprint, out)
    tuner = _tuner(cfg, space, cfg.sweep.num_samples, scheduler, concurrency, callback,
                   storage, stamp, prep.summary)
    try:
        tuner.fit()
        best = progress.best_trial(callback.records, cfg.sweep.metric, cfg.sweep.mode)
        if best is None:
            raise RuntimeError("no trial finished an epoch; see the errors above")
        champion_cfg = config_mod.with_values(cfg, best.values)
        weights = _champion_weights(champion_cfg, best, storage, stamp, out, prep.summary)
        # the stem's statistics are buffers: load_state_dict brings the trained ones
        d = prep.num_features
        net = model.from_config(champion_cfg, np.zeros(d), np.ones(d), len(prep.classes))
        net.load_state_dict(weights)
        test_metrics, example = evaluate_test(net, prep)
        version = tracking.register_champion(
            champion_cfg, parent_id, model.WithProbabilities(net), example,
            prep.classes, test_metrics, best.run_id or "")
    except BaseException:
        tracking.end_run(client, parent_id, "FAILED", {})
        raise
    tracking.end_run(client, parent_id, "FINISHED", {
        "orchestrator.champion_trial": best.trial_id,
        **{f"orchestrator.champion.{k}": str(v) for k, v in best.values.items()}})
    return SweepSummary(exp_id, parent_id, callback.records, best, best.values, test_metrics,
                        version, uri, cfg.tracking.register_as, prep.sizes)


def _tuner(cfg: Config, space: dict[str, Any], num_samples: int, scheduler: Any,
           concurrency: int, callback: Any, storage: str, stamp: str,
           summary: data.Summary | None) -> Any:
    from ray import tune

    from orchestrator import ray_train

    def trial_fn(values: dict[str, Any]) -> None:
        from ray.tune.integration.ray_train import TuneReportCallback

        # Train V2 workers block on each report until the controller polls (every 2 s by
        # default): with epochs of a fraction of a second that poll would set the pace.
        # The trainer passes this variable on to its controller.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
        trial_cfg = config_mod.with_values(cfg, values)
        trial_id = tune.get_context().get_trial_id()
        trainer = ray_train.make_trainer(trial_cfg, f"{cfg.experiment}-{stamp}-{trial_id}",
                                         storage, callbacks=[TuneReportCallback()],
                                         summary=summary)
        trainer.fit()

    return tune.Tuner(
        # The trial itself only waits on its TorchTrainer; the workers hold the CPUs/GPUs.
        # (Tune refuses an empty request, so the trial asks for a token 1 MiB of memory.)
        tune.with_resources(trial_fn, {"cpu": 0, "memory": 2**20}),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=cfg.sweep.metric, mode=cfg.sweep.mode, num_samples=num_samples,
            # random search and grids both come from Tune's variant generator, seeded; given
            # a generator, Tune leaves the concurrency cap to it
            search_alg=tune.search.BasicVariantGenerator(random_state=cfg.sweep.seed,
                                                         max_concurrent=concurrency),
            scheduler=scheduler, max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(name=f"{cfg.experiment}-{stamp}", storage_path=storage,
                                  callbacks=[callback], verbose=0),
    )


@dataclass
class TrainSummary:
    run_id: str
    record: TrialRecord
    tracking_uri: str


def train_run(cfg: Config, out: Callable[[str], None] = print,
              verbose: bool = False) -> TrainSummary:
    """One training run of the config as it stands (no search): a TorchTrainer of
    ``scaling.num_workers`` DDP workers, restarted from its last checkpoint up to
    ``scaling.max_failures`` times, logged as one MLflow run tagged ``role=train``."""
    prep = prepare(cfg)
    cfg = prep.cfg
    import ray

    from orchestrator import tracking

    init_ray(verbose)
    trial_concurrency(cfg, ray.cluster_resources(), prep.loader)  # fails now if it cannot fit
    client, exp_id = tracking.connect(cfg)
    storage = str(Path(cfg.sweep.storage_path).absolute())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out(f"[train] {cfg.experiment}: {cfg.scaling.num_workers} DDP worker(s), "
        f"{cfg.train.epochs} epochs; data {prep.sizes} ({prep.loader})")
    callback = _SweepCallback(cfg, client, exp_id, None, prep.fingerprint, out)
    _tuner(cfg, {}, 1, None, 1, callback, storage, stamp, prep.summary).fit()
    rec = callback.records[0]
    assert rec.run_id is not None
    return TrainSummary(rec.run_id, rec, tracking.resolve_uri(cfg))


def _champion_weights(cfg: Config, best: TrialRecord, storage: str, stamp: str,
                      out: Callable[[str], None], summary: data.Summary | None,
                      ) -> dict[str, torch.Tensor]:
    """Refit on train + validation for the best epoch count (as scikit-learn's refit does),
    so the champion learns from every row but the test split; or take the trial's weights."""
    assert best.best is not None and best.checkpoint is not None
    if not cfg.sweep.refit:
        return loop.load_checkpoint(best.checkpoint)["model"]
    from orchestrator import ray_train

    epochs = int(best.best["epoch"])
    refit_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))
    out(f"[sweep] refitting the champion ({best.trial_id}) on train+validation for {epochs} epochs")
    result = ray_train.make_trainer(refit_cfg, f"{cfg.experiment}-{stamp}-refit", storage,
                                    refit=True, summary=summary).fit()
    assert result.checkpoint is not None
    with result.checkpoint.as_directory() as d:
        return loop.load_checkpoint(d)["model"]


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

    scores = loop.evaluate(net.cpu(), batches(), num_classes, loop.make_loss(num_classes),
                           loop.LocalSeam(), "test")
    return scores, first[0]


def _callback_base() -> type:
    from ray.tune import Callback

    return Callback


class _SweepCallback(_callback_base()):  # type: ignore[misc]
    """Runs in the driver: keeps the ledger, writes MLflow, prints progress."""

    def __init__(self, cfg: Config, client: Any, exp_id: str, parent_id: str | None,
                 fingerprint: str, out: Callable[[str], None]):
        self.cfg, self.client, self.exp_id, self.parent_id = cfg, client, exp_id, parent_id
        self.fingerprint, self.out = fingerprint, out
        self.by_id: dict[str, TrialRecord] = {}
        self.total = cfg.sweep.num_samples * _grid_size(cfg)

    @property
    def records(self) -> list[TrialRecord]:
        return list(self.by_id.values())

    def _record(self, trial: Any) -> TrialRecord:
        from orchestrator import tracking

        rec = self.by_id.get(trial.trial_id)
        if rec is None:
            values = {k: v for k, v in trial.config.items() if k in self.cfg.sweep.space}
            rec = TrialRecord(trial.trial_id, values)
            trial_cfg = config_mod.with_values(self.cfg, values)
            rec.run_id = tracking.start_trial_run(self.client, self.exp_id, self.parent_id,
                                                  trial.trial_id, trial_cfg, self.fingerprint)
            if self.parent_id is None:
                self.out(f"[train] MLflow run {rec.run_id}")
            self.by_id[trial.trial_id] = rec
        return rec

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rec = self._record(trial)
        if self.parent_id is not None:
            values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in rec.values.items())
            self.out(f"[sweep] trial {rec.trial_id} started ({values})")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        from orchestrator import tracking

        rec = self._record(trial)
        if int(result.get("epoch", 0)) <= rec.epochs:
            return  # an epoch replayed after a worker-group restart: logged once already
        progress.update(rec, result, self.cfg.sweep.metric, self.cfg.sweep.mode)
        assert rec.run_id is not None
        tracking.log_epoch(self.client, rec.run_id, result)
        if self.parent_id is None:
            self.out(progress.epoch_line(result))

    def _finish(self, trial: Any, status: str, error: str | None = None) -> None:
        from orchestrator import tracking

        rec = self._record(trial)
        rec.status, rec.error = status, error
        assert rec.run_id is not None
        tags = {"orchestrator.epochs_run": str(rec.epochs),
                "orchestrator.status": progress.status_of(rec, self.cfg.train.epochs)}
        if error:
            tags["orchestrator.error"] = error[-5000:]
        tracking.end_run(self.client, rec.run_id, "FAILED" if error else "FINISHED", tags)
        if self.parent_id is not None:
            self.out(progress.progress_line(self.records, self.total, self.cfg.sweep.metric,
                                            self.cfg.sweep.mode))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "ERROR", str(getattr(trial, "error_file", "") or "trial failed"))


def _grid_size(cfg: Config) -> int:
    sizes = [len(s["values"]) for s in cfg.sweep.space.values() if s["type"] == "grid"]
    return int(np.prod(sizes)) if sizes else 1


def ensure_env() -> None:
    """Keep Ray's Tune output and its V2 deprecation chatter out of the progress lines."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
