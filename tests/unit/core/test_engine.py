"""The training engine's knobs, in one process on CPU: early stopping, augmentation, AMP,
gradient accumulation and checkpointing, divergence, determinism, exact resume, the CNN."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from orchestrator import config
from orchestrator.config import ConfigError
from orchestrator.core import checkpoint, data, loop, model


def _cfg(
    path: Path, model_: dict | None = None, data_: dict | None = None, **train: Any
) -> config.Config:
    return config.from_dict(
        {
            "data": {"path": str(path), **(data_ or {})},
            "model": {"hidden": [64], "dropout": 0.0, **(model_ or {})},
            "train": {"epochs": 3, "lr": 3e-3, **train},
        }
    )


def _run(cfg: config.Config, **seam: Any) -> tuple[str, loop.LocalSeam, list[dict]]:
    saved: list[dict] = []
    s = loop.LocalSeam(on_checkpoint=lambda d: saved.append(checkpoint.load_checkpoint(d)), **seam)
    outcome = loop.train(cfg, data.load_splits(cfg.data), s)
    return outcome, s, saved


def _metrics(reports: list[dict]) -> list[dict]:
    """Reports without the timing fields, which differ from run to run by nature."""
    return [
        {k: v for k, v in r.items() if k not in ("epoch_seconds", "wall_time")} for r in reports
    ]


def _same_weights(a: dict, b: dict, atol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def test_same_config_and_seed_give_the_same_metrics(digits_path: Path) -> None:
    cfg = _cfg(digits_path, model_={"dropout": 0.3}, augment=True)
    assert _metrics(_run(cfg)[1].reports) == _metrics(_run(cfg)[1].reports)


def test_early_stopping_stops_and_restores_the_best_weights(digits_path: Path) -> None:
    # a wide net, a tiny training set and a high rate: validation loss turns up quickly
    cfg = _cfg(
        digits_path,
        model_={"hidden": [512]},
        data_={"max_train_rows": 150},
        epochs=60,
        lr=1e-2,
        weight_decay=0.0,
        early_stopping={"patience": 3},
    )
    outcome, seam, saved = _run(cfg)
    assert outcome == "early_stopped" and len(seam.reports) < 60
    losses = [r["val_loss"] for r in seam.reports]
    best_epoch = losses.index(min(losses)) + 1
    assert len(seam.reports) == best_epoch + 3  # patience epochs after the best, then stop
    assert seam.reports[-1]["early_stopped"] == 1.0
    best_ckpt = next(c for c in saved if c["epoch"] == best_epoch)
    assert _same_weights(saved[-1]["model"], best_ckpt["model"])


def test_shift_augmentation_moves_pixels_within_the_limit(digits_path: Path) -> None:
    cfg = _cfg(digits_path, data_={"shape": [1, 8, 8]}, augment=True, augment_shift=2)
    x = torch.zeros(200, 64)
    x[:, 3 * 8 + 4] = 1.0  # one lit pixel at row 3, column 4
    out = loop.augment(x, cfg, torch.ones(64)).view(200, 8, 8)
    assert torch.all(out.sum(dim=(1, 2)) <= 1.0)  # shifted, never duplicated
    lit = out.nonzero()
    assert lit[:, 1].sub(3).abs().max() <= 2 and lit[:, 2].sub(4).abs().max() <= 2
    assert len({(r, c) for _, r, c in lit.tolist()}) > 10  # many different shifts drawn


def test_noise_augmentation_scales_with_each_feature(digits_path: Path) -> None:
    cfg = _cfg(digits_path, augment=True, augment_noise=0.5)
    std = torch.tensor([1.0, 10.0])
    out = loop.augment(torch.zeros(20000, 2), cfg, std)
    assert out.std(dim=0) == pytest.approx([0.5, 5.0], rel=0.05)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(digits_path: Path, precision: str) -> None:
    outcome, seam, saved = _run(_cfg(digits_path, precision=precision))
    assert outcome == "completed" and seam.reports[-1]["val_accuracy"] > 0.85
    assert saved[-1]["scaler"] if precision == "fp16" else True  # the scaler state is saved


def test_gradient_accumulation_matches_the_bigger_batch(digits_path: Path) -> None:
    big = _run(_cfg(digits_path, batch_size=64, grad_accum_steps=1, epochs=2))[2][-1]["model"]
    acc = _run(_cfg(digits_path, batch_size=64, grad_accum_steps=4, epochs=2))[2][-1]["model"]
    # identical effective batches; only float summation order differs
    assert _same_weights(big, acc, atol=1e-4)


def test_gradient_checkpointing_changes_memory_not_maths(digits_path: Path) -> None:
    plain = _run(_cfg(digits_path, model_={"hidden": [64, 64], "dropout": 0.2}))
    ckpt = _run(
        _cfg(digits_path, model_={"hidden": [64, 64], "dropout": 0.2}, grad_checkpointing=True)
    )
    net = model.from_data(
        _cfg(digits_path, grad_checkpointing=True), torch.zeros(4, 64).numpy(), 10
    )
    assert any(isinstance(m, model.CheckpointedBlock) for m in net)
    assert _same_weights(plain[2][-1]["model"], ckpt[2][-1]["model"], atol=1e-6)


def test_divergence_ends_the_run_with_a_reason_not_a_crash(digits_path: Path) -> None:
    outcome, seam, _ = _run(_cfg(digits_path, lr=1e6, optimizer="sgd", epochs=5))
    assert outcome == "diverged" and seam.reports[-1]["diverged"] == 1.0
    assert len(seam.reports) < 5


def test_cnn_learns_image_shaped_digits(digits_path: Path) -> None:
    cfg = _cfg(
        digits_path,
        model_={"kind": "cnn", "hidden": [16, 32]},
        data_={"shape": [1, 8, 8]},
        augment=True,
        epochs=6,
    )
    outcome, seam, _ = _run(cfg)
    assert outcome == "completed" and seam.reports[-1]["val_accuracy"] > 0.85
    with pytest.raises(ConfigError) as e:
        config.from_dict({"data": {"path": "x"}, "model": {"kind": "cnn"}})
    assert e.value.key == "data.shape"


RESUME_SCRIPT = textwrap.dedent("""
    import os, shutil, signal, sys
    from orchestrator import config
    from orchestrator.core import checkpoint, data, loop
    cfg = config.from_dict({cfg!r})
    out = sys.argv[1]
    def keep(d):
        shutil.copytree(d, out, dirs_exist_ok=True)
        if checkpoint.load_checkpoint(d)["epoch"] == {kill_after}:
            os.kill(os.getpid(), signal.SIGKILL)  # a crash, not a clean exit
    loop.train(cfg, data.load_splits(cfg.data), loop.LocalSeam(on_checkpoint=keep))
""")


def test_resume_after_a_killed_process_is_exact(digits_path: Path, tmp_path: Path) -> None:
    cfg = _cfg(
        digits_path,
        model_={"dropout": 0.3},
        augment=True,
        epochs=6,
        early_stopping={"patience": 10},
    )
    _, straight, straight_ckpts = _run(cfg)
    script = RESUME_SCRIPT.format(cfg=config.to_dict(cfg), kill_after=3)
    ckpt_dir = tmp_path / "ckpt"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(ckpt_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert checkpoint.load_checkpoint(str(ckpt_dir))["epoch"] == 3
    _, resumed, resumed_ckpts = _run(cfg, resume_from=str(ckpt_dir))
    assert [r["epoch"] for r in resumed.reports] == [4.0, 5.0, 6.0]
    assert _metrics(resumed.reports) == _metrics(straight.reports[3:])  # exactly the same
    assert _same_weights(resumed_ckpts[-1]["model"], straight_ckpts[-1]["model"])
