"""`orchestrator` command line: parse, validate, build, run, close. Config errors exit 2."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from orchestrator import config as config_mod
from orchestrator.analysis.progress import SweepStalled
from orchestrator.config import ConfigError, reference
from orchestrator.execution import runtime
from orchestrator.tracking import champions, location, schema, server

EXIT_CONFIG = 2
EXIT_REFUSED = 3  # serve: the model version is not servable (no pickle-free form, bad spec)
EXIT_TRACKING = 4  # training finished, but MLflow was away: writes kept for a replay
PLAIN_HELP = "plain progress lines, no live view (the default without a terminal or in CI)"
EXIT_STALLED = 5  # a trial reported nothing for sweep.stall_timeout: the sweep was stopped


def cmd_sweep(args: argparse.Namespace) -> int:
    """`orchestrator sweep`: search the space (or the one ``--refine-from`` proposes), register
    the champion."""
    from orchestrator import sweep

    cfg = config_mod.load(args.config, args.overrides)
    runtime.ensure_env()
    tags: dict[str, str] = {}
    if args.refine_from:
        cfg, tags = _refined(cfg, args.refine_from)
    # run() checks the data first (ConfigError) and only then starts Ray and MLflow
    with _screen(args) as out:
        summary = sweep.run(cfg, out=out, verbose=args.verbose, tags=tags)
    return _print_summary(cfg, summary)


@contextlib.contextmanager
def _screen(args: argparse.Namespace) -> Iterator[Any]:
    """Where a long command's words go: a live view on a terminal, plain lines otherwise
    (``--plain``, CI, a pipe); taken down however the command ends."""
    from orchestrator.sweep import screen

    view = screen.Screen(screen.wants_live(getattr(args, "plain", False)))
    try:
        yield view
    finally:
        view.close()
        folder = None if getattr(args, "verbose", False) else runtime.log_folder()
        if folder:  # what --verbose would have shown, kept off the screen
            print(f"[ray] Ray's own messages (raylet, workers): {folder}", flush=True)


def _refined(cfg: config_mod.Config, experiment: str) -> tuple[config_mod.Config, dict]:
    """The config with the search space `orchestrator diagnose` proposes after the sweep
    ``experiment`` (closing the loop), and the tags linking the new sweep to it."""
    from orchestrator.analysis import review

    view = review.load(experiment, cfg.sweep.storage_path)
    raw = config_mod.to_dict(cfg)
    raw["sweep"]["space"] = view.space
    new = config_mod.from_dict(raw)  # the proposal is checked like any space
    print(f"[sweep] refining {view.folder.name} (MLflow run {view.parent_run_id}):")
    for why in view.why:
        print(f"  - {why}")
    return new, {
        schema.REFINED_FROM: view.parent_run_id,
        schema.REFINED_FROM_SWEEP: view.folder.name,
        schema.REFINE_REASONS: " | ".join(view.why)[:5000],
    }


def cmd_autopilot(args: argparse.Namespace) -> int:
    """`orchestrator autopilot`: rounds of search steered by the diagnosis, then the
    champion (and the data curve when it overfits)."""
    from orchestrator import api
    from orchestrator.sweep import autopilot

    cfg = config_mod.load(args.config, args.overrides)
    cfg = autopilot.config_for(cfg, args.budget_trials, args.budget_hours)
    with _screen(args) as out:
        summary = api.autopilot(cfg, out=out, verbose=args.verbose)
    return _print_summary(config_mod.from_dict(summary.config), summary)


def cmd_resume(args: argparse.Namespace) -> int:
    """`orchestrator resume`: continue a sweep whose driver was stopped or killed."""
    from orchestrator import sweep

    runtime.ensure_env()
    with _screen(args) as out:
        summary = sweep.resume(args.experiment, args.storage, out=out, verbose=args.verbose)
    cfg = config_mod.from_dict(summary.config)
    return _print_summary(cfg, summary)


def cmd_curve(args: argparse.Namespace) -> int:
    """`orchestrator curve`: would more data help? The champion trained on 1/8 to all of its
    training rows, 3 seeds each, and the curve read with its extrapolation and verdict."""
    from orchestrator import api

    with _screen(args) as out:
        api.curve(args.experiment, args.storage, out=out, verbose=args.verbose)
    return 0


def _print_summary(cfg: config_mod.Config, summary: Any) -> int:
    from orchestrator.analysis import progress

    keys = list(cfg.sweep.space)
    print()
    for line in progress.rounds_table(getattr(summary, "rounds", []), *config_mod.rank_metric(cfg)):
        print(line)
    if getattr(summary, "stop", ""):
        print(f"stopped: {summary.stop}\n")
    print(
        progress.table(
            summary.records,
            keys,
            summary.champion.trial_id,
            cfg.train.epochs,
            config_mod.rank_metric(cfg),
        )
    )
    t = summary.test_metrics
    values = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in summary.champion_values.items()
    )
    how = f", chosen on the mean of {cfg.sweep.confirm_seeds} seeds" if summary.confirmed else ""
    print(f"\nchampion: trial {summary.champion.trial_id} ({values}){how}")
    print(f"  {progress.test_summary(t)} (held-out test split, {summary.sizes['test']} rows)")
    if summary.model_version is None:
        print(
            f"  NOT registered yet: MLflow at {summary.tracking_uri} was away at the end; "
            f"{summary.pending} write(s) and the champion are kept in {summary.sweep_dir}"
        )
        print(f"\nnext, once MLflow is back:\n  orchestrator tracking replay {summary.sweep_dir}")
        return EXIT_TRACKING
    print(
        f"  registered as models:/{summary.register_as}@champion (version {summary.model_version})"
    )
    print("\nnext:")
    # the URI is shown bare; MLflow reads the credentials from these variables
    uri = summary.tracking_uri.replace(f"://{config_mod.REDACTED}@", "://")
    if uri.startswith("http") and any(
        os.environ.get(v) for v in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    ):
        print("  (with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD exported)")
    if uri.startswith("http"):
        print(f"  open {uri} (the MLflow UI)")
    else:
        print(f"  mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    kind = cfg.model.kind  # a user's factory: the server must be told to trust it
    trust = "" if kind in ("mlp", "cnn") else f" serve.factories='[{kind}]'"
    print(
        f"  MLFLOW_TRACKING_URI={uri} orchestrator serve "
        f"--model models:/{summary.register_as}@champion{trust}"
    )
    return EXIT_TRACKING if summary.pending else 0


def cmd_train(args: argparse.Namespace) -> int:
    """`orchestrator train`: one training run of the config (no search); 1 unless it ended
    TERMINATED."""
    from orchestrator import sweep
    from orchestrator.analysis import progress

    cfg = config_mod.load(args.config, args.overrides)
    runtime.ensure_env()
    with _screen(args) as out:  # data checked before Ray starts
        summary = sweep.train_run(cfg, out=out, verbose=args.verbose)
    rec = summary.record
    best = rec.best or {}
    nan = float("nan")
    print(
        f"\n{progress.status_of(rec, cfg.train.epochs)} after {rec.epochs} epochs; best "
        f"{cfg.sweep.metric}={best.get(cfg.sweep.metric, nan):.4f} at epoch "
        f"{int(best.get('epoch', 0))} ({progress.score_key(best)}="
        f"{best.get(progress.score_key(best), nan):.4f})"
    )
    if rec.diagnosis:
        print(f"  fit: {rec.diagnosis}: {rec.diagnosis_reasons}")
        for fix in rec.diagnosis_fixes[:4]:
            print(f"    try: {fix}")
    print(f"  MLflow run {summary.run_id} in {summary.tracking_uri}")
    print(f"  best checkpoint: {rec.checkpoint}")
    return 0 if rec.status == "TERMINATED" else 1


def cmd_serve(args: argparse.Namespace) -> int:
    """`orchestrator serve`: a registered model over HTTP, or as a Ray Serve deployment."""
    from orchestrator.serving import serve

    cfg = config_mod.load(args.config, [*args.overrides, *serve_flags(args)], only="serve")
    opts = cfg.serve
    key = serve.required_key(opts.api_key, os.environ, opts.host, opts.allow_unauthenticated)
    try:
        if args.ray:
            from orchestrator.serving import serve_ray

            serve_ray.run(args.model, opts, cfg.tracking.uri, key)
        else:
            serve.run(args.model, opts, cfg.tracking.uri, key)
    except serve.Refused as e:
        print(
            f"orchestrator: serve: refused model version {e.version or '?'}: {e.reason}",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    return 0


SERVE_FLAGS = {
    "host": "serve.host",
    "port": "serve.port",
    "replicas": "serve.replicas",
    "tracking_uri": "tracking.uri",
}
"""`serve`'s flags, each short for a config key (given both, the flag wins)."""


