"""`orchestrator autopilot CONFIG`: rounds of search, each steered by the diagnosis of the one
before, to the sweet spot; then the sweep's own confirmation and champion, once, and the
data curve when the champion overfits.

Round 1 searches the broad space ``core.autopilot.broad_space`` builds from the config
(Optuna TPE and ASHA, by promotion on the fast path). After each round the label most of
the best quarter of every trial so far carry decides the next round's space
(``core.autopilot.steer``), the next round's TPE is told every earlier trial that lies
inside it (``core.autopilot.warm_start``), and its ASHA ranks each rung against the earlier
trials over the same epochs (``core.asha.Ladder.carry``). It stops when the best improved by
less than ``autopilot.min_improvement`` in each of the last two rounds, or when the budget
(``autopilot.budget_trials``, ``autopilot.budget_hours``) is spent.

MLflow: one run with role ``autopilot`` (the champion, its test scores and the reasons as
tags); under it a ``sweep`` run per round with that round's trials under it, the
confirmation runs, and the curve. The sweep folder's state file keeps every round (its
space, reasons, best and trials), so ``orchestrator resume`` goes on at the round it was in.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator import config as config_mod
from orchestrator.config import Config, ConfigError
from orchestrator.core import autopilot as plan
from orchestrator.core import model, state, storage
from orchestrator.core.ledger import TrialRecord
from orchestrator.core.prepare import prepare
from orchestrator.execution import runtime, trials
from orchestrator.sweep import champion, confirm, data_curve, driver, screen, search, tuner
from orchestrator.sweep.book import Book
from orchestrator.sweep.context import Context
from orchestrator.tracking import location, schema, writer

KIND = "autopilot"  # the state file's key for the rounds (a plain sweep's state has none)
CONFIRM_SEEDS = 2  # at least: the autopilot always confirms its top configurations
CURVE_LABELS = ("overfit", "both")  # a champion with high variance gets the data curve
RECORD_FIELDS = ("trial_id", "values", "run_id", "epochs", "best", "checkpoint", "status")
TAG_MAX = 5000  # characters of a tag value kept (MLflow's limit, with room)


@dataclass
class Round:
    """One round as the state file keeps it: its space and why, its trials and its result."""

    number: int
    trials: int  # planned
    space: dict[str, Any]
    why: list[str]
    run_id: str | None = None
    best: float | None = None  # this round's best ranking metric
    label: str | None = None  # the label that steered the next round (best quarter so far)
    steer: list[str] = field(default_factory=list)  # why the next round's space
    records: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    done: bool = False
    epochs: int | None = None  # its train.epochs, when steering changed them (None: configured)


@dataclass
class AutopilotSummary(driver.SweepSummary):
    """A finished autopilot: the sweep summary of its champion (``records``: every round's
    trials), its rounds, why it stopped, and the data curve when one ran."""

    rounds: list[Round] = field(default_factory=list)
    stop: str = ""
    curve: Any = None  # data_curve.CurveSummary, when the champion overfit


def config_for(cfg: Config, budget_trials: int | None, budget_hours: float | None) -> Config:
    """The config with the CLI's short forms applied (``--budget-trials``,
    ``--budget-hours``), checked like the keys they stand for."""
    values: dict[str, Any] = {}
    if budget_trials is not None:
        values["autopilot.budget_trials"] = budget_trials
    if budget_hours is not None:
        values["autopilot.budget_hours"] = budget_hours
    return config_mod.with_values(cfg, values) if values else cfg


def budget_of(cfg: Config) -> plan.Budget:
    """How the config's budget is split (ConfigError naming ``autopilot.budget_trials``
    when it cannot hold three rounds and the confirmation)."""
    try:
        return plan.plan_budget(
            cfg.autopilot.budget_trials, confirm_runs(cfg), cfg.autopilot.max_rounds
        )
    except ValueError as e:
        raise ConfigError(
            "autopilot.budget_trials", str(e), "raise it, or lower sweep.confirm_top"
        ) from None


def confirm_runs(cfg: Config) -> int:
    """The confirmation's runs: the top ``confirm_top`` configurations x the seeds."""
    return cfg.sweep.confirm_top * max(cfg.sweep.confirm_seeds, CONFIRM_SEEDS)


