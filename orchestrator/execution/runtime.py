"""The Ray runtime: the environment Ray, Tune and MLflow's client must see before they are
imported (``ensure_env``), and joining a cluster or starting a local one (``init_ray``).
Ray is imported inside ``init_ray`` only: ``ensure_env`` has to run first."""

from __future__ import annotations

import logging
import os
import socket


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
    # the user's own code (a model factory) imports in every worker as on the driver: a
    # local Ray's workers inherit this environment (a cluster gets the code with
    # `ray job submit --working-dir .`, which puts it on the workers' path)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if os.getcwd() not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *filter(None, paths)])
    level = logging.INFO if verbose else logging.ERROR
    if not verbose:
        quiet_raylet()
    address = os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        ray.init(address=address, log_to_driver=verbose, logging_level=level)
        return
    from orchestrator.core import placement

    ctx = ray.init(
        address="local",
        # one node: the head resource where the trials' steering actors ask for it
        resources={placement.HEAD_RESOURCE: placement.HEAD_AMOUNT},
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=free_port(),
        log_to_driver=verbose,
        logging_level=level,
    )
    if not getattr(ctx, "dashboard_url", None):
        ray.shutdown()
        raise RuntimeError(
            "Ray's dashboard did not start; without it, trials stopped early "
            "leak their workers. Check `ray[default]` is installed."
        )


RAYLET_LOG = "orchestrator-raylet-messages.log"  # in Ray's session log folder


def quiet_raylet() -> None:
    """Ray's driver prints the raylet's messages ("N PYTHON worker processes have been
    started ...") to the terminal whatever ``log_to_driver`` says; they are Ray's internals,
    not the sweep's progress. Send them to ``RAYLET_LOG`` in the session's log folder
    instead (``--verbose`` keeps them on the terminal)."""
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "quiet", False):
        return

    def to_file(data: dict, ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            original(data, ignore_prefix)
            return
        try:
            node = ray_worker._global_node
            folder = node.get_logs_dir_path() if node is not None else None
            if folder:
                with open(os.path.join(folder, RAYLET_LOG), "a") as f:
                    f.writelines(f"{line}\n" for line in data.get("lines", []))
        except OSError:
            pass  # a message lost is better than one on the terminal mid-progress

    to_file.quiet = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_file


def log_folder() -> str | None:
    """Ray's session log folder on this machine (the raylet's messages, the workers' logs),
    when this process started or joined a Ray; None otherwise."""
    try:
        import ray._private.worker as ray_worker

        node = ray_worker._global_node
        return node.get_logs_dir_path() if node is not None else None
    except Exception:  # Ray not started, or its internals moved: nothing to point at
        return None


def free_port() -> int:
    """A TCP port free on loopback now."""

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_env() -> None:
    """Keep Ray's Tune output and its V2 deprecation chatter out of the progress lines, and
    save Tune's experiment state often (what a resumed sweep starts from)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # MLflow's HTTP client retries a dead server for minutes by default (7 retries, backoff
    # x2, 120 s timeout), all inside a Tune callback; the outbox keeps those writes instead
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a line per run
    # and a tqdm bar per artifact read back (the champion's files): not the sweep's progress
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # "Creating initial MLflow database tables..." and the migrations' steps: MLflow's setup
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