def serve_flags(args: argparse.Namespace) -> list[str]:
    """The serve flags given, as the ``key=value`` overrides they are short for."""
    out = [
        f"{key}={getattr(args, flag)}"
        for flag, key in SERVE_FLAGS.items()
        if getattr(args, flag) is not None
    ]
    if args.allow_unauthenticated:
        out.append("serve.allow_unauthenticated=true")
    return out


def cmd_submit(args: argparse.Namespace) -> int:
    """`orchestrator submit`: pre-flight checks, then a sweep or training run as a Ray job."""
    from orchestrator.launch import submit

    return submit.submit(
        args.config,
        args.overrides,
        args.address,
        what="train" if args.train else "sweep",
        workdir=Path(args.working_dir),
        wait=not args.no_wait,
    )


def cmd_cluster(args: argparse.Namespace) -> int:
    """`orchestrator cluster up|down|status`: a multi-node Ray cluster on this machine."""
    from orchestrator.launch import cluster

    state_dir = Path(args.state_dir)
    if args.action == "up":
        running = cluster.load(state_dir)
        if running is not None and cluster.maybe_up(running):
            print(
                f"orchestrator: a cluster from {state_dir} is already up ({running.address});"
                " `orchestrator cluster down` first",
                file=sys.stderr,
            )
            return 1
        try:
            state = cluster.up(
                args.workers,
                args.cpus_per_worker,
                args.gpus_per_worker,
                args.head_cpus,
                args.dashboard_port,
                state_dir,
            )
        except RuntimeError as e:
            print(f"orchestrator: {e}", file=sys.stderr)
            cluster.down(state_dir)  # nothing half-started is left behind
            return 1
        print("\n".join(cluster.status_lines(state)))
        print(
            f"  submit: orchestrator submit jobs/configs/quickstart.yaml --address "
            f"{state.address}\n  (with RAY_AUTH_TOKEN_PATH={state.token_path})"
        )
        return 0
    if args.action == "down":
        print("stopped" if cluster.down(state_dir) else f"nothing is up (no {state_dir})")
        return 0
    found = cluster.load(state_dir)
    if found is None:
        print(f"nothing is up (no {state_dir}/cluster.json)")
        return 1
    print("\n".join(cluster.status_lines(found)))
    return 0