def round_config(
    cfg: Config, space: dict[str, Any], number: int, samples: int, epochs: int | None = None
) -> Config:
    """A round's config: its space, its trial count, TPE seeded per round, ASHA, and its
    epochs when steering changed them."""
    raw = config_mod.to_dict(cfg)
    if epochs is not None:
        raw["train"]["epochs"] = epochs
    raw["sweep"].update(
        space=space,
        num_samples=samples,
        searcher="optuna",
        scheduler="asha",  # by promotion on the fast path (sweep.asha_mode: auto)
        seed=cfg.sweep.seed + number - 1,
    )
    return config_mod.from_dict(raw)  # a steered space is checked like any other


def run(cfg: Config, out: Callable[[str], None] = print, verbose: bool = False) -> AutopilotSummary:
    """The whole autopilot (see the module). Config, budget, space and data are checked
    before Ray or MLflow start."""
    budget = budget_of(cfg)
    with screen.reading(out, cfg):
        prep = prepare(cfg, say=out)  # raises ConfigError on bad data: nothing written yet
    cfg = prep.cfg
    space, why = plan.broad_space(cfg, model.declared_space(cfg.model.kind))
    first = round_config(cfg, space, 1, budget.rounds[0])
    trials.search_space(first)  # a bad space fails here, before Ray starts
    storage.export_secrets(cfg.sweep.storage_filesystem)
    state.check_storage(cfg)
    client, exp_id = writer.connect(cfg, out)
    runtime.init_ray(verbose)
    concurrency = driver.concurrency_for(first, prep)
    run_id = writer.start_sweep_run(
        client, exp_id, first, prep.fingerprint, prep.sizes, role="autopilot"
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    where = storage.absolute(cfg.sweep.storage_path)
    ctx = Context(first, prep, client, exp_id, run_id, stamp, where, concurrency, out)
    ctx.path.mkdir()
    client.use_journal(ctx.path)
    client.set_tag(run_id, schema.SWEEP_DIR, str(ctx.path))
    client.set_tag(run_id, schema.AUTOPILOT_BUDGET, budget.describe())
    for key, value in schema.baseline_tags(prep.baseline.loss, prep.baseline.accuracy).items():
        client.set_tag(run_id, key, value)
    pilot: dict[str, Any] = {
        "base": config_mod.to_dict(config_mod.redact(cfg)),  # secrets: from the environment
        "rounds": [dataclasses.asdict(Round(1, budget.rounds[0], space, why))],
        "stage": "search",
    }
    _save(ctx, pilot)
    limit = cfg.autopilot.budget_hours
    out(
        f"[autopilot] {cfg.experiment}: budget {budget.describe()}"
        + (f", {limit:g} h" if limit else "")
        + f"; {concurrency} trial(s) at a time; data {prep.sizes}; "
        f"MLflow {config_mod.redact_uri(location.resolve_uri(cfg))}"
    )
    out(f"[autopilot] if the driver stops: orchestrator resume {ctx.path}")
    return _go(ctx, cfg, budget, pilot)


def resume(
    path: storage.Folder, saved: dict[str, Any], out: Callable[[str], None], verbose: bool
) -> AutopilotSummary:
    """Go on with an autopilot whose driver died, at the round (or stage) it was in."""
    pilot = saved[KIND]
    cfg = config_mod.restore(config_mod.from_dict(pilot["base"]))
    prep = prepare(cfg)
    driver.same_data(prep, saved, "autopilot")
    cfg = prep.cfg
    budget = budget_of(cfg)
    # the context's config is the round's (the state's): the base config is kept apart
    ctx = driver.reopen(path, saved, state.saved_config(saved), prep, out, verbose)
    done = sum(r["done"] for r in pilot["rounds"])
    where = f"round {done + 1}" if pilot["stage"] == "search" else "the confirmation"
    out(
        f"[autopilot] resuming {path.name} (MLflow run {ctx.parent_id}): {done} round(s) done, "
        f"going on with {where}"
    )
    return _go(ctx, cfg, budget, pilot)


def _save(ctx: Context, pilot: dict[str, Any], phase: str = state.RUNNING) -> None:
    driver.save(ctx, phase, **{KIND: pilot})


def _go(ctx: Context, cfg: Config, budget: plan.Budget, pilot: dict[str, Any]) -> AutopilotSummary:
    """The rounds, then confirmation and champion; the autopilot's run ends FINISHED with the
    champion, or FAILED however it fails."""
    assert ctx.parent_id is not None
    confirming = ctx.resume and pilot["stage"] == "confirm"  # its Tune run may be restored
    try:
        if pilot["stage"] == "search":
            stop = _search(ctx, cfg, budget, pilot)
            pilot.update(stage="confirm", stop=stop)
            ctx.client.set_tag(ctx.parent_id, schema.AUTOPILOT_STOP, stop)
            _save(ctx, pilot)
            ctx.out(f"[autopilot] search done: {stop}")
        rounds = [Round(**r) for r in pilot["rounds"]]
        records = [_record(r) for rnd in rounds for r in rnd.records]
        cctx, won, confirmed = _crown(ctx, cfg, rounds[-1], records, confirming)
    except BaseException as e:
        # any password in a URI in the error redacted (data_curve.failure_tags)
        tags = data_curve.failure_tags(e)
        tags[schema.ERROR] += f"; its state is saved: orchestrator resume {ctx.path}"
        writer.end_run(ctx.client, ctx.parent_id, "FAILED", tags)
        raise
    # done before the run ends (as a sweep's): a kill from here on never crowns twice
    pilot["stage"] = "done"
    ctx.cfg = cctx.cfg  # saved so: the curve's seeds come after the confirmation's
    _save(ctx, pilot, state.DONE)
    found = driver.finish(cctx, records, won, confirmed)
    summary = AutopilotSummary(
        **{f.name: getattr(found, f.name) for f in dataclasses.fields(driver.SweepSummary)},
        rounds=rounds,
        stop=pilot["stop"],
    )
    trial = summary.champion.trial_id
    label = next((r.get("diagnosis") for r in _all(rounds) if r["trial_id"] == trial), None)
    if label in CURVE_LABELS and budget.curve:
        summary.curve = _curve(ctx, str(label))
    return summary


def _all(rounds: list[Round]) -> list[dict[str, Any]]:
    return [r for rnd in rounds for r in rnd.records]


def _search(ctx: Context, cfg: Config, budget: plan.Budget, pilot: dict[str, Any]) -> str:
    """Rounds until the stop rule or the budget says stop; why it stopped."""
    key, mode = config_mod.rank_metric(cfg)
    limit = cfg.autopilot.budget_hours * 3600 if cfg.autopilot.budget_hours else math.inf
    while True:
        rnd = Round(**pilot["rounds"][-1])
        if not rnd.done:
            spent = sum(r["seconds"] for r in pilot["rounds"])
            allowed = _time_for_round(pilot["rounds"], limit - spent, budget)
            if allowed is not None and allowed <= 0:
                pilot["rounds"].pop()  # never started
                return f"autopilot.budget_hours ({cfg.autopilot.budget_hours:g}) spent"
            _run_round(ctx, cfg, rnd, pilot, allowed)
        bests = _bests([Round(**r) for r in pilot["rounds"]], mode)
        why = plan.stop_reason(bests, cfg.autopilot.min_improvement, mode)
        if why is not None:
            return why
        spent = sum(r["seconds"] for r in pilot["rounds"])
        allowed = _time_for_round(pilot["rounds"], limit - spent, budget)
        if allowed is not None and allowed <= 0:  # said before a next round is planned
            return f"autopilot.budget_hours ({cfg.autopilot.budget_hours:g}) spent"
        if rnd.number >= len(budget.rounds):  # the last round took what was left
            return f"autopilot.budget_trials ({cfg.autopilot.budget_trials}) spent"
        # steered by every trial so far: a later round of a few trials alone would narrow
        # around one or two points (its pruned trials are too short to be judged)
        points = [_point(r, key) for done in pilot["rounds"] for r in done["records"]]
        rcfg = round_config(cfg, rnd.space, rnd.number, rnd.trials, rnd.epochs)
        space, label, steer = plan.steer(points, rnd.space, key, mode, rcfg)
        epochs, longer = plan.longer(points, key, mode, rcfg.train.epochs, cfg.train.epochs)
        steer += longer
        nxt = Round(rnd.number + 1, budget.rounds[rnd.number], space, steer)
        if epochs != cfg.train.epochs:
            nxt.epochs = epochs
        round_config(cfg, space, nxt.number, nxt.trials, nxt.epochs)  # checked before saving
        pilot["rounds"][-1].update(label=label, steer=steer)
        ctx.client.set_tag(rnd.run_id or "", schema.ROUND_LABEL, str(label))
        ctx.client.set_tag(rnd.run_id or "", schema.STEER_REASONS, "\n".join(steer)[:5000])
        pilot["rounds"].append(dataclasses.asdict(nxt))
        ctx.cfg = round_config(cfg, space, nxt.number, nxt.trials, nxt.epochs)  # the state's
        _save(ctx, pilot)
        for line in steer:
            ctx.out(f"[autopilot]   - {line}")


def _time_for_round(rounds: list[dict], left: float, budget: plan.Budget) -> float | None:
    """Seconds this round may take (None: no time limit): what is left, less what the
    confirmation needs (estimated from the trials so far: a confirmation run trains to the
    end, so twice a searched trial's mean), and round 1 at most its share of the search."""
    if not math.isfinite(left):
        return None
    done = [r for r in rounds if r["done"]]
    if not done:
        return left * plan.FIRST_SHARE
    per_trial = sum(r["seconds"] for r in done) / max(1, sum(len(r["records"]) for r in done))
    return left - 2 * per_trial * budget.confirm


def _bests(rounds: list[Round], mode: str) -> list[float]:
    """The best so far after each finished round (what the stop rule reads)."""
    out: list[float] = []
    for r in rounds:
        if not r.done:
            break
        scores = [x for x in ([*out[-1:], r.best]) if x is not None and math.isfinite(x)]
        out.append((min if mode == "min" else max)(scores) if scores else math.nan)
    return out


def _run_round(
    ctx: Context, cfg: Config, rnd: Round, pilot: dict[str, Any], seconds: float | None
) -> None:
    """One round: its sweep run under the autopilot's, its Tune run, its result saved. The
    round's run ends FAILED however the round fails (a kill leaves it to the resume)."""
    assert ctx.parent_id is not None
    rcfg = round_config(cfg, rnd.space, rnd.number, rnd.trials, rnd.epochs)
    resuming = _open_round(ctx, rcfg, rnd, pilot)
    assert rnd.run_id is not None
    try:
        records = _search_round(ctx, cfg, rcfg, rnd, pilot, seconds, resuming)
    except BaseException:
        writer.end_run(ctx.client, rnd.run_id, "FAILED", {})
        raise
    key, _ = config_mod.rank_metric(cfg)
    best = "none finished an epoch" if rnd.best is None else f"best {key} {rnd.best:.4f}"
    ctx.out(f"[autopilot] round {rnd.number} done: {len(records)} trials, {best}")


def _open_round(ctx: Context, rcfg: Config, rnd: Round, pilot: dict[str, Any]) -> bool:
    """The round's MLflow run: found again on a resume (by its id in the state, or, when the
    driver died before saving that id, by its round tag), or started; True when the round
    goes on from where a dead driver left it."""
    assert ctx.parent_id is not None
    if rnd.run_id is None and ctx.resume:
        rnd.run_id = next(
            (
                r.info.run_id
                for r in writer.child_runs(ctx.client, ctx.exp_id, ctx.parent_id)
                if r.data.tags.get(schema.ROUND) == str(rnd.number)
                and r.data.tags.get(schema.ROLE) == "sweep"
            ),
            None,
        )
    if rnd.run_id is not None:
        if ctx.resume:
            ctx.client.update_run(rnd.run_id, status="RUNNING")
        pilot["rounds"][-1]["run_id"] = rnd.run_id
        _save(ctx, pilot)
        return ctx.resume
    rnd.run_id = writer.start_sweep_run(
        ctx.client,
        ctx.exp_id,
        rcfg,
        ctx.prep.fingerprint,
        ctx.prep.sizes,
        parent_id=ctx.parent_id,
        name=f"round-{rnd.number}",
    )
    space = json.dumps(rnd.space)
    tags = {
        schema.ROUND: str(rnd.number),
        schema.ROUND_SPACE: space
        if len(space) <= TAG_MAX
        else f"(too long for a tag: in {ctx.path}/{state.STATE_FILE})",
        schema.ROUND_REASONS: "\n".join(rnd.why)[:TAG_MAX],
    }
    for k, v in tags.items():
        ctx.client.set_tag(rnd.run_id, k, v)
    pilot["rounds"][-1]["run_id"] = rnd.run_id
    _save(ctx, pilot)
    return False


def _search_round(
    ctx: Context,
    cfg: Config,
    rcfg: Config,
    rnd: Round,
    pilot: dict[str, Any],
    seconds: float | None,
    resuming: bool,
) -> list[TrialRecord]:
    """The round's Tune run into its trial book (TPE told of the earlier trials inside its
    space), its best, its plots; the round saved as done."""
    assert rnd.run_id is not None
    epochs = f", {rcfg.train.epochs} epochs" if rnd.epochs is not None else ""
    ctx.out(
        f"[autopilot] round {rnd.number}: {rnd.trials} trials{epochs} over {_describe(rnd.space)}"
    )
    if rnd.number == 1 and not resuming:
        for line in rnd.why:
            ctx.out(f"[autopilot]   - {line}")
    rctx = dataclasses.replace(ctx, cfg=rcfg, parent_id=rnd.run_id, resume=resuming)
    key, mode = config_mod.rank_metric(cfg)
    earlier = [_point(r, key) for done in pilot["rounds"][:-1] for r in done["records"]]
    warm = plan.warm_start(earlier, rnd.space, key)
    if earlier and not resuming:
        ctx.out(
            f"[autopilot]   TPE starts from {len(warm[0])} of the {len(earlier)} earlier "
            "trial(s) (those inside this space)"
        )
    ladder = _earlier_rungs(pilot["rounds"][:-1], rcfg.train.epochs, cfg.train.epochs)
    if ladder and not resuming:
        ctx.out(
            f"[autopilot]   ASHA ranks each rung against the {len(ladder)} earlier trial(s) "
            f"of {rcfg.train.epochs} epochs"
        )
    book = Book(rctx, "trial", rnd.trials)
    book.title = f"round {rnd.number}"
    trainable = trials.make_trainable(rcfg, ctx.stamp, ctx.storage, ctx.prep.summary)

    def make() -> tuner.Search:
        return tuner.Search(
            trials.search_space(rcfg),
            rnd.trials,
            trials.scheduler(rcfg, ladder),
            trials.searcher(rcfg, ctx.concurrency, warm),
            ctx.concurrency,
            time_budget_s=seconds,
        )

    started = time.monotonic()
    tuner.run_book(book, trainable, make, f"{ctx.name}-round{rnd.number}")
    for rec in book.records:  # cut off by the time budget: Tune ended them without a word
        if rec.status == "RUNNING":
            rec.status = "TERMINATED"
            book.close(rec)
    records = book.records
    scores = [r.best[key] for r in records if r.best and key in r.best and r.status != "ERROR"]
    rnd.best = (min if mode == "min" else max)(scores) if scores else None
    if rnd.best is not None:
        ctx.client.log_metric(rnd.run_id, f"best_{key}", rnd.best)
    search.log_sweep_plots(ctx.client, rnd.run_id, rcfg, records, None)
    writer.end_run(ctx.client, rnd.run_id, "FINISHED", {})
    pilot["rounds"][-1].update(
        run_id=ctx.client.run_id(rnd.run_id) or rnd.run_id,  # a real id, after an outage
        best=rnd.best,
        records=[_saved(ctx, r) for r in records],
        seconds=pilot["rounds"][-1]["seconds"] + time.monotonic() - started,
        done=True,
    )
    _save(ctx, pilot)
    rnd.records = pilot["rounds"][-1]["records"]
    return records


def _crown(
    ctx: Context, cfg: Config, last: Round, records: list[TrialRecord], resume: bool
) -> tuple[Context, champion.Champion, list[dict[str, Any]]]:
    """The sweep's confirmation (at least ``CONFIRM_SEEDS`` fresh seeds for the top
    configurations, over every round's trials) and champion, under the autopilot's run."""
    raw = config_mod.to_dict(round_config(cfg, last.space, last.number, last.trials, last.epochs))
    raw["sweep"]["confirm_seeds"] = max(cfg.sweep.confirm_seeds, CONFIRM_SEEDS)
    cctx = dataclasses.replace(ctx, cfg=config_mod.from_dict(raw), resume=resume)
    assert cctx.parent_id is not None
    best, confirmed = confirm.confirm(cctx, records)
    won = champion.crown(cctx, best)
    search.log_sweep_plots(cctx.client, cctx.parent_id, cctx.cfg, records, won.record.trial_id)
    return cctx, won, confirmed


def _curve(ctx: Context, label: str) -> Any:
    """The data curve of the champion (its label: overfit or both), under the autopilot's run."""
    ctx.out(f"[autopilot] the champion is labelled {label}: would more data help?")
    try:
        return data_curve.run(str(ctx.path), ctx.storage, out=ctx.out)
    except Exception as e:  # the champion stands: the curve is measured after it, apart
        ctx.out(
            f"[autopilot] the data curve failed ({data_curve.failure_tags(e)[schema.ERROR]}); "
            f"the champion is registered. Measure it again: orchestrator curve {ctx.path}"
        )
        return None


def _point(rec: dict[str, Any], key: str) -> dict[str, Any]:
    """A trial as steering reads it: its values, its best ``key``, its label, its best epoch
    and the epochs it trained."""
    best = rec.get("best") or {}
    return {
        **rec["values"],
        key: best.get(key, math.nan),
        "label": rec.get("diagnosis"),
        "best_epoch": best.get("epoch", 0),
        "ran": rec.get("epochs", 0),
    }


def _saved(ctx: Context, rec: TrialRecord) -> dict[str, Any]:
    """A trial as the state file keeps it (its MLflow run's real id)."""
    out = {f: getattr(rec, f) for f in RECORD_FIELDS}
    out["run_id"] = ctx.client.run_id(rec.run_id) or rec.run_id
    out["diagnosis"] = rec.diagnosis
    out["history"] = rec.history[-1:]  # its last epoch: how it ended (diverged, stopped early)
    out["curve"] = _curve_of(rec.history, config_mod.rank_metric(ctx.cfg)[0])
    return out


def _curve_of(history: list[dict[str, float]], key: str) -> list[float]:
    """The ranked value at each epoch from the first, up to the first epoch without a
    finite one: what a later round's ASHA ranks its rungs against (``_earlier_rungs``)."""
    by_epoch = {int(row["epoch"]): row.get(key) for row in history if "epoch" in row}
    out: list[float] = []
    while isinstance(v := by_epoch.get(len(out) + 1), (int, float)) and math.isfinite(v):
        out.append(float(v))
    return out


def _earlier_rungs(
    rounds: list[dict[str, Any]], epochs: int, configured: int
) -> dict[str, list[float]]:
    """The earlier rounds' trials a round's ASHA ranks against (``Ladder.carry``): those
    trained over the same epochs (under a cosine schedule over another length, a rung's
    score is not comparable), by their round and trial id."""
    return {
        f"round{done['number']}-{r['trial_id']}": list(r["curve"])
        for done in rounds
        if (done.get("epochs") or configured) == epochs
        for r in done["records"]
        if r.get("curve")
    }


def _record(saved: dict[str, Any]) -> TrialRecord:
    rec = TrialRecord(**{f: saved[f] for f in RECORD_FIELDS})
    rec.diagnosis, rec.history = saved.get("diagnosis"), list(saved.get("history", []))
    return rec


def _describe(space: dict[str, Any]) -> str:
    parts = []
    for key, spec in space.items():
        if spec["type"] in ("choice", "grid"):
            parts.append(f"{key} in {len(spec['values'])} choices")
        else:
            parts.append(f"{key} {spec['type']} [{spec['low']:.3g}, {spec['high']:.3g}]")
    return "; ".join(parts)
