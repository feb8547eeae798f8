"""Training throughput: images/s of `sslsearch.train` per method vs a plain-PyTorch loop and vs lightly.

For each method (SimCLR, MoCo v2, DINO) three implementations train the same timm backbone at
the same batch size and resolution on the same images, fed the same augmented views (our
public transforms, in-memory images, the same loader worker count), with SGD:

* sslsearch — ``sslsearch.train`` end to end (its loader, schedules, monitors, metrics);
* plain     — a hand-written loop: backbone + head + the loss written inline, ``torch.optim.SGD``;
* lightly   — lightly's heads, losses and momentum update, used the way its examples do
  (one forward per view), when ``import lightly`` works (``pip install --no-deps lightly``).

MoCo runs the paper's one-way loss without shuffled batch norm in all three (``moco.symmetric=false``,
``moco.batch_norm_splits=1``), so the work is the same. Each side's images/s is the batch size over
the median step time after the first steps (warm-up); repeats are interleaved.

    python benchmarks/bench_train.py --quick            # CI-sized (test_resnet, 32 px)
    python benchmarks/bench_train.py                    # resnet18, 64 px, batch 64
    python benchmarks/bench_train.py --device cuda --backbone resnet50 --image-size 224 --batch-size 128

Appends one JSON line per run to benchmarks/results/train.jsonl.
"""
from __future__ import annotations

import argparse
import sys
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sslsearch import (create_backbone, default_preprocessing, list_images, load_image, make_sample_dataset,
                       read_metrics, resolve_device, train, train_config, training_transform)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import git_commit  # noqa: E402 - the benchmarks' shared commit record

RESULTS = Path(__file__).resolve().parent / "results" / "train.jsonl"
WARMUP_STEPS = 2
PROTOTYPES, DINO_HIDDEN, DINO_BOTTLENECK, LOCAL_CROPS = 4096, 2048, 256, 6
QUEUE = 512
EXTRA: list[str] = []  # extra config fields for the sslsearch runs, as --set KEY=VALUE gives them
# what makes the sslsearch runs do the same work as the other two (and log every step)
SSLSEARCH_SETTINGS = {"log_every_steps": 1, "progress": False, "checkpoint_every_steps": 10**9, "optimizer.name": "sgd",
                      "moco.symmetric": False, "moco.batch_norm_splits": 1, "moco.queue_size": QUEUE,
                      "moco.batch_negatives": False, "moco.head_batch_norm": False, "moco.temperature": 0.2,
                      "dino.prototypes": PROTOTYPES, "dino.hidden_dim": DINO_HIDDEN,
                      "dino.bottleneck_dim": DINO_BOTTLENECK, "augmentation.local_crop_count": LOCAL_CROPS}


# ----------------------------------------------------------------------------- data