def cmd_tracking_serve(args: argparse.Namespace) -> int:
    """`orchestrator tracking serve`: an MLflow server, which takes this process over."""
    server.run(args.backend, args.artifacts, args.host, args.port, args.workers, args.extra)
    return 0  # pragma: no cover (run replaces this process)


def cmd_tracking_replay(args: argparse.Namespace) -> int:
    """`orchestrator tracking replay`: send a sweep's kept MLflow writes, register its champion."""
    from orchestrator.core import state, storage

    runtime.ensure_env()
    folder = storage.Folder(args.folder)  # a path, or a URI on object storage
    uri = args.tracking_uri
    if uri is None and folder.is_file(state.STATE_FILE):
        # saved redacted: its credentials come from $MLFLOW_TRACKING_USERNAME/PASSWORD
        cfg = state.saved_config(state.read(folder), keys=["tracking.uri"])
        uri = location.resolve_uri(cfg)
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError(
            "--tracking-uri",
            f"{folder} holds no sweep state to take it from",
            "pass --tracking-uri URI",
        )
    try:
        champions.replay(folder, uri, patience=args.patience)
    except RuntimeError as e:  # still away, refused writes, a damaged journal: what to do
        print(f"orchestrator: tracking replay: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    """`orchestrator diagnose`: label a finished sweep's trials, propose the next search space."""
    from orchestrator.analysis import review

    view = review.load(args.experiment, args.storage)
    review.print_view(view)
    path = review.write(view)
    print(f"\nwritten: {path} (and fit_map.png beside it)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """`orchestrator report`: one self-contained HTML report of a finished sweep."""
    from orchestrator.analysis import report, review

    path = report.write(review.load(args.experiment, args.storage))
    print(f"report: {path} (also on the sweep's MLflow run); open it in a browser")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """`orchestrator config schema|reference|check`: the JSON Schema, the reference, or a
    config validated and shown redacted."""
    import json

    if args.action in ("schema", "reference"):
        text = (
            json.dumps(config_mod.json_schema(), indent=2) + "\n"
            if args.action == "schema"
            else reference.markdown()
        )
        if args.out:
            Path(args.out).write_text(text)
            print(f"wrote {args.out}")
        else:
            sys.stdout.write(text)
        return 0
    cfg = config_mod.load(args.config, args.overrides)  # `check`: validated, shown redacted
    sys.stdout.write(config_mod.to_yaml(cfg))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """`orchestrator data export`: a built-in data set as Parquet."""
    from orchestrator.core import data

    path = data.export(args.name, args.out or f"data/{args.name}.parquet")
    print(f"wrote {path} ({data.EXPORTS[args.name]}; column label)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand, its flags and the ``cmd_*`` that runs it."""
    p = argparse.ArgumentParser(prog="orchestrator", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_run_commands, _serve_command, _analysis_commands, _tracking_commands):
        add(sub)
    for add in (_launch_commands, _config_and_data_commands):
        add(sub)
    return p


def _sweep_folder_args(parser: argparse.ArgumentParser) -> None:
    """EXPERIMENT and --storage: how the commands that read a sweep find its folder."""
    parser.add_argument(
        "experiment", help="the experiment name (its newest sweep) or a sweep folder"
    )
    parser.add_argument(
        "--storage",
        default="results",
        help="short for sweep.storage_path: where the sweep ran (default: results)",
    )


def _run_commands(sub: Any) -> None:
    """sweep, autopilot, resume, train, curve: the commands that train."""
    s = sub.add_parser("sweep", help="search regularization with Ray Tune; register the champion")
    s.add_argument("config", help="YAML config, e.g. jobs/configs/quickstart.yaml")
    s.add_argument("overrides", nargs="*", help="dotted key=value, e.g. sweep.num_samples=4")
    s.add_argument("--verbose", action="store_true", help="stream Ray's worker logs too")
    s.add_argument("--plain", action="store_true", help=PLAIN_HELP)
    s.add_argument(
        "--refine-from",
        default=None,
        metavar="EXPERIMENT",
        help="search the space `orchestrator diagnose EXPERIMENT` proposes (its "
        "newest sweep under sweep.storage_path, or a sweep folder)",
    )
    s.set_defaults(func=cmd_sweep)

    r = sub.add_parser("resume", help="continue a sweep whose driver was stopped or killed")
    _sweep_folder_args(r)
    r.add_argument("--verbose", action="store_true", help="stream Ray's worker logs too")
    r.add_argument("--plain", action="store_true", help=PLAIN_HELP)
    r.set_defaults(func=cmd_resume)

    a = sub.add_parser(
        "autopilot",
        help="rounds of search, each steered by the diagnosis of the last, to the sweet spot",
    )
    a.add_argument("config", help="YAML config, e.g. jobs/configs/quickstart.yaml")
    a.add_argument("overrides", nargs="*", help="dotted key=value, e.g. autopilot.max_rounds=4")
    a.add_argument(
        "--budget-trials",
        type=int,
        default=None,
        metavar="N",
        help="short for autopilot.budget_trials: trials in all, confirmation and curve included",
    )
    a.add_argument(
        "--budget-hours",
        type=float,
        default=None,
        metavar="H",
        help="short for autopilot.budget_hours: wall-clock hours in all",
    )
    a.add_argument("--verbose", action="store_true", help="stream Ray's worker logs too")
    a.add_argument("--plain", action="store_true", help=PLAIN_HELP)
    a.set_defaults(func=cmd_autopilot)

    t = sub.add_parser("train", help="one DDP training run of the config (no search)")
    t.add_argument("config", help="YAML config, e.g. jobs/configs/quickstart.yaml")
    t.add_argument("overrides", nargs="*", help="dotted key=value, e.g. train.epochs=10")
    t.add_argument("--verbose", action="store_true", help="stream Ray's worker logs too")
    t.add_argument("--plain", action="store_true", help=PLAIN_HELP)
    t.set_defaults(func=cmd_train)

    cv = sub.add_parser(
        "curve",
        help="would more data help? train the champion on 1/8 to all of its rows (3 seeds "
        "each) and extrapolate its validation loss to 2x and 4x the data",
    )
    _sweep_folder_args(cv)
    cv.add_argument("--verbose", action="store_true", help="stream Ray's worker logs too")
    cv.add_argument("--plain", action="store_true", help=PLAIN_HELP)
    cv.set_defaults(func=cmd_curve)


def _serve_command(sub: Any) -> None:
    """serve: the model server."""
    v = sub.add_parser("serve", help="serve a registered model over HTTP (FastAPI)")
    v.add_argument("--model", required=True, help="e.g. models:/digits-mlp@champion")
    v.add_argument("--config", default=None, help="optional YAML for the serve.* section")
    v.add_argument("--host", default=None, help="short for serve.host=HOST (127.0.0.1)")
    v.add_argument("--port", type=int, default=None, help="short for serve.port=PORT (8000)")
    v.add_argument(
        "--tracking-uri",
        default=None,
        help="short for tracking.uri=URI; default $MLFLOW_TRACKING_URI or "
        "sqlite:///<cwd>/mlflow.db",
    )
    v.add_argument(
        "--ray",
        action="store_true",
        help="run as a Ray Serve deployment (this Ray cluster, or a local one)",
    )
    v.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="with --ray: short for serve.replicas=N (2)",
    )
    v.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="short for serve.allow_unauthenticated=true: serve without an API key on an "
        "address beyond loopback",
    )
    v.add_argument("overrides", nargs="*", help="dotted key=value, e.g. serve.max_batch=256")
    v.set_defaults(func=cmd_serve)


