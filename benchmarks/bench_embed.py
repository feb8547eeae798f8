"""Extraction benchmark: end-to-end images/s (decode → forward → Parquet) vs forward-only images/s.

The reference is the same encoder, the same batch size and the same images, already decoded
and preprocessed into tensors, measured in the same run: the ratio end-to-end / forward-only
says how much of the model's speed the pipeline (decode workers, writer thread, Parquet) keeps.
Repeats are interleaved (forward, end-to-end, forward, ...) after a warm-up, and the median is
reported, so drift on a shared machine hits both sides alike.

    python benchmarks/bench_embed.py --quick          # CI-sized, < 1 min
    python benchmarks/bench_embed.py                  # resnet18 @ 64 and 112 px
    python benchmarks/bench_embed.py --workers 0,1,2 --threads 1,2   # tuning grid

Appends one JSON line per configuration to benchmarks/results/embed.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sslsearch import __version__, create_encoder, default_workers, embed_images, list_images, load_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import git_commit  # noqa: E402 - the benchmarks' shared commit record

RESULTS = Path(__file__).resolve().parent / "results" / "embed.jsonl"


def make_images(root: Path, n_images: int, image_size: int) -> Path:
    """The project's sample data set when available, else random-shape PNG/JPEG files."""
    try:
        from sslsearch import make_sample_dataset
    except ImportError:
        make_sample_dataset = None
    if make_sample_dataset is not None:
        return make_sample_dataset(root, n_images=n_images, image_size=image_size, seed=0).root
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for i in range(n_images):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB", (image_size, image_size), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = (int(v) for v in rng.integers(0, image_size, 2))
            draw.ellipse((x0, y0, x0 + image_size // 4, y0 + image_size // 4), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        image.save(folder / f"img_{i:05d}.{'jpg' if i % 2 else 'png'}", quality=90)
    return root


def predecode(encoder, data: Path, batch_size: int) -> list[torch.Tensor]:
    """All images decoded and preprocessed once, in the batches embed_images would form."""
    source = list_images(data)
    tensors = [encoder.transform(load_image(source.abs_path(r)).image) for r in source.records]
    return [torch.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)]


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the decode workers), user + system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_forward(encoder, batches: list[torch.Tensor]) -> tuple[float, float]:
    """(images/s, CPU s per image) of the encoder alone on pre-decoded tensors (normalised float32 out, as embed)."""
    started, cpu = time.perf_counter(), cpu_seconds()
    for batch in batches:
        encoder.embed_tensors(batch)
    n = sum(len(b) for b in batches)
    return n / (time.perf_counter() - started), (cpu_seconds() - cpu) / n


def time_end_to_end(encoder, data: Path, out: Path, *, batch_size: int, workers: int,
                    threads: int) -> tuple[float, float]:
    """(images/s, CPU s per image) of the whole embed_images call, decode workers included."""
    started, cpu = time.perf_counter(), cpu_seconds()
    result = embed_images(data, encoder, out, batch_size=batch_size, workers=workers, threads=threads,
                          overwrite=True, progress=False)
    return result.embedded_now / (time.perf_counter() - started), (cpu_seconds() - cpu) / result.embedded_now




