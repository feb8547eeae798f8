"""`sslsearch train`: self-supervised pretraining (SimCLR, MoCo v2, DINO) into a run directory `embed` can use."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import AllowDownloadOption, JsonOption, PretrainedOption, info, print_json

HELP = """Pretrain a timm backbone (random init) on the images of DATA with a self-supervised method.

The run directory --out gets `config.yaml` (resolved), `checkpoints/`, `metrics.jsonl`, and at the
end `encoder.safetensors` + `encoder.json`, so `sslsearch embed DATA --encoder RUN` uses the trained
backbone.

* **Length**: --epochs E, or --max-minutes M (a wall-clock budget: the schedules are sized to the
  steps that fit, re-planned from the run's measured rate as it trains), or both (whichever is
  shorter); 100 epochs when neither is given.
* **Settings**: any config field can be set with --config FILE.yaml or --set KEY=VALUE, e.g.
  `--set optimizer.lr=0.5 --set dino.prototypes=1024`; --print-config shows them all with their
  defaults.
* **Resume**: an interrupted run continues exactly with --resume (same data; options may be omitted).
* **Multi-GPU / multi-node**: run the same command under torchrun, e.g.
  `torchrun --nproc_per_node 4 --no-python sslsearch train DATA --out RUN` (--batch-size is per
  process).
* **Continued pretraining**: `--init timm:vit_small_patch14_dinov2.lvd142m --pretrained` (published
  weights from the local Hugging Face cache), `--init RUN`, or `--init weights.safetensors` with
  --backbone; the default base lr is scaled by optimizer.init_lr_ratio (0.1) and layer i of L trains
  at lr × optimizer.layer_decay^(L - i) (0.75).

Example: `sslsearch train sample-data --out runs/quick --max-minutes 3`
"""


def train_command(
    data: Optional[Path] = typer.Argument(None, metavar="DATA", help="Folder of images (ImageFolder or flat) or a "
                                          ".txt/.csv/.parquet list of paths."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (new, or an existing run with --resume)."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="simclr (default), moco, dino or mae (ViTs only)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="timm architecture, random init (default resnet18)."),
    init: Optional[str] = typer.Option(None, "--init", help="Continue pretraining from these weights: timm:NAME with "
                                       "--pretrained, a run directory, a checkpoint folder, or a weights file for "
                                       "--backbone. Lower default lr and layer-wise lr decay (0.75)."),
    pretrained: bool = PretrainedOption, allow_download: bool = AllowDownloadOption,
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Training resolution in px (default 64)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the data (default 100)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Wall-clock budget in minutes."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Images per step per process (default 64)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (CUDA when torch sees a GPU), cpu or cuda."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Data-loading processes (default: by device and cores; 0 = in-process)."),
    val: Optional[Path] = typer.Option(None, "--val", help="Labelled ImageFolder: online k-NN accuracy each epoch."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="YAML file of config fields (see --print-config)."),
    assignments: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Set any config field (repeatable), e.g. `--set optimizer.lr=0.5`."),
    strict: Optional[bool] = typer.Option(None, "--strict", help="Fail on an unreadable image instead of skipping it."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the config (with comments) and exit."),
    as_json: bool = JsonOption,
) -> None:
    from ..ssl.config import build_config, parse_assignments, to_yaml
    from ..ssl.train import train

    overrides = {"data": str(data) if data else None, "out": str(out) if out else None, "method": method,
                 "backbone": backbone, "image_size": image_size, "epochs": epochs, "max_minutes": max_minutes,
                 "batch_size": batch_size, "device": device, "workers": workers, "val": str(val) if val else None,
                 "strict": strict, "init": init, "pretrained": pretrained or None,
                 "allow_download": allow_download or None, **parse_assignments(assignments)}
    config = build_config(overrides, config_file=config_file, resume_run=out if resume else None)
    if print_config:
        typer.echo(to_yaml(config), nl=False)
        return
    if data is None or out is None:
        raise typer.BadParameter("DATA and --out are required (or use --print-config)")
    result = train(config, resume=resume)
    if as_json:
        print_json(result.to_dict())
        return
    state = "finished" if result.finished else f"stopped at step {result.steps}/{result.planned_steps}"
    knn = f", k-NN accuracy {result.knn_accuracy:.4f}" if result.knn_accuracy is not None else ""
    info(f"{state}: {result.method} {result.backbone}, {result.steps} steps ({result.epochs:g} epochs), "
         f"loss {result.final_loss:.4f}{knn}, {result.images_per_second:.1f} images/s, {result.seconds:.0f} s")
    if result.encoder_exported:
        typer.echo(f"encoder {result.run_dir} (use: sslsearch embed DATA --encoder {result.run_dir} --out EMB)")
    else:
        typer.echo(f"run {result.run_dir} (continue with: sslsearch train {config.data} --out {result.run_dir} --resume)")


def register(app: typer.Typer, index_app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("train", help=HELP)(train_command)