def _analysis_commands(sub: Any) -> None:
    """diagnose, report: reading a finished sweep."""
    dg = sub.add_parser(
        "diagnose",
        help="label a finished sweep's trials underfit / good_fit "
        "/ overfit / both (or diverged / undetermined) and propose the next "
        "search space",
    )
    _sweep_folder_args(dg)
    dg.set_defaults(func=cmd_diagnose)

    rp = sub.add_parser("report", help="one self-contained HTML report of a finished sweep")
    _sweep_folder_args(rp)
    rp.set_defaults(func=cmd_report)


def _tracking_commands(sub: Any) -> None:
    """tracking serve, tracking replay: the MLflow side."""
    tr = sub.add_parser("tracking", help="run an MLflow tracking server; replay kept writes")
    tsub = tr.add_subparsers(dest="action", required=True)
    ts = tsub.add_parser("serve", help="mlflow server: database backend, proxied artifacts")
    ts.add_argument(
        "--backend",
        default=None,
        help="sqlite:///PATH or postgresql://USER:PASS@HOST:5432/DB; default "
        f"${server.BACKEND_ENV} (better for a password: not on a command line), else "
        "sqlite:///mlflow.db",
    )
    ts.add_argument(
        "--artifacts",
        default="mlartifacts",
        help="where the server keeps artifacts: a folder, s3://... or gs://...",
    )
    ts.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    ts.add_argument("--port", type=int, default=5000)
    ts.add_argument("--workers", type=int, default=2)
    ts.add_argument(
        "extra",
        nargs="*",
        help="after --: more `mlflow server` options, e.g. -- --app-name basic-auth",
    )
    ts.set_defaults(func=cmd_tracking_serve)
    tp = tsub.add_parser(
        "replay",
        help="send the MLflow writes a sweep kept while its "
        "tracking server was away, then register its champion",
    )
    tp.add_argument("folder", help="the sweep folder the sweep printed (a path or a URI)")
    tp.add_argument("--tracking-uri", default=None, help="default: the sweep's own")
    tp.add_argument(
        "--patience",
        type=float,
        default=60.0,
        help="seconds to keep trying an unreachable server (default 60)",
    )
    tp.set_defaults(func=cmd_tracking_replay)