class Views(torch.utils.data.Dataset):
    """In-memory images → views with the given transform (what all three implementations train on)."""

    def __init__(self, images: list, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        return self.transform(self.images[index])


def batches(images: list, transform, batch_size: int, workers: int):
    loader = torch.utils.data.DataLoader(Views(images, transform), batch_size=batch_size, shuffle=True,
                                         drop_last=True, num_workers=workers)
    while True:
        yield from loader


# ----------------------------------------------------------------------------- plain PyTorch


def plain_step_factory(method: str, backbone: nn.Module, dim: int, device: torch.device, lr: float):
    """A hand-written training step of ``method``: returns step(views) -> None."""
    if method == "simclr":
        head = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(), nn.Linear(dim, 128))
        model = nn.Sequential(backbone, head).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-6)

        def step(views):
            z = F.normalize(model(torch.cat(views[:2])).float(), dim=1)
            n = z.shape[0] // 2
            similarity = (z @ z.T / 0.2).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), -1e9)
            targets = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
            loss = F.cross_entropy(similarity, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return step
    if method == "moco":
        head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 128))
        query = nn.Sequential(backbone, head).to(device)
        key = copy.deepcopy(query).requires_grad_(False)
        queue = F.normalize(torch.randn(QUEUE, 128, device=device), dim=1)
        optimizer = torch.optim.SGD(query.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
        pointer = [0]

        def step(views):
            q = F.normalize(query(views[0]).float(), dim=1)
            with torch.no_grad():
                for pk, pq in zip(key.parameters(), query.parameters()):
                    pk.mul_(0.99).add_(pq.detach(), alpha=0.01)
                k = F.normalize(key(views[1]).float(), dim=1)
            logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / 0.2
            loss = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rows = (pointer[0] + torch.arange(len(k), device=k.device)) % QUEUE
            queue[rows] = k
            pointer[0] = (pointer[0] + len(k)) % QUEUE
        return step
    # DINO
    def dino_head() -> nn.Module:
        mlp = nn.Sequential(nn.Linear(dim, DINO_HIDDEN), nn.BatchNorm1d(DINO_HIDDEN), nn.GELU(),
                            nn.Linear(DINO_HIDDEN, DINO_HIDDEN), nn.BatchNorm1d(DINO_HIDDEN), nn.GELU(),
                            nn.Linear(DINO_HIDDEN, DINO_BOTTLENECK))
        last = nn.utils.parametrizations.weight_norm(nn.Linear(DINO_BOTTLENECK, PROTOTYPES, bias=False))
        last.parametrizations.weight.original0.data.fill_(1.0)
        last.parametrizations.weight.original0.requires_grad_(False)

        class Head(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.mlp, self.last = mlp, last

            def forward(self, x):
                return self.last(F.normalize(self.mlp(x), dim=-1))
        return Head()

    student = nn.ModuleDict({"backbone": backbone, "head": dino_head()}).to(device)
    teacher = copy.deepcopy(student).requires_grad_(False)
    center = torch.zeros(1, PROTOTYPES, device=device)
    parameters = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=1e-5)

    def step(views):
        nonlocal center
        globals_ = torch.cat(views[:2])
        with torch.no_grad():
            t = teacher["head"](teacher["backbone"](globals_)).float()
        s = student["head"](torch.cat([student["backbone"](globals_), student["backbone"](torch.cat(views[2:]))]))
        teacher_p = F.softmax((t - center) / 0.04, dim=-1).chunk(2)
        student_log_p = F.log_softmax(s.float() / 0.1, dim=-1).chunk(len(views))
        loss = sum(-(q * lp).sum(-1).mean() for i, q in enumerate(teacher_p) for j, lp in enumerate(student_log_p)
                   if i != j) / (2 * (len(views) - 1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 3.0)
        optimizer.step()
        with torch.no_grad():
            center = 0.9 * center + 0.1 * t.mean(0, keepdim=True)
            for pt, ps in zip(teacher.parameters(), student.parameters()):
                pt.mul_(0.996).add_(ps.detach(), alpha=0.004)
    return step


# ----------------------------------------------------------------------------- lightly


def lightly_step_factory(method: str, backbone: nn.Module, dim: int, device: torch.device, lr: float):
    """The step of lightly's example for ``method`` (lightly 1.x API)."""
    from lightly.loss import DINOLoss, NTXentLoss
    from lightly.models.modules.heads import DINOProjectionHead, MoCoProjectionHead, SimCLRProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    if method == "simclr":
        model = nn.Sequential(backbone, SimCLRProjectionHead(dim, dim, 128)).to(device)
        criterion = NTXentLoss(temperature=0.2)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-6)

        def step(views):
            loss = criterion(model(views[0]), model(views[1]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return step
    if method == "moco":
        model = nn.Sequential(backbone, MoCoProjectionHead(dim, dim, 128)).to(device)
        momentum_model = copy.deepcopy(model)
        deactivate_requires_grad(momentum_model)
        criterion = NTXentLoss(temperature=0.2, memory_bank_size=(QUEUE, 128))
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)

        def step(views):
            update_momentum(model, momentum_model, m=0.99)
            query = model(views[0])
            with torch.no_grad():
                key = momentum_model(views[1])
            loss = criterion(query, key)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return step
    student_backbone, student_head = backbone, DINOProjectionHead(dim, DINO_HIDDEN, DINO_BOTTLENECK, PROTOTYPES,
                                                                  batch_norm=True, freeze_last_layer=1)
    student = nn.ModuleDict({"backbone": student_backbone, "head": student_head}).to(device)
    # as lightly's example: the teacher head is a new instance (its weight-normed layer cannot be deep-copied)
    teacher = nn.ModuleDict({"backbone": copy.deepcopy(student_backbone),
                             "head": DINOProjectionHead(dim, DINO_HIDDEN, DINO_BOTTLENECK, PROTOTYPES,
                                                        batch_norm=True)}).to(device)
    deactivate_requires_grad(teacher)
    criterion = DINOLoss(output_dim=PROTOTYPES, warmup_teacher_temp_epochs=0).to(device)
    parameters = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=1e-5)

    def step(views):
        update_momentum(student, teacher, m=0.996)
        teacher_out = [teacher["head"](teacher["backbone"](v)) for v in views[:2]]
        student_out = [student["head"](student["backbone"](v)) for v in views]
        loss = criterion(teacher_out, student_out, epoch=0)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 3.0)
        optimizer.step()
    return step


def lightly_available() -> bool:
    try:
        import lightly.loss  # noqa: F401
        import lightly.models.modules.heads  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not installed"
        return False
    return True


# ----------------------------------------------------------------------------- timing


