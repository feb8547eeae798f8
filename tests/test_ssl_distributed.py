"""DDP with 2 CPU processes on gloo: gathered negatives, consistent weights, rank 0 writes, torchrun CLI."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str, data: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from sslsearch.ssl import TrainConfig, train
    from sslsearch.ssl.config import from_flat
    from sslsearch.ssl.losses import nt_xent_loss

    results: dict[str, object] = {}
    # 1. NT-Xent with gathered negatives: each process holds half of the batch.
    generator = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(8, 16, generator=generator), torch.randn(8, 16, generator=generator)
    rows = slice(rank * 4, rank * 4 + 4)
    local_a, local_b = z_a[rows].clone().requires_grad_(), z_b[rows].clone().requires_grad_()
    loss = nt_xent_loss(local_a, local_b, 0.2)
    loss.backward()
    results["loss"] = float(loss)
    results["grad_a"], results["grad_b"] = local_a.grad, local_b.grad
    # 1b. Sinkhorn-Knopp (DINO's sinkhorn centering) over a batch split between the processes.
    from sslsearch.ssl.losses.dino import sinkhorn_knopp

    scores = torch.randn(8, 5, generator=torch.Generator().manual_seed(1)) * 3
    results["sinkhorn"] = sinkhorn_knopp(scores[rows])
    # 2. A short DDP training run of each method (the trainer reuses this process group).
    for method in ("simclr", "moco", "dino"):
        config = from_flat({"data": data, "out": f"{out}/run-{method}", "method": method, "backbone": "test_resnet",
                            "image_size": 32, "batch_size": 4, "workers": 0, "epochs": 1, "log_every_steps": 1,
                            "moco.queue_size": 16, "dino.prototypes": 64, "dino.hidden_dim": 64,
                            "dino.bottleneck_dim": 32, "augmentation.local_crop_count": 2}, TrainConfig())
        results[method] = train(config).to_dict()
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("ddp")
    paths = sorted(p for p in sample_dir.rglob("*") if p.suffix in (".png", ".jpg"))[::4][:24]
    listing = out / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    mp.start_processes(_worker, args=(free_port(), str(out), str(listing)), nprocs=WORLD, start_method="spawn")
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_gathered_nt_xent_equals_the_full_batch_loss(ddp_results: tuple[Path, list[dict]]) -> None:
    from sslsearch.ssl.losses import nt_xent_loss

    _, results = ddp_results
    generator = torch.Generator().manual_seed(0)
    z_a = torch.randn(8, 16, generator=generator).requires_grad_()
    z_b = torch.randn(8, 16, generator=generator).requires_grad_()
    loss = nt_xent_loss(z_a, z_b, 0.2)
    loss.backward()
    loss = loss.detach()
    # DDP averages gradients over processes; the mean of the per-process losses is the full-batch loss.
    assert sum(r["loss"] for r in results) / WORLD == pytest.approx(float(loss), rel=1e-5)
    for rank, r in enumerate(results):
        rows = slice(rank * 4, rank * 4 + 4)
        torch.testing.assert_close(r["grad_a"] / WORLD, z_a.grad[rows], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(r["grad_b"] / WORLD, z_b.grad[rows], rtol=1e-4, atol=1e-6)


def test_sinkhorn_over_processes_equals_the_full_batch(ddp_results: tuple[Path, list[dict]]) -> None:
    from sslsearch.ssl.losses.dino import sinkhorn_knopp

    _, results = ddp_results
    scores = torch.randn(8, 5, generator=torch.Generator().manual_seed(1)) * 3
    torch.testing.assert_close(torch.cat([r["sinkhorn"] for r in results]), sinkhorn_knopp(scores))


@pytest.mark.parametrize("method", ["simclr", "moco", "dino"])
def test_ddp_run_trains_and_only_rank_0_writes(ddp_results: tuple[Path, list[dict]], method: str) -> None:
    from sslsearch.ssl.checkpoint import load_checkpoint
    from sslsearch.ssl.rundir import read_metrics

    out, results = ddp_results
    run = out / f"run-{method}"
    first, second = results[0][method], results[1][method]
    # 24 images, 2 processes × 4 = global batch 8 → 3 steps; both processes agree on everything logged.
    assert first["steps"] == second["steps"] == 3 and first["finished"]
    assert first["final_loss"] == pytest.approx(second["final_loss"], rel=1e-6)  # reduced over processes
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "encoder.json",
                                                      "encoder.safetensors", "metrics.jsonl"]
    steps = [r["step"] for r in read_metrics(run) if "loss" in r and "event" not in r]
    assert steps == [1, 2, 3]  # one line per step: only rank 0 wrote
    checkpoint = load_checkpoint(run)
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2
    assert checkpoint["plan"]["global_batch_size"] == 8


@pytest.mark.slow
def test_torchrun_command_from_the_readme(sample_dir: Path, tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    sslsearch = shutil.which("sslsearch", path=str(Path(sys.executable).parent))
    if torchrun is None or sslsearch is None:
        pytest.skip("torchrun or the sslsearch entry point is not installed")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SSLSEARCH_NO_PROGRESS": "1"}
    completed = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "--no-python", sslsearch, "train",
         str(sample_dir), "--out", str(run), "--backbone", "test_resnet", "--image-size", "32", "--batch-size", "8",
         "--epochs", "0.3", "--workers", "0", "--json"],
        capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout[completed.stdout.index("{"):completed.stdout.index("}\n") + 1])
    assert result["finished"] and result["steps"] == 3  # ceil(0.3 epochs × 7 steps): 120 images, global batch 16
    assert (run / "encoder.json").exists()
