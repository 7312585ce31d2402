"""`orchestrator report EXPERIMENT`: one self-contained HTML file (pictures inlined as PNG
data URIs, no scripts or links to fetch) of a finished sweep: the trials with their
bias/variance labels, their learning curves, the regularization map and fit chart, the
champion's test scores and confusion matrix, and the proposed next search space. Written
to the sweep's folder and logged to the sweep's MLflow run."""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import yaml

from orchestrator import config as config_mod
from orchestrator.analysis import plots, progress, review
from orchestrator.analysis.review import SweepView
from orchestrator.core import curve, diagnosis
from orchestrator.core.prepare import prepare
from orchestrator.tracking import location, registry, schema

REPORT = "report.html"
CURVES_SHOWN = 12  # learning curves of the best trials; the table lists them all
COLORS = {
    "underfit": "#1f77b4",
    "good_fit": "#2ca02c",
    "overfit": "#d62728",
    "both": "#9467bd",
    "diverged": "#444444",
    "undetermined": "#999999",
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } .label { color: white; padding: 1px 6px; border-radius: 3px; }
img { max-width: 100%; } .grid { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; }
pre { background: #f6f6f6; padding: 8px; } .muted { color: #777; }
"""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _label(label: str | None) -> str:
    if not label:
        return '<span class="muted">-</span>'
    return (
        f'<span class="label" style="background:{COLORS.get(label, "#777")}">'
        f"{html.escape(label)}</span>"
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def champion_section(view: SweepView) -> tuple[str, str | None]:
    """The champion's test scores and confusion matrix (the registered model rescored on
    the test split), or a note saying why there is none."""
    from mlflow.tracking import MlflowClient

    uri = location.resolve_uri(view.cfg)
    client = MlflowClient(uri)
    parent = client.get_run(view.parent_run_id)
    version = parent.data.tags.get(schema.CHAMPION_VERSION)
    scores = {k: v for k, v in parent.data.metrics.items() if k.startswith("test_")}
    trial = parent.data.tags.get(schema.CHAMPION_TRIAL)
    if version is None:
        return '<p class="muted">No champion was registered by this sweep.</p>', trial
    name = view.cfg.tracking.register_as
    out = [
        f"<p>Trial <b>{html.escape(trial or '?')}</b>, registered as "
        f"<code>models:/{html.escape(name)}/{html.escape(version)}</code>.</p>"
    ]
    out.append(
        "<table><tr>"
        + "".join(f"<th>{html.escape(k)}</th>" for k in sorted(scores))
        + "</tr><tr>"
        + "".join(f"<td>{scores[k]:.4f}</td>" for k in sorted(scores))
        + "</tr></table>"
    )
    try:
        mlflow.set_tracking_uri(location.bare_uri(uri))
        cap = int(view.cfg.serve.max_model_mb * (1 << 20))  # what a server would accept
        # the report's reader owns the config: its own factory is trusted
        net, spec, _, _ = registry.load(
            f"models:/{name}/{version}", cap, factories=(view.cfg.model.kind,)
        )
        net.eval()
        prep = prepare(view.cfg)
    except Exception as e:  # noqa: BLE001 - the data or model moved: say so, keep the rest
        out.append(f'<p class="muted">Confusion matrix unavailable: {html.escape(str(e))}</p>')
        return "\n".join(out), trial
    import torch

    from orchestrator.core import task as task_mod

    classes = list(spec.classes)
    if not classes:  # regression and multilabel have no confusion matrix
        return "\n".join(out), trial
    cm = [[0.0] * len(classes) for _ in classes]
    with torch.inference_mode():
        for x, y in prep.test_batches():
            pred = task_mod.predict(spec.task, net(x))
            for t, p in zip(y.tolist(), pred.tolist(), strict=True):
                cm[int(t)][int(p)] += 1
    out.append(
        _img(plots.confusion_matrix(cm, classes, "champion on the test split"), "confusion matrix")
    )
    return "\n".join(out), trial


def curve_section(folder: Any) -> str:
    """``orchestrator curve``'s answer, where it was run on this sweep: its verdict, the
    measured sizes and predictions, and its picture; nothing otherwise."""
    if not folder.is_file(curve.JSON_NAME):
        return ""
    saved = json.loads(folder.read_text(curve.JSON_NAME))
    rows = "".join(
        f"<tr><td>{n:,}</td><td>{m:.4f}</td><td>{s:.4f}</td><td>measured</td></tr>"
        for n, m, s in zip(saved["sizes"], saved["means"], saved["stds"], strict=True)
    ) + "".join(
        f"<tr><td>{p['rows']:,}</td><td>{p['loss']:.4f}</td><td></td><td>predicted "
        f"({p['factor']:g}x), {curve.LEVEL:.0%} interval {p['low']:.4f} to "
        f"{p['high']:.4f}</td></tr>"
        for p in saved["predictions"]
    )
    picture = (
        _img(folder.read_bytes(curve.PNG_NAME), "data curve")
        if folder.is_file(curve.PNG_NAME)
        else ""
    )
    return (
        "<h2>Would more data help?</h2>"
        f"<p><b>{html.escape(saved['verdict'])}</b>: {html.escape(saved['summary'])}</p>"
        "<table><tr><th>training rows</th><th>best val_loss</th><th>std over seeds</th>"
        f"<th></th></tr>{rows}</table>{picture}"
    )


def rounds_section(view: SweepView) -> str:
    """An autopilot's rounds: the best per round and so far (table and picture), the space
    each round searched, why the next one changed, and where each round's best trial sat
    (how the sweet spot moved); nothing for a plain sweep."""
    if not view.rounds:
        return ""
    key, mode = config_mod.rank_metric(view.cfg)
    rows = progress.round_rows(view.rounds, key, mode)
    head = ["round", "trials", f"best {key}", "best so far", "steered by", "round's best trial"]
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{c}</td>"
            for c in (
                r["round"],
                r["trials"],
                "-" if r["best"] is None else _fmt(float(r["best"])),
                "-" if r["so_far"] is None else _fmt(float(r["so_far"])),
                _label(r["label"]) if r["label"] else "-",
                html.escape(", ".join(f"{k}={_fmt(v)}" for k, v in r["at"].items())),
            )
        )
        + "</tr>"
        for r in rows
    )
    spaces = "".join(
        f"<details><summary>round {r['round']}: its space"
        + (", and why the next one changed" if r["steer"] else "")
        + "</summary><pre>"
        + html.escape(yaml.safe_dump(r["space"], sort_keys=False, default_flow_style=None))
        + "</pre><ul>"
        + "".join(f"<li>{html.escape(w)}</li>" for w in r["steer"])
        + "</ul></details>"
        for r in rows
    )
    return (
        "<h2>Rounds</h2><table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + f"</tr>{body}</table>"
        + _img(plots.rounds(rows, key), "the autopilot's rounds")
        + spaces
    )


def render(view: SweepView, champion_html: str, champion_id: str | None = None) -> str:
    """The report's HTML, from a loaded sweep (``review.load``)."""
    cfg = view.cfg
    key, mode = config_mod.rank_metric(cfg)
    space = cfg.sweep.space
    keys = list(space)
    logs = {k for k, s in space.items() if s["type"] == "loguniform"}
    ranked = sorted(
        view.trials,
        key=lambda t: t.best.get(key, math.inf if mode == "min" else -math.inf),
        reverse=mode == "max",
    )
    counts = {lab: sum(t.label == lab for t in view.trials) for lab in diagnosis.LABELS}
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>sweep report: "
        f"{html.escape(view.folder.name)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Sweep {html.escape(view.folder.name)}</h1>",
        f"<p>{len(view.trials)} trials, ranked by {html.escape(key)} ({mode}): "
        + ", ".join(f"{_label(lab)} {n}" for lab, n in counts.items() if n)
        + f". {diagnosis.describe(view.baseline).capitalize()}. "
        f"MLflow run <code>{html.escape(view.parent_run_id)}</code>. Written "
        f"{time.strftime('%Y-%m-%d %H:%M')}.</p>",
    ]
    parts.append(rounds_section(view))
    # the trials
    score = progress.score_key(next((t.best for t in view.trials if t.best), {}))
    head = ["trial", *keys, "epochs", key, "train_loss", score, "fit", "why"]
    parts.append(
        "<h2>Trials</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
    )
    for t in ranked:
        epochs = int(max((r["epoch"] for r in t.history), default=0))
        cells = [
            html.escape(t.trial_id),
            *(_fmt(t.values.get(k, "")) for k in keys),
            str(epochs),
            _fmt(t.best.get(key, math.nan)),
            _fmt(t.best.get("train_loss", math.nan)),
            _fmt(t.best.get(score, math.nan)),
            _label(t.label),
            html.escape(t.reasons),
        ]
        parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append("</table>")
    # the search space, seen whole
    scored = [t for t in ranked if key in t.best]
    points = [{**t.values, key: t.best[key], "label": t.label} for t in scored]
    star = next((i for i, t in enumerate(scored) if t.trial_id == champion_id), None)
    numeric = [k for k in keys if space[k]["type"] in ("uniform", "loguniform", "randint")]
    pair = (
        ["train.weight_decay", "model.dropout"]
        if {"train.weight_decay", "model.dropout"} <= set(keys)
        else numeric[:2]
    )
    parts.append("<h2>Where the sweet spot lies</h2><div class='grid'>")
    if len(pair) == plots.MAP_AXES and points:
        parts.append(
            _img(
                plots.regularization_map(
                    points,
                    pair[0],
                    pair[1],
                    key,
                    log_x=pair[0] in logs,
                    log_y=pair[1] in logs,
                    champion=star,
                ),
                "regularization map",
            )
        )
    if points and keys:
        parts.append(
            _img(plots.parallel_coordinates(points, keys, key, logs), "parallel coordinates")
        )
    parts.append("</div>")
    fits = review.fit_map(view, ranked)
    if fits is not None:
        parts.append(_img(fits, "fit map"))
    # the champion
    parts.append("<h2>Champion</h2>" + champion_html)
    # learning curves
    parts.append(
        f"<h2>Learning curves (the best {min(CURVES_SHOWN, len(ranked))})</h2><div class='grid'>"
    )
    for t in ranked[:CURVES_SHOWN]:
        if t.history:
            title = f"{t.trial_id} ({t.label or 'unlabelled'})"
            parts.append(
                _img(plots.learning_curves(t.history, title), f"learning curves {t.trial_id}")
            )
    parts.append("</div>")
    parts.append(curve_section(view.folder))
    # next
    parts.append(
        "<h2>Next search space</h2><pre>"
        + html.escape(yaml.safe_dump({"sweep": {"space": view.space}}, sort_keys=False))
        + "</pre><ul>"
        + "".join(f"<li>{html.escape(w)}</li>" for w in view.why)
        + "</ul><p>Run it: <code>orchestrator sweep CONFIG --refine-from "
        + html.escape(cfg.experiment)
        + "</code></p></body></html>"
    )
    return "\n".join(parts)


def write(view: SweepView) -> str:
    """The report in the sweep's folder, and as an artifact of the sweep's MLflow run."""
    from mlflow.tracking import MlflowClient

    champion_html, champion_id = champion_section(view)
    text = render(view, champion_html, champion_id)
    view.folder.write_atomic(REPORT, text)
    with tempfile.TemporaryDirectory() as d:  # MLflow logs local files
        local = Path(d) / REPORT
        local.write_text(text)
        MlflowClient(location.resolve_uri(view.cfg)).log_artifact(view.parent_run_id, str(local))
    return f"{view.folder}/{REPORT}"