def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; all cores where that is not known)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine() -> dict[str, object]:
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "usable_cores": usable_cores(), "load_1min_at_start": load,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "python": platform.python_version(),
            "torch": torch.__version__, "sslsearch": __version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized: 256 images, 64 px, 3 repeats")
    parser.add_argument("--full", action="store_true", help="more images and repeats")
    parser.add_argument("--model", default="resnet18", help="timm architecture (random init)")
    parser.add_argument("--sizes", default=None, help="input sizes in px, comma-separated (default 64,112)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-images", type=int, default=None)
    parser.add_argument("--source-size", type=int, default=128, help="side of the generated images in px")
    parser.add_argument("--workers", default=None, help="decode workers to try, comma-separated (default: library default)")
    parser.add_argument("--threads", default=None, help="forward threads to try, comma-separated (default: torch's)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--omp-wait-policy", choices=["passive", "active"], default=None,
                        help="run under OMP_WAIT_POLICY (re-executes this script: libgomp reads it at start-up)")
    parser.add_argument("--no-save", action="store_true", help="do not append to benchmarks/results/embed.jsonl")
    args = parser.parse_args(argv)
    if args.omp_wait_policy and os.environ.get("OMP_WAIT_POLICY", "").lower() != args.omp_wait_policy:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "OMP_WAIT_POLICY": args.omp_wait_policy})

    sizes = parse_ints(args.sizes) if args.sizes else ([64] if args.quick else [64, 112])
    n_images = args.n_images or (256 if args.quick else 2048 if args.full else 1024)
    repeats = args.repeats or (3 if args.quick else 7 if args.full else 5)
    workers_grid = parse_ints(args.workers) if args.workers else [default_workers(args.device)]
    threads_grid = parse_ints(args.threads) if args.threads else [torch.get_num_threads()]
    info = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        data = make_images(Path(tmp) / "images", n_images, args.source_size)
        for size in sizes:
            encoder = create_encoder(f"timm:{args.model}", image_size=size, device=args.device)
            batches = predecode(encoder, data, args.batch_size)
            for threads in threads_grid:
                torch.set_num_threads(threads)
                time_forward(encoder, batches[:2])  # warm-up: allocator, oneDNN primitives
                for workers in workers_grid:
                    time_end_to_end(encoder, data, Path(tmp) / "emb", batch_size=args.batch_size, workers=workers,
                                    threads=threads)  # warm-up
                    forward, end_to_end = [], []
                    for _ in range(repeats):
                        forward.append(time_forward(encoder, batches))
                        end_to_end.append(time_end_to_end(encoder, data, Path(tmp) / "emb", batch_size=args.batch_size,
                                                          workers=workers, threads=threads))
                    rate_f, rate_e = [f[0] for f in forward], [e[0] for e in end_to_end]
                    row = {"model": args.model, "image_size": size, "batch_size": args.batch_size, "device": args.device,
                           "n_images": n_images, "source_size": args.source_size, "workers": workers,
                           "threads": threads, "repeats": repeats,
                           "forward_images_per_s": round(statistics.median(rate_f), 1),
                           "end_to_end_images_per_s": round(statistics.median(rate_e), 1),
                           "ratio": round(statistics.median(e / f for e, f in zip(rate_e, rate_f)), 3),
                           # CPU work per image, forward-only / end-to-end: what the pipeline adds (decode,
                           # preprocessing, Parquet), much less sensitive to other load than wall-clock rates
                           "forward_cpu_ms_per_image": round(1e3 * statistics.median(f[1] for f in forward), 3),
                           "end_to_end_cpu_ms_per_image": round(1e3 * statistics.median(e[1] for e in end_to_end), 3),
                           "cpu_work_ratio": round(statistics.median(f[1] / e[1] for f, e in zip(forward, end_to_end)), 3),
                           "load_1min_at_end": round(os.getloadavg()[0], 2)}
                    rows.append(row)
                    print(f"{args.model} @{size}px b{args.batch_size} workers={workers} threads={threads}: "
                          f"forward {row['forward_images_per_s']} img/s, end-to-end {row['end_to_end_images_per_s']} "
                          f"img/s, ratio {row['ratio']}, CPU work ratio {row['cpu_work_ratio']}", file=sys.stderr)
    header = ["model", "px", "batch", "workers", "threads", "forward img/s", "end-to-end img/s", "ratio",
              "CPU ms/img fwd", "CPU ms/img e2e", "CPU work ratio"]
    table = [[r["model"], r["image_size"], r["batch_size"], r["workers"], r["threads"], r["forward_images_per_s"],
              r["end_to_end_images_per_s"], r["ratio"], r["forward_cpu_ms_per_image"], r["end_to_end_cpu_ms_per_image"],
              r["cpu_work_ratio"]] for r in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *table)]
    for line in [header, ["-" * w for w in widths], *table]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))
    print(f"(median of {repeats} interleaved repeats after a warm-up; ratio = median per-repeat end-to-end / forward; "
          f"load average at start {info['load_1min_at_start']})")
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with open(RESULTS, "a") as handle:
            for row in rows:
                handle.write(json.dumps({"bench": "embed", "time": stamp, "commit": git_commit(), "machine": info,
                                         "argv": sys.argv[1:], **row}) + "\n")


if __name__ == "__main__":
    main()