def time_loop(step_factory, method: str, args, images: list, transform, device: torch.device) -> list[float]:
    """Seconds of each step (data included) of a hand-written loop, after warm-up."""
    backbone, dim = create_backbone(args.backbone)
    step = step_factory(method, backbone.to(device), dim, device, lr=0.01)
    autocast = device.type == "cuda"
    durations = []
    source = batches(images, transform, args.batch_size, args.workers)
    began = time.perf_counter()
    for i in range(args.steps):
        views = [v.to(device, non_blocking=True) for v in next(source)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            step(views)
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        if i >= WARMUP_STEPS:
            durations.append(now - began)
        began = now
    return durations


def time_sslsearch(method: str, args, data: Path, work: Path) -> list[float]:
    """Seconds of each step of ``sslsearch.train`` (from its per-step metrics), after warm-up."""
    run = work / f"run-{method}-{time.time_ns()}"
    epochs = args.steps / (args.n_images // args.batch_size)
    config = train_config(data, run, method=method, backbone=args.backbone, image_size=args.image_size,
                          batch_size=args.batch_size, epochs=epochs, device=args.device, workers=args.workers,
                          settings=SSLSEARCH_SETTINGS)
    train(config=config, settings=EXTRA)
    rates = [r["images_per_second"] for r in read_metrics(run) if "images_per_second" in r and "event" not in r]
    return [args.batch_size * 1.0 / rate for rate in rates[WARMUP_STEPS:]]




def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized: test_resnet at 32 px, batch 16, 6 steps")
    parser.add_argument("--methods", default="simclr,moco,dino")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="steps per measured run (the first 2 are warm-up)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-lightly", action="store_true")
    parser.add_argument("--set", dest="assignments", action="append", default=[],
                        help="extra config field for the sslsearch runs, KEY=VALUE (repeatable)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    EXTRA.extend(args.assignments)
    if args.quick:
        args.backbone, args.image_size, args.batch_size = "test_resnet", 32, 16
        args.steps, args.repeats = min(args.steps, 6), min(args.repeats, 1)
    device = resolve_device(args.device)
    args.n_images = args.batch_size * (args.steps + 2)
    use_lightly = lightly_available() and not args.no_lightly
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_sample_dataset(work / "images", n_images=args.n_images, image_size=args.image_size, seed=0).root
        source = list_images(data)
        images = [load_image(source.abs_path(r)).image for r in source.records]
        preprocessing = default_preprocessing(create_backbone(args.backbone)[0], args.image_size)
        for method in args.methods.split(","):
            # the views sslsearch trains on (SimCLR's two views for MoCo too; DINO's multi-crop), fed to all three
            views = train_config(method=method, image_size=args.image_size,
                                 settings={"augmentation.local_crop_count": LOCAL_CROPS})
            transform = training_transform(views, mean=preprocessing.mean, std=preprocessing.std)
            times: dict[str, list[float]] = {"sslsearch": [], "plain": [], "lightly": []}
            for _ in range(args.repeats):
                times["plain"] += time_loop(plain_step_factory, method, args, images, transform, device)
                times["sslsearch"] += time_sslsearch(method, args, data, work)
                if use_lightly:
                    times["lightly"] += time_loop(lightly_step_factory, method, args, images, transform, device)
            rate = {name: args.batch_size / statistics.median(t) for name, t in times.items() if t}
            results[method] = {name: round(r, 2) for name, r in rate.items()}
            results[method]["vs_plain"] = round(rate["sslsearch"] / rate["plain"], 3)
            if "lightly" in rate:
                results[method]["vs_lightly"] = round(rate["sslsearch"] / rate["lightly"], 3)
            rows.append([method, f"{rate['sslsearch']:.1f}", f"{rate['plain']:.1f}", f"{results[method]['vs_plain']:.2f}",
                         f"{rate['lightly']:.1f}" if "lightly" in rate else "-",
                         f"{results[method]['vs_lightly']:.2f}" if "lightly" in rate else "-"])
    headers = ["method", "sslsearch img/s", "plain img/s", "× plain", "lightly img/s", "× lightly"]
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    print(f"{args.backbone} @ {args.image_size}px, batch {args.batch_size}, {device}, {args.steps} steps × "
          f"{args.repeats} repeats, median step after {WARMUP_STEPS} warm-up steps")
    for row in [headers] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        import sslsearch

        record = {"bench": "train", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": git_commit(),
                  "machine": {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
                              "cores": os.cpu_count(), "load_average": os.getloadavg()[0],
                              "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None},
                  "versions": {"torch": torch.__version__, "sslsearch": sslsearch.__version__,
                               "lightly": __import__("lightly").__version__ if use_lightly else None},
                  "settings": {"backbone": args.backbone, "image_size": args.image_size, "batch_size": args.batch_size,
                               "steps": args.steps, "repeats": args.repeats, "workers": args.workers,
                               "device": str(device), "quick": args.quick, "extra": EXTRA},
                  "results": results}
        with open(RESULTS, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