def _launch_commands(sub: Any) -> None:
    """submit, cluster: clusters and jobs."""
    sb = sub.add_parser(
        "submit",
        help="ray job submit a sweep (or --train) to a cluster, "
        "after pre-flight checks; streams the logs, exits with its status",
    )
    sb.add_argument("config", help="YAML config inside the working directory")
    sb.add_argument("overrides", nargs="*", help="dotted key=value, e.g. sweep.num_samples=32")
    sb.add_argument(
        "--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265"
    )
    sb.add_argument("--train", action="store_true", help="one training run (jobs.train)")
    sb.add_argument("--working-dir", default=".", help="what is uploaded (default: .)")
    sb.add_argument("--no-wait", action="store_true", help="submit and return")
    sb.set_defaults(func=cmd_submit)

    cl = sub.add_parser(
        "cluster",
        help="a multi-node Ray cluster on this machine (loopback, token auth): up, down, status",
    )
    cl.add_argument("action", choices=["up", "down", "status"])
    cl.add_argument("--workers", type=int, default=2, help="worker nodes (default 2)")
    cl.add_argument("--cpus-per-worker", type=int, default=1)
    cl.add_argument("--gpus-per-worker", type=int, default=0)
    cl.add_argument(
        "--head-cpus",
        type=int,
        default=0,
        help="CPUs the head offers to trials (default 0: it runs the drivers)",
    )
    cl.add_argument("--dashboard-port", type=int, default=None, help="default: a free port")
    cl.add_argument(
        "--state-dir",
        default=".ray-local",
        help="where pids, ports and the token are kept (default .ray-local)",
    )
    cl.set_defaults(func=cmd_cluster)


