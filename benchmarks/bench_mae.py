"""MAE benchmark: training images/s vs a plain-PyTorch MAE loop, and feature quality after a fixed wall-clock budget.

Throughput: ``sslsearch.train`` with ``--method mae`` against a hand-written MAE step in plain
PyTorch (the same timm ViT encoder on the visible patches, a decoder of timm blocks of the same
size, the same masking, loss and AdamW, fed by a plain DataLoader with the same crop + flip) on
the same images, batch and worker count. Repeats are interleaved (plain, sslsearch, plain, ...)
after a warm-up; each side's images/s is the median over its steps after the first two.

Quality (the protocol of bench_ssl_quality.py): MAE trains on the sample data (1,000 images,
seed 0) or ``--data`` for ``--minutes`` of wall clock per variant (``paper``: the paper's settings;
``short-budget``: a 10× learning rate and a 4-block decoder); its exported encoder embeds
the images, and the queries (a second sample set, seed 1, or ``--queries``; leave-one-out when
none) are scored by k-NN accuracy (DINO protocol: k=20, T=0.07), class-retrieval recall@10 and a
linear probe (trained on the bank, tested on the queries), beside raw pixels and the same ViT at
random init (pooled the same way). MAE features are known to be weaker under k-NN and linear
probes than contrastive ones without fine-tuning (He et al. 2021); the figures say
how much, here.

    python benchmarks/bench_mae.py --quick                  # CI-sized (32 px, 20-second budget)
    python benchmarks/bench_mae.py                          # 64 px, vit_tiny/8, 10 minutes per variant
    python benchmarks/bench_mae.py --data IMAGEFOLDER --minutes 30

Appends JSON lines to benchmarks/results/mae.jsonl.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sslsearch import (TrainConfig, __version__, class_retrieval, create_backbone, create_encoder, default_preprocessing,
                       knn_accuracy, linear_probe, list_images, load_image, make_sample_dataset, read_metrics,
                       save_encoder, train, train_config)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import git_commit  # noqa: E402 - the benchmarks' shared commit record

RESULTS = Path(__file__).resolve().parent / "results" / "mae.jsonl"


# ----------------------------------------------------------------------------- the plain-PyTorch reference


class PlainMAE(nn.Module):
    """MAE written directly in PyTorch (after facebookresearch/mae models_mae.py), on a timm ViT encoder."""

    def __init__(self, encoder: nn.Module, patch: int, grid: int, width: int, depth: int, heads: int,
                 mask_ratio: float) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.encoder, self.patch, self.grid, self.mask_ratio = encoder, patch, grid, mask_ratio
        dim = encoder.embed_dim
        self.decoder_embed = nn.Linear(dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, width), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(width, heads, 4.0, qkv_bias=True) for _ in range(depth)])
        self.decoder_norm = nn.LayerNorm(width, eps=1e-6)
        self.decoder_pred = nn.Linear(width, patch * patch * 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        e = self.encoder
        x = e.patch_embed(images) + e.pos_embed[:, 1:]
        batch, n, dim = x.shape
        keep = int(n * (1 - self.mask_ratio))
        shuffle = torch.argsort(torch.rand(batch, n, device=x.device), dim=1)
        restore = torch.argsort(shuffle, dim=1)
        x = torch.gather(x, 1, shuffle[:, :keep, None].expand(-1, -1, dim))
        mask = torch.ones(batch, n, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, restore)
        cls = (e.cls_token + e.pos_embed[:, :1]).expand(batch, -1, -1)
        x = e.norm(e.blocks(torch.cat([cls, x], dim=1)))
        x = self.decoder_embed(x)
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(batch, n - keep, -1)], dim=1)
        tokens = torch.gather(tokens, 1, restore[:, :, None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        prediction = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        p, g = self.patch, self.grid
        target = images.reshape(batch, 3, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(batch, g * g, p * p * 3)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
        loss = ((prediction - target) ** 2).mean(-1)
        return (loss * mask).sum() / mask.sum()


class CropFlip(torch.utils.data.Dataset):
    def __init__(self, images: list, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.images[index])


def plain_loop_images_per_second(images: list, config: TrainConfig, steps: int) -> float:
    """Median images/s of steps 3… of a plain loop: DataLoader → PlainMAE → backward → AdamW step."""
    from torchvision import transforms as T

    kwargs = {**config.model_kwargs, "img_size": config.image_size}
    encoder, _ = create_backbone(config.backbone, **kwargs)
    patch = int(encoder.patch_embed.patch_size[0])
    width = config.mae.decoder_width or min(512, encoder.embed_dim)
    heads = config.mae.decoder_heads or max(1, width // 32)
    model = PlainMAE(encoder, patch, config.image_size // patch, width, config.mae.decoder_depth, heads,
                     config.mae.mask_ratio)
    pre = default_preprocessing(encoder, config.image_size)
    transform = T.Compose([T.RandomResizedCrop(config.image_size, scale=(0.2, 1.0),
                                               interpolation=T.InterpolationMode.BICUBIC),
                           T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(pre.mean, pre.std)])
    workers = config.workers or 0
    threads = torch.get_num_threads()
    # what the trainer does on the CPU: loader processes + torch threads = cores, so neither waits on the other
    torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 2) - workers)))
    loader = torch.utils.data.DataLoader(CropFlip(images, transform), batch_size=config.batch_size, shuffle=True,
                                         drop_last=True, num_workers=workers, persistent_workers=workers > 0,
                                         prefetch_factor=4 if workers else None)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95),
                                  weight_decay=0.05)
    durations, done = [], 0
    began = time.perf_counter()
    while done < steps:
        for batch in loader:
            loss = model(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            now = time.perf_counter()
            durations.append(now - began)
            began = now
            done += 1
            if done >= steps:
                break
    torch.set_num_threads(threads)
    return config.batch_size / statistics.median(durations[2:])


def trainer_images_per_second(data: Path, config: TrainConfig, steps: int, out: Path) -> float:
    """Median images/s of steps 3… of ``sslsearch.train`` (from metrics.jsonl, logged every step)."""
    epochs = steps * config.batch_size / len(list_images(data).records)
    run = dataclasses.replace(config, data=str(data), out=str(out), epochs=epochs, log_every_steps=1,
                              checkpoint_every_steps=10**9, progress=False)
    train(config=run)
    rates = [r["images_per_second"] for r in read_metrics(out) if "images_per_second" in r and "event" not in r]
    return statistics.median(rates[2:])


# ----------------------------------------------------------------------------- quality

LINEAR_WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)  # up to 0.1: a 1,000-image probe overfits with weaker decay


def load_labelled(folder: Path) -> tuple[list, np.ndarray]:
    source = list_images(folder)
    records = [r for r in source.records if r.label is not None]
    return [load_image(source.abs_path(r)).image for r in records], np.array([r.label for r in records])


def embed(encoder, images: list, batch: int = 128) -> np.ndarray:
    return np.concatenate([encoder.embed_pil(images[i:i + batch]) for i in range(0, len(images), batch)])


def raw_pixels(images: list, size: int) -> np.ndarray:
    """Each image resized to the training size and flattened: the no-learning baseline (centred by the caller)."""
    from PIL import Image

    return np.stack([np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.float32).ravel() for im in images])


def score(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray | None,
          query_labels: np.ndarray | None) -> dict[str, float]:
    """k-NN (k=20, T=0.07), class recall@10 and a linear probe (bank → queries); leave-one-out without queries."""
    loo = queries is None
    q, q_labels = (bank, bank_labels) if loo else (queries, query_labels)
    knn = knn_accuracy(bank, bank_labels, q, q_labels, ks=[20], temperature=0.07, leave_one_out=loo, device="cpu")
    retrieval = class_retrieval(bank, bank_labels, q, q_labels, ks=[10], leave_one_out=loo, device="cpu")
    if loo:  # half of each class trains the probe, the other half tests it
        rng = np.random.default_rng(0)
        train_rows = np.zeros(len(bank_labels), bool)
        for label in np.unique(bank_labels):
            rows = rng.permutation(np.flatnonzero(bank_labels == label))
            train_rows[rows[:len(rows) // 2]] = True
        probe = linear_probe(bank[train_rows], bank_labels[train_rows], bank[~train_rows], bank_labels[~train_rows],
                             weight_decays=LINEAR_WEIGHT_DECAYS, device="cpu")
    else:
        probe = linear_probe(bank, bank_labels, q, q_labels, weight_decays=LINEAR_WEIGHT_DECAYS, device="cpu")
    return {"knn_accuracy": round(float(knn.weighted[20]), 4), "recall_at_10": round(float(retrieval.recall[10]), 4),
            "linear_probe": round(float(probe.test_accuracy), 4)}


def random_init_encoder(config: TrainConfig, directory: Path):
    """The trained architecture at its seeded random init, pooled as MAE exports (mean of patch tokens)."""
    kwargs = {**config.model_kwargs, "img_size": config.image_size, "global_pool": "avg", "fc_norm": False}
    backbone, _ = create_backbone(config.backbone, **kwargs)
    save_encoder(directory, backbone, backbone=config.backbone, model_kwargs=kwargs,
                 preprocessing=default_preprocessing(backbone, config.image_size))
    return create_encoder(directory, device="cpu")


def quality(data: Path, queries: Path | None, variants: dict[str, TrainConfig], minutes: float,
            work: Path) -> list[dict[str, object]]:
    """Raw pixels, random init, then one MAE run per variant for ``minutes`` each; scored on the same images."""
    bank_images, bank_labels = load_labelled(data)
    query_images, query_labels = load_labelled(queries) if queries else (None, None)
    first = next(iter(variants.values()))
    raw_bank = raw_pixels(bank_images, first.image_size)
    mean = raw_bank.mean(axis=0)
    raw_queries = raw_pixels(query_images, first.image_size) - mean if query_images else None
    rows = [{"features": "raw pixels", **score(raw_bank - mean, bank_labels, raw_queries, query_labels)}]
    encoder = random_init_encoder(first, work / "random_init")
    rows.append({"features": "random init", **score(embed(encoder, bank_images), bank_labels,
                                                    embed(encoder, query_images) if query_images else None,
                                                    query_labels)})
    for name, config in variants.items():
        out = work / f"run-{name}"
        result = train(config=dataclasses.replace(config, data=str(data), out=str(out), max_minutes=minutes,
                                                  epochs=None, checkpoint_every_steps=10**9, progress=False))
        losses = [r["loss"] for r in read_metrics(out) if "loss" in r and "event" not in r]
        encoder = create_encoder(out, device="cpu")
        scores = score(embed(encoder, bank_images), bank_labels,
                       embed(encoder, query_images) if query_images else None, query_labels)
        rows.append({"features": f"MAE {name} {' '.join(VARIANTS.get(name, []))}".strip(), **scores,
                     "steps": result.steps, "epochs": result.epochs, "first_loss": round(losses[0], 4),
                     "final_loss": round(losses[-1], 4), "warnings": list(result.warnings)})
        print(f"MAE {name}: loss {losses[0]:.4f} → {losses[-1]:.4f} in {result.steps} steps", file=sys.stderr)
    return rows


# ----------------------------------------------------------------------------- running




def machine() -> dict[str, object]:
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    import timm

    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "load_1min_at_start": load, "python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "sslsearch": __version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def print_table(header: list[str], rows: list[list[object]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))


VARIANTS = {
    # the paper's settings: decoder 8 blocks × min(512, encoder width), base lr 1.5e-4 per 256 images
    "paper": [],
    # for short CPU budgets: half the decoder (more steps fit) and a 10× learning rate
    "short-budget": ["optimizer.lr=1.5e-3", "mae.decoder_depth=4"],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized: 32 px, 200 images, 20 s budget, one variant")
    parser.add_argument("--data", type=Path, default=None, help="labelled ImageFolder (default: generated sample data)")
    parser.add_argument("--queries", type=Path, default=None, help="held-out labelled ImageFolder of queries")
    parser.add_argument("--n-images", type=int, default=None, help="sample images to generate (default 1000)")
    parser.add_argument("--backbone", default="vit_tiny_patch16_224")
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=None, help="px (default 64; --quick 32)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="loader processes for both sides (default 0, "
                        "the trainer's choice for in-memory images on few cores)")
    parser.add_argument("--minutes", type=float, default=None, help="training budget of each quality run (default 10)")
    parser.add_argument("--variants", default=None, help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=None, help="steps per throughput repeat (default 8)")
    parser.add_argument("--repeats", type=int, default=None, help="throughput repeats (default 3)")
    parser.add_argument("--set", dest="assignments", action="append", default=[],
                        help="extra config field KEY=VALUE for every run, e.g. mae.decoder_depth=4")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--no-save", action="store_true", help="do not append to benchmarks/results/mae.jsonl")
    args = parser.parse_args(argv)
    image_size = args.image_size or (32 if args.quick else 64)
    minutes = args.minutes or (1 / 3 if args.quick else 10.0)
    steps = args.steps or (5 if args.quick else 8)
    repeats = args.repeats or (1 if args.quick else 3)
    n_images = args.n_images or (200 if args.quick else 1000)
    chosen = args.variants.split(",") if args.variants else (["paper"] if args.quick else list(VARIANTS))
    base = train_config(method="mae", backbone=args.backbone, image_size=image_size, batch_size=args.batch_size,
                        workers=args.workers, settings={"model_kwargs": {"patch_size": args.patch_size}})
    variants = {name: train_config(config=base, settings=[*args.assignments, *VARIANTS[name]]) for name in chosen}
    config = variants[chosen[0]]
    info, commit = machine(), git_commit()  # the code measured, even if HEAD moves during a long run
    rows: list[dict[str, object]] = []
    common = {"backbone": args.backbone, "patch_size": args.patch_size, "image_size": image_size,
              "batch_size": args.batch_size, "workers": args.workers, "set": args.assignments}
    with tempfile.TemporaryDirectory(prefix="bench_mae_") as tmp:
        work = Path(tmp)
        data, queries = args.data, args.queries
        dataset_name = str(data) if data else \
            f"sample data ({n_images} images, seed 0; queries: {n_images // 2}, seed 1)"
        if data is None:
            data = make_sample_dataset(work / "sample", n_images=n_images, image_size=image_size, seed=0).root
            queries = make_sample_dataset(work / "sample-queries", n_images=n_images // 2, image_size=image_size,
                                          seed=1).root
        if not args.skip_throughput:
            source = list_images(data)
            images = [load_image(source.abs_path(r)).image for r in source.records]
            plain_loop_images_per_second(images, config, 3)  # warm-up
            plain, ours = [], []
            for repeat in range(repeats):
                plain.append(plain_loop_images_per_second(images, config, steps))
                ours.append(trainer_images_per_second(data, config, steps, work / f"speed{repeat}"))
                print(f"repeat {repeat}: plain {plain[-1]:.1f} img/s, sslsearch {ours[-1]:.1f} img/s", file=sys.stderr)
            row = {"kind": "throughput", **common, "variant": chosen[0], "steps": steps, "repeats": repeats,
                   "plain_images_per_s": round(statistics.median(plain), 2),
                   "sslsearch_images_per_s": round(statistics.median(ours), 2),
                   "ratio": round(statistics.median(o / p for o, p in zip(ours, plain)), 3)}
            rows.append(row)
            print_table(["backbone", "px", "batch", "decoder", "plain img/s", "sslsearch img/s", "ratio"],
                        [[f"{args.backbone}/{args.patch_size}", image_size, args.batch_size,
                          f"{config.mae.decoder_depth} blocks", row["plain_images_per_s"],
                          row["sslsearch_images_per_s"], row["ratio"]]])
            print(f"(median of {repeats} interleaved repeats of {steps} steps, the first 2 of each left out; "
                  f"load average at start {info['load_1min_at_start']})\n")
        if not args.skip_quality:
            results = quality(Path(data), queries, variants, minutes, work / "quality")
            protocol = "held-out queries" if queries else "leave-one-out"
            for result in results:
                rows.append({"kind": "quality", **common, "minutes": minutes, "data": dataset_name,
                             "protocol": protocol, **result})
            print(f"{args.backbone}/{args.patch_size} @ {image_size}px, batch {args.batch_size}, {minutes:g} min per "
                  f"MAE run, {dataset_name} ({protocol}); k-NN k=20 T=0.07")
            print_table(["features", "k-NN acc", "recall@10", "linear probe", "steps", "loss"],
                        [[r["features"], r["knn_accuracy"], r["recall_at_10"], r["linear_probe"], r.get("steps", "-"),
                          f"{r['first_loss']} → {r['final_loss']}" if "final_loss" in r else "-"] for r in results])
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with open(RESULTS, "a") as handle:
            for row in rows:
                handle.write(json.dumps({"bench": "mae", "time": stamp, "commit": commit, "machine": info,
                                         "argv": sys.argv[1:], **row}) + "\n")


if __name__ == "__main__":
    main()
