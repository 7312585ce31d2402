"""The training loop and its helpers, in one process (LocalSeam) and as 2 gloo ranks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import f1_score

from orchestrator import config
from orchestrator.core import checkpoint, data, loop, metrics, model


def _cfg(path: Path, **train) -> config.Config:
    return config.from_dict(
        {
            "data": {"path": str(path)},
            "model": {"hidden": [64]},
            "train": {"epochs": 3, "lr": 3e-3, **train},
        }
    )


def test_loop_learns_digits_and_reports_every_epoch(digits_path: Path) -> None:
    cfg = _cfg(digits_path)
    splits = data.load_splits(cfg.data)
    seam = loop.LocalSeam()
    loop.train(cfg, splits, seam)
    assert [r["epoch"] for r in seam.reports] == [1.0, 2.0, 3.0]
    keys = {"train_loss", "train_accuracy", "train_f1", "val_loss", "val_accuracy", "val_f1"}
    assert keys <= set(seam.reports[0])
    assert seam.reports[-1]["train_loss"] < seam.reports[0]["train_loss"]
    assert seam.reports[-1]["val_accuracy"] > 0.85


def test_checkpoint_holds_weights_that_reproduce_val_metrics(digits_path: Path) -> None:
    cfg = _cfg(digits_path, epochs=4, checkpoint_every=2)
    splits = data.load_splits(cfg.data)
    saved: list[dict] = []
    seam = loop.LocalSeam(on_checkpoint=lambda d: saved.append(checkpoint.load_checkpoint(d)))
    loop.train(cfg, splits, seam)
    # checkpoints: every 2nd epoch, every epoch that beat the best val_loss, and the last one
    losses = [r["val_loss"] for r in seam.reports]
    improving = [i + 1 for i, v in enumerate(losses) if v < min(losses[:i], default=float("inf"))]
    assert [c["epoch"] for c in saved] == sorted(set(improving) | {2, 4})
    assert {"optimizer", "schedule", "scaler", "stopper"} <= set(saved[-1])
    net = model.from_data(cfg, splits.x_train, splits.num_classes)
    net.load_state_dict(saved[-1]["model"])
    net.eval()
    with torch.no_grad():
        pred = net(torch.from_numpy(splits.x_val)).argmax(1).numpy()
    assert (pred == splits.y_val).mean() == pytest.approx(seam.reports[-1]["val_accuracy"])


def test_l1_and_weight_decay_shrink_the_weights(digits_path: Path) -> None:
    splits = data.load_splits(_cfg(digits_path).data)

    def weight_norm(**train: float) -> float:
        cfg = _cfg(digits_path, **train)
        saved: list[dict] = []
        loop.train(
            cfg,
            splits,
            loop.LocalSeam(on_checkpoint=lambda d: saved.append(checkpoint.load_checkpoint(d))),
        )
        return sum(
            v.abs().sum().item() for k, v in saved[-1]["model"].items() if k.endswith("weight")
        )

    plain = weight_norm(weight_decay=0.0)
    assert weight_norm(l1=1e-2, weight_decay=0.0) < 0.8 * plain
    assert weight_norm(weight_decay=5.0) < 0.9 * plain


def test_binary_labels_get_one_logit_and_bce(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({**{f"f{i}": x[:, i] for i in range(5)}, "label": y}), path)
    cfg = _cfg(path, epochs=15, lr=1e-2)
    splits = data.load_splits(cfg.data)
    net = model.from_data(cfg, splits.x_train, splits.num_classes)
    assert net[-1].out_features == 1
    seam = loop.LocalSeam()
    loop.train(cfg, splits, seam)
    assert seam.reports[-1]["val_accuracy"] > 0.9
    probs = model.WithProbabilities(net)(torch.zeros(3, 5))
    assert probs.shape == (3, 2) and torch.allclose(probs.sum(1), torch.ones(3))


def test_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    cm = metrics.confusion(torch.from_numpy(p), torch.from_numpy(y), 4)
    assert metrics.accuracy(cm) == pytest.approx((y == p).mean())
    assert metrics.macro_f1(cm) == pytest.approx(f1_score(y, p, average="macro"))


@pytest.mark.parametrize(("rows", "world"), [(10, 1), (10, 3), (7, 2)])
def test_shards_cover_every_row_with_equal_batch_counts(rows: int, world: int) -> None:
    shards = [
        loop.shard_batches(rows, 2, loop.LocalSeam(rank=r, world_size=world), 0, 5)
        for r in range(world)
    ]
    assert len({len(s) for s in shards}) == 1  # DDP needs the same number of steps
    seen = torch.cat([torch.cat(s) for s in shards]).tolist()
    assert set(seen) == set(range(rows)) and len(seen) == -(-rows // world) * world


class _GlooSeam(loop.LocalSeam):
    def wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        return torch.nn.parallel.DistributedDataParallel(net) if self.world_size > 1 else net

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(t)
        return t


def _rank(rank: int, world: int, port: int, path: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    cfg = _cfg(Path(path), epochs=2, batch_size=64)
    seam = _GlooSeam(rank=rank, world_size=world)
    loop.train(cfg, data.load_splits(cfg.data), seam)
    torch.save(seam.reports, f"{out}.{rank}")
    # both ranks leave together: a rank that tears gloo down while the other still has a
    # pair open aborts it ("terminate called without an active exception", seen on a
    # loaded 2-core machine)
    dist.barrier()
    dist.destroy_process_group()


def test_two_gloo_ranks_agree_on_metrics_and_count_every_val_row(
    digits_path: Path, tmp_path: Path
) -> None:
    from conftest import free_port

    out = str(tmp_path / "reports")
    mp.spawn(_rank, args=(2, free_port(), str(digits_path), out), nprocs=2)
    r0, r1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    timing = ("epoch_seconds", "wall_time")
    r0 = [{k: v for k, v in r.items() if k not in timing} for r in r0]
    r1 = [{k: v for k, v in r.items() if k not in timing} for r in r1]
    assert r0 == r1  # all-reduced metrics are identical on every rank
    assert r0[-1]["val_accuracy"] > 0.8
    # val accuracy is a count over all 216 rows, so it is a multiple of 1/216
    assert (r0[-1]["val_accuracy"] * 216) == pytest.approx(round(r0[-1]["val_accuracy"] * 216))


def test_the_goal_is_built_once_from_the_config() -> None:
    base = {"data": {"path": "x"}, "train": {"epochs": 30}}
    g = config.goal(config.from_dict(base))
    assert (g.stop_metric, g.rank_metric, g.rank_mode, g.gap_penalty) == (
        "val_loss",
        "val_loss",
        "min",
        None,
    )
    assert g.keep_epochs == {5, 15}  # fast path, asha auto: by promotion, rungs 5 and 15
    g = config.goal(config.from_dict({**base, "scaling": {"fast_path": False}}))
    assert g.keep_epochs == frozenset()  # stopping ASHA resumes from nothing in particular
    g = config.goal(
        config.from_dict({**base, "sweep": {"objective": "gap_penalized", "gap_penalty": 2.0}})
    )
    assert (g.rank_metric, g.gap_penalty) == ("objective", 2.0)


def test_the_loop_judges_a_run_by_its_goal_alone(digits_path: Path) -> None:
    # the config says val_loss, checkpoints every 10 epochs; the goal given wins
    cfg = _cfg(digits_path, epochs=4, checkpoint_every=10)
    goal = config.Goal(
        stop_metric="val_accuracy",
        stop_mode="max",
        rank_metric="objective",
        rank_mode="min",
        gap_penalty=3.0,
        keep_epochs=frozenset({2}),
    )
    saved: list[int] = []
    seam = loop.LocalSeam(
        on_checkpoint=lambda d: saved.append(checkpoint.load_checkpoint(d)["epoch"])
    )
    loop.train(cfg, data.load_splits(cfg.data), seam, goal)
    r = seam.reports
    assert all(x["objective"] == x["val_loss"] + 3.0 * max(0.0, x["gap"]) for x in r)
    objective, acc = [x["objective"] for x in r], [x["val_accuracy"] for x in r]
    best = {i + 1 for i, v in enumerate(objective) if v <= min(objective[: i + 1])}
    gains = {i + 1 for i, v in enumerate(acc) if v > max(acc[:i], default=-1.0)}
    assert saved == sorted(best | gains | {2, 4})