def _config_and_data_commands(sub: Any) -> None:
    """config schema/reference/check, data export."""
    c = sub.add_parser("config", help="the config's JSON Schema; check a config and show it")
    csub = c.add_subparsers(dest="action", required=True)
    cs = csub.add_parser(
        "schema", help="print the JSON Schema of a config file (for editors: checks, completion)"
    )
    cs.add_argument("--out", default=None, help="write it to this file instead")
    cs.set_defaults(func=cmd_config)
    cr = csub.add_parser("reference", help="print the configuration reference (Markdown)")
    cr.add_argument("--out", default=None, help="write it to this file, e.g. docs/configuration.md")
    cr.set_defaults(func=cmd_config)
    cc = csub.add_parser(
        "check", help="validate CONFIG with its overrides; print the result (secrets redacted)"
    )
    cc.add_argument("config", help="YAML config, e.g. jobs/configs/quickstart.yaml")
    cc.add_argument("overrides", nargs="*", help="dotted key=value, e.g. train.lr=0.01")
    cc.set_defaults(func=cmd_config)

    d = sub.add_parser("data", help="export a built-in real data set to Parquet")
    dsub = d.add_subparsers(dest="action", required=True)
    e = dsub.add_parser("export", help="write a built-in data set as Parquet")
    e.add_argument(
        "name",
        choices=[
            "digits",
            "breast_cancer",
            "wine",
            "iris",
            "noisy",
            "hastie",
            "diabetes",
            "penguins",
        ],
        help="scikit-learn's digits, breast_cancer, wine or iris, `noisy` (synthetic, 20%% "
        "of the labels flipped), `hastie` (synthetic, a noise-free nonlinear boundary), "
        "diabetes (regression) or penguins (text categories and missing values)",
    )
    e.add_argument("--out", default=None, help="default: data/NAME.parquet")
    e.set_defaults(func=cmd_data)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run its command; the exit code (``EXIT_CONFIG`` for a config error)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `CONFIG --address X key=value`: argparse takes positionals in one run, so overrides
    # after an option arrive here; they are overrides all the same
    if (
        extra
        and isinstance(getattr(args, "overrides", None), list)
        and all("=" in e and not e.startswith("-") for e in extra)
    ):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    func: Callable[[argparse.Namespace], int] = args.func
    # `model.kind: package.module:function` imports from the folder the command runs in,
    # as `python -m` would (the console script's own folder is first on the path instead)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return func(args)
    except ConfigError as e:
        print(f"orchestrator: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("orchestrator: interrupted", file=sys.stderr)
        return 130
    except SweepStalled as e:
        print(f"orchestrator: sweep stalled: {e}", file=sys.stderr)
        return EXIT_STALLED


if __name__ == "__main__":
    sys.exit(main())
