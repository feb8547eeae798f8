"""The method-agnostic trainer: step the method over its plan, monitor, checkpoint, resume, export the encoder."""
from __future__ import annotations

import collections
import copy
import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..devices import compute_threads, default_training_workers, resolve_device, torch_threads
from ..encoders import default_preprocessing, save_encoder
from ..errors import InvalidArgumentError, TrainingDivergedError, unknown_name
from ..files import DirectoryLock
from ..progress import progress_bar, progress_enabled
from ..sources import list_images
from . import distributed
from .backbone import build_backbone, check_input_sizes, is_vision_transformer
from .checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from .config import TrainConfig, to_dict
from .data import StepBatchSampler, ViewDataset, load_training_images, make_loader
from .initialization import (apply_layer_decay, load_initial_weights, read_init_record, resolve_initial_weights,
                             training_preprocessing, write_init_record)
from .methods import Method, get_method
from .monitor import CollapseMonitor, KNNMonitor
from .optimizers import build_optimizer, resolve_optimizer_config, set_hyperparameters
from .rundir import RunDirectory
from .plan import (CALIBRATION_STEPS, DEFAULT_EPOCHS, END_RESERVE_SECONDS, Budget, TrainingPlan, first_replan_step, make_plan,
                   next_replan_step, planned_steps, rate_drifted, replan, replanned_steps, requested_budget,
                   steps_in_budget)
from .schedules import StepContext, cosine, warmup_cosine
from .transforms import resolve_augmentation

PRECISIONS = ("auto", "fp32", "bf16")
OVERRUN_WINDOW_STEPS = 5  # late in a --max-minutes run, the median of this many last steps is its current pace
HARD_STOP_CHECK_SECONDS = 5.0  # a --max-minutes run checks its hard stop at least this often (of planned steps)


@dataclass(frozen=True)
class TrainResult:
    """What a ``train`` call did.

    Attributes:
        run_dir: the run directory.
        steps: optimizer steps done so far in the run (all sessions).
        planned_steps: steps the schedules were sized for.
        epochs: passes over the data done.
        images_seen: images (global, each counted once per step however many views) trained on.
        final_loss: mean loss over the last logging interval.
        seconds: wall-clock seconds of this call.
        images_per_second: training throughput of this call (global).
        knn_accuracy: the last online k-NN accuracy (``--val``), or None.
        warnings: collapse warnings raised during this call.
        skipped_images: unreadable training files left out.
        encoder_exported: ``encoder.safetensors`` + ``encoder.json`` were written.
        finished: the run reached its planned steps (False when stopped early).
        replans: times a ``--max-minutes`` run re-sized its plan from its measured rate (all sessions).
    """

    run_dir: Path
    method: str
    backbone: str
    steps: int
    planned_steps: int
    epochs: float
    images_seen: int
    final_loss: float
    seconds: float
    images_per_second: float
    knn_accuracy: float | None
    warnings: tuple[str, ...]
    skipped_images: int
    encoder_exported: bool
    finished: bool
    replans: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["run_dir"] = str(self.run_dir)
        data["warnings"] = list(self.warnings)
        return data


def collapse_grace(plan: TrainingPlan) -> int:
    """Steps before the collapse monitor judges: early on a healthy run can look collapsed (DINO's loss
    starts at ln K), so it waits for the warm-ups (lr, and 30 % of the run or two epochs)."""
    return max(plan.warmup_end_step, min(plan.step_at(0.3), 2 * plan.steps_per_epoch))


def validate_config(config: TrainConfig) -> type[Method]:
    """Checks that need no data or model (the method's own in its ``validate``); returns the method class.

    Raises:
        UnknownNameError, InvalidArgumentError: with the value seen and what to pass instead.
    """
    method_cls = get_method(config.method)
    if not config.data:
        raise InvalidArgumentError("no training data given; pass DATA (a folder of images or a list file)")
    if not config.out:
        raise InvalidArgumentError("no run directory given; pass --out RUN")
    if config.batch_size < method_cls.min_batch_size:
        raise InvalidArgumentError(f"--batch-size {config.batch_size} is too small for {config.method}: a contrastive "
                                   f"method needs at least {method_cls.min_batch_size} images per step "
                                   "(other images are the negatives); use 32 or more")
    if config.image_size < 8:
        raise InvalidArgumentError(f"--image-size {config.image_size} is too small; use at least 32 px")
    for name in ("epochs", "max_minutes"):
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise InvalidArgumentError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if config.precision not in PRECISIONS:
        raise unknown_name("precision", config.precision, PRECISIONS)
    method_cls.validate(config)
    for name in ("checkpoint_every_steps", "log_every_steps", "keep_checkpoints"):
        if getattr(config, name) < 1:
            raise InvalidArgumentError(f"{name} must be at least 1, got {getattr(config, name)}")
    a = config.augmentation
    if not 0 < (a.crop_scale_min or 0.01) <= a.crop_scale_max <= 1:
        raise InvalidArgumentError(f"augmentation crop scale must satisfy 0 < min ≤ max ≤ 1, got "
                                   f"[{a.crop_scale_min}, {a.crop_scale_max}]")
    return method_cls


def train(config: TrainConfig, *, resume: bool = False, log: Callable[[str], None] | None = None) -> TrainResult:
    """Pretrain ``config.backbone`` with ``config.method`` on ``config.data`` into the run directory ``config.out``.

    Under torchrun (WORLD_SIZE > 1) every process calls this; the job trains with DDP and only
    rank 0 writes files. ``resume`` continues the run in ``config.out`` exactly where its last
    checkpoint left it; the config must match the run's (runtime fields aside).

    Returns:
        A ``TrainResult`` (on every process).

    Raises:
        UnknownNameError: unknown method, backbone or optimizer.
        InvalidArgumentError: sizes or batch the backbone or method cannot take.
        InputNotFoundError: missing data, or no readable image.
        OutputExistsError: ``out`` holds another run and ``resume`` is false.
        CheckpointError: resume with a different config, or a corrupt checkpoint.
        TrainingDivergedError: the loss became NaN.

    Example:
        >>> from sslsearch.ssl import TrainConfig, train
        >>> result = train(TrainConfig(data="sample-data", out="runs/quick", max_minutes=3))  # doctest: +SKIP
    """
    return Trainer(config, resume=resume, log=log).run()


class Trainer:
    """One training session (see ``train``)."""

    clock: Callable[[], float] = staticmethod(time.perf_counter)  # wall clock of budgets and rates (tests fake it)

    def __init__(self, config: TrainConfig, *, resume: bool, log: Callable[[str], None] | None) -> None:
        self.start_time = self.clock()
        self.method_cls = validate_config(config)
        self.config = dataclasses.replace(config, data=str(Path(config.data).expanduser().resolve()),
                                          out=str(Path(config.out).expanduser()))
        if config.val:
            self.config = dataclasses.replace(self.config, val=str(Path(config.val).expanduser().resolve()))
        self.resume = resume
        self.device = resolve_device(config.device)
        self.owns_process_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
        self.process = distributed.init_process_group(self.device)
        if self.device.type == "cuda" and self.process.distributed:
            self.device = torch.device("cuda", self.process.local_rank)
        self._log = log
        self.run_dir = RunDirectory(self.config.out)
        self.warnings: list[str] = []

    # -- console -----------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        if not self.process.is_main:
            return
        if self._log is not None:
            self._log(message)
        else:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    # -- setup -------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        lock = DirectoryLock(self.run_dir.path) if self.process.is_main else nullcontext()
        if self.process.is_main:
            if self.resume:
                self.run_dir.load_config()  # a clear error before anything else if it is not a run
            else:
                self.run_dir.check_fresh()
        try:
            with lock, torch_threads():  # setup may lower torch's threads beside loader processes
                self.setup()
                return self.loop()
        finally:
            if self.owns_process_group and self.process.distributed:
                torch.distributed.destroy_process_group()

    def setup(self) -> None:
        config = self.config
        torch.manual_seed(config.seed + self.process.rank)
        initial = None
        if config.init and not self.resume:  # a resumed run continues from its checkpoint instead
            initial = resolve_initial_weights(config.init, backbone=config.backbone, pretrained=config.pretrained,
                                              allow_download=config.allow_download,
                                              default_backbone=TrainConfig().backbone)
            config = dataclasses.replace(config, backbone=initial.backbone,
                                         model_kwargs={**initial.model_kwargs, **config.model_kwargs})
        source = list_images(config.data)
        show = progress_enabled(config.progress) and self.process.is_main
        self.images = load_training_images(source, strict=config.strict, preload_megabytes=config.preload_megabytes,
                                           progress=show)
        if self.images.skipped:
            self.log(f"{self.images.skipped_summary()}; e.g. {self.images.skipped[0].path} "
                     "(use --strict to stop on bad files instead)")
        self.global_batch = config.batch_size * self.process.world_size
        self.steps_per_epoch = len(self.images) // self.global_batch
        if self.steps_per_epoch < 1:
            raise InvalidArgumentError(f"{config.data} has {len(self.images)} readable images, fewer than one global "
                                       f"batch ({config.batch_size} × {self.process.world_size} processes); "
                                       "lower --batch-size or add images")
        self.budget = requested_budget(config.epochs, config.max_minutes, dataset_size=len(self.images),
                                       global_batch_size=self.global_batch, device_type=self.device.type)
        adapted = self.method_cls.adapt_to_budget(config, self.budget)
        note = self.method_cls.explain_budget_choice(config, adapted, self.budget)
        if note:
            self.log(note)
        if adapted != config:
            validate_config(adapted)
            config = adapted
        backbone, dim, model_kwargs = build_backbone(config.backbone, config.model_kwargs,
                                                     image_size=config.image_size,
                                                     multi_size=self.method_cls.multi_size_views)
        if initial is not None:
            load_initial_weights(backbone, initial)
        augmentation = resolve_augmentation(config.augmentation, config.method, config.image_size)
        check_input_sizes(backbone, config.backbone, self.method_cls.input_sizes(config, augmentation))
        self.is_transformer = is_vision_transformer(backbone)
        optimizer_config = resolve_optimizer_config(config.optimizer, self.method_cls.optimizer_defaults,
                                                    is_transformer=self.is_transformer, from_init=bool(config.init))
        config = dataclasses.replace(config, model_kwargs=model_kwargs, augmentation=augmentation,
                                     optimizer=optimizer_config,
                                     epochs=config.epochs if config.epochs or config.max_minutes else DEFAULT_EPOCHS,
                                     channels_last=config.channels_last if config.channels_last is not None
                                     else not self.is_transformer)
        config = self.method_cls.resolve_config(config, dataset_size=len(self.images),
                                                global_batch_size=self.global_batch)
        self.config = config
        if self.resume and self.process.is_main:
            self.run_dir.check_same_config(config)
        distributed.barrier()

        self.method = self.method_cls(backbone, dim, config).to(self.device)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        if config.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.autocast_dtype = torch.bfloat16 if (config.precision == "bf16" or
                                                 (config.precision == "auto" and self.device.type == "cuda")) else None
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.model: nn.Module = self.method
        if self.process.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.method, device_ids=ids)
        groups = apply_layer_decay(self.method.parameter_groups(), self.method.backbone, optimizer_config.layer_decay)
        self.optimizer = build_optimizer(groups, optimizer_config.name, optimizer_config)
        self.trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        init_record = (initial.record() if initial is not None else read_init_record(self.run_dir.path)
                       if config.init else None)
        self.preprocessing = training_preprocessing(default_preprocessing(backbone, config.image_size), init_record)
        self.transform = self.method_cls.build_transform(config.image_size, augmentation,
                                                         self.preprocessing.mean, self.preprocessing.std)
        self.dataset = ViewDataset(self.images, self.transform, config.seed)
        self.workers = config.workers if config.workers is not None else default_training_workers(
            device_type=self.device.type, preloaded=self.images.cache is not None)
        if self.device.type == "cpu":
            torch.set_num_threads(compute_threads(self.workers))
        self.knn = None
        if config.val and self.process.is_main:
            self.knn = KNNMonitor(config.val, self.preprocessing.transform(), max_images=config.val_max_images,
                                  k=config.knn_k, temperature=config.knn_temperature)
        self.step = 0
        self.images_seen = 0
        self.elapsed_before = 0.0
        self.knn_accuracy: float | None = None
        self.eval_seconds = self.save_seconds = 0.0  # last k-NN evaluation, last checkpoint (re-plans count them)
        if self.resume:
            self.restore()
        else:
            if self.process.is_main:
                self.run_dir.path.mkdir(parents=True, exist_ok=True)
                self.run_dir.save_config(config)
                if initial is not None:
                    write_init_record(self.run_dir.path, initial)
            self.plan = self.make_plan()

    # -- planning ----------------------------------------------------------------------------------

    def make_plan(self) -> TrainingPlan:
        """The run's plan (``plan.py``): its epochs, or the steps a measured step leaves time for in its budget."""
        config = self.config
        eval_seconds = self.initial_knn() if config.val else 0.0  # every process joins (barrier inside)
        eval_seconds = float(distributed.broadcast_object(eval_seconds))
        self.eval_seconds = eval_seconds
        budget = self.run_budget()
        total = planned_steps(budget, None) if budget.budget_seconds is None else None
        step_seconds = None
        if budget.budget_seconds is not None:
            step_seconds = self.calibrate()
            val_every = self.val_every_steps()
            fit = steps_in_budget(budget.budget_seconds, used_seconds=self.clock() - self.start_time,
                                  step_seconds=step_seconds, eval_seconds=eval_seconds, val_every_steps=val_every)
            if fit < 1:
                self.log(f"warning: --max-minutes {config.max_minutes} leaves time for no full step "
                         f"(one takes ~{step_seconds + eval_seconds / val_every:.1f} s); running 1 step")
            total = int(distributed.broadcast_object(planned_steps(budget, fit)))
            self.log(f"budget {config.max_minutes:g} min: ~{step_seconds:.2f} s/step → {total} steps "
                     f"({total / self.steps_per_epoch:.1f} epochs of {len(self.images)} images)")
        return make_plan(budget, total, warmup_fraction=config.optimizer.warmup_fraction, step_seconds=step_seconds)

    def run_budget(self) -> Budget:
        """The run's length as asked: the epochs (resolved) and the minutes, for planning and re-planning."""
        return dataclasses.replace(self.budget, epochs=self.config.epochs)

    def replan(self, measured_step_seconds: float, *, overrun_only: bool = False) -> bool:
        """At a rate check (``plan.first_replan_step`` / ``next_replan_step``): re-size the plan so the run ends at
        its budget minus the reserve, from the loop's measured seconds per step (k-NN evaluations and
        checkpoints counted apart); returns whether the plan changed.

        ``overrun_only`` (the late checks, after the last rate check): re-plan only when the plan's end at
        this rate would be past the budget, so a slowdown near the end shortens the run (its schedules
        still end) instead of running into the hard stop.

        Rank 0 decides and broadcasts, so every process changes plan at the same step. Everything
        scheduled follows through the plan (``plan.replan``: schedules keep their progress).
        """
        plan = self.plan
        decision = None
        if self.process.is_main and (overrun_only or rate_drifted(plan, measured_step_seconds)):
            save_overhead = self.save_seconds / self.config.checkpoint_every_steps
            eval_seconds = self.eval_seconds if self.config.val else 0.0
            val_every = self.val_every_steps()
            per_step = measured_step_seconds + save_overhead + eval_seconds / val_every
            projected_end = (self.budget_used() + (plan.total_steps - self.step) * per_step + eval_seconds
                             + END_RESERVE_SECONDS)
            if not overrun_only or projected_end > (plan.budget_seconds or 0.0):
                total = replanned_steps(self.run_budget(), step=self.step, used_seconds=self.budget_used(),
                                        step_seconds=measured_step_seconds + save_overhead,
                                        eval_seconds=eval_seconds, val_every_steps=val_every)
                if total != plan.total_steps and (not overrun_only or total < plan.total_steps):
                    decision = (total, measured_step_seconds)
        decision = distributed.broadcast_object(decision)
        if decision is None:
            return False
        total, measured = decision
        self.plan = replan(plan, step=self.step, total_steps=int(total), step_seconds=float(measured),
                           warmup_fraction=self.config.optimizer.warmup_fraction)
        planned = f"{plan.step_seconds:.2f}" if plan.step_seconds else "?"
        self.log(f"re-planned at step {self.step}: measured {measured:.2f} s/step (planned {planned}) → "
                 f"{self.plan.total_steps} steps (was {plan.total_steps}; "
                 f"{self.plan.epochs:.1f} epochs in {self.config.max_minutes:g} min)")
        self.write_metrics({"step": self.step, "event": "replan", "measured_step_seconds": round(measured, 4),
                            "planned_step_seconds": plan.step_seconds, "previous_total_steps": plan.total_steps,
                            "total_steps": self.plan.total_steps, "replans": self.plan.replans,
                            "elapsed_seconds": round(self.elapsed(), 2)})
        return True

    def val_every_steps(self) -> int:
        return max(1, round(self.config.val_every_epochs * self.steps_per_epoch))

    def initial_knn(self) -> float:
        """k-NN accuracy of the random-init backbone (logged at step 0); returns the seconds it took."""
        began = self.clock()
        self.evaluate_knn()
        return self.clock() - began

    def calibrate(self) -> float:
        """Median seconds of a whole training step (data, forward, backward, optimizer step, EMA update).

        The model and the optimizer are restored afterwards, so calibration changes nothing.
        """
        snapshot = copy.deepcopy(self.method.state_dict())
        optimizer_snapshot = copy.deepcopy(self.optimizer.state_dict())
        provisional = TrainingPlan(total_steps=max(10 * self.steps_per_epoch, 1000),
                                   steps_per_epoch=self.steps_per_epoch, warmup_steps=0,
                                   dataset_size=len(self.images), global_batch_size=self.global_batch)
        sampler = StepBatchSampler(len(self.images), self.config.batch_size, steps_per_epoch=self.steps_per_epoch,
                                   start_step=0, total_steps=CALIBRATION_STEPS + 1, seed=self.config.seed,
                                   rank=self.process.rank, world_size=self.process.world_size)
        durations = []
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            loader = make_loader(self.dataset, sampler, workers=self.workers, pin_memory=self.device.type == "cuda",
                             seed=self.config.seed)
            began = self.clock()
            for i, (views, _) in enumerate(loader):
                ctx = StepContext(i, provisional)
                self.optimize(self.forward(views, ctx), ctx)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                now = self.clock()
                if i > 0:
                    durations.append(now - began)
                began = now
        self.method.load_state_dict(snapshot)
        self.optimizer.load_state_dict(optimizer_snapshot)
        self.optimizer.zero_grad(set_to_none=True)
        seconds = statistics.median(durations) if durations else 1.0
        return float(distributed.all_reduce_mean(torch.tensor(seconds, dtype=torch.float64)))

    # -- resume ------------------------------------------------------------------------------------

    def restore(self) -> None:
        payload = load_checkpoint(self.run_dir.path, map_location="cpu")
        if int(payload.get("world_size", 1)) != self.process.world_size:
            raise InvalidArgumentError(f"cannot resume {self.run_dir.path}: it was trained with "
                                       f"{payload.get('world_size', 1)} process(es), now {self.process.world_size}; "
                                       "resume with the same number of processes")
        self.plan = TrainingPlan.from_dict(payload["plan"])
        if self.plan.dataset_size != len(self.images):
            raise InvalidArgumentError(f"cannot resume {self.run_dir.path}: it was planned for {self.plan.dataset_size} "
                                       f"readable images, {self.config.data} now has {len(self.images)}; "
                                       "resume with the same data")
        self.method.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.step = int(payload["step"])
        self.images_seen = int(payload.get("images_seen", 0))
        self.elapsed_before = float(payload.get("elapsed_seconds", 0.0))
        self.knn_accuracy = payload.get("knn_accuracy")
        states = payload["rng"]
        restore_rng_state(states[self.process.rank] if isinstance(states, list) else states)
        if self.process.is_main:
            self.run_dir.truncate_metrics(self.step)
        self.log(f"resumed {self.run_dir.path} at step {self.step}/{self.plan.total_steps}")

    def save(self) -> None:
        states = distributed.all_gather_object(rng_state())
        if not self.process.is_main:
            distributed.barrier()
            return
        payload = {
            "step": self.step, "plan": self.plan.to_dict(), "world_size": self.process.world_size,
            "model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(), "rng": states,
            "config": to_dict(self.config), "images_seen": self.images_seen,
            "elapsed_seconds": self.elapsed(), "knn_accuracy": self.knn_accuracy,
        }
        began = self.clock()
        try:
            save_checkpoint(self.run_dir.path, self.step, payload, keep=self.config.keep_checkpoints)
        finally:
            distributed.barrier()
        self.save_seconds = self.clock() - began
        self.saved_step = self.step

    def elapsed(self) -> float:
        """Training seconds of the run: this session's loop and the earlier sessions' (from the checkpoint)."""
        return self.elapsed_before + self.clock() - self.session_start

    def budget_used(self) -> float:
        """Seconds of the budget spent: ``elapsed`` plus this session's setup (loading, building, calibrating),
        which the first plan also counted."""
        return self.elapsed_before + self.clock() - self.start_time

    def hard_stop_every(self) -> int:
        """Steps between checks of the hard stop: every logging interval, but at least every
        ``HARD_STOP_CHECK_SECONDS`` of planned steps (a few slow steps must not overshoot a short budget).
        From the plan, so every process checks at the same steps."""
        every = self.config.log_every_steps
        if self.plan.step_seconds:
            every = min(every, int(HARD_STOP_CHECK_SECONDS / self.plan.step_seconds))
        return max(1, every)

    # -- the loop ----------------------------------------------------------------------------------

    def forward(self, views: list[torch.Tensor], ctx: StepContext):  # -> MethodOutput
        views = [v.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format) for v in views]
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            return self.model(views, ctx)

    def train_step(self, views: list[torch.Tensor]) -> Any:
        ctx = StepContext(self.step, self.plan)
        optimizer_config = self.config.optimizer
        position = ctx.schedule_step  # the step itself, unless a --max-minutes run was re-planned
        lr = warmup_cosine(position, self.plan.total_steps, self.base_lr,
                           self.base_lr * optimizer_config.final_lr_ratio, self.plan.warmup_steps)
        weight_decay = cosine(position, self.plan.total_steps, optimizer_config.weight_decay,
                              optimizer_config.weight_decay_final)
        set_hyperparameters(self.optimizer, lr=lr, weight_decay=weight_decay)
        output = self.optimize(self.forward(views, ctx), ctx)
        self.current_lr, self.current_weight_decay = lr, weight_decay
        return output

    def optimize(self, output: Any, ctx: StepContext) -> Any:
        """Backward, the method's hooks, gradient clipping and the optimizer step (shared with calibration)."""
        self.optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        self.method.before_optimizer_step(ctx)
        clip = self.config.optimizer.clip_grad_norm
        if clip:
            torch.nn.utils.clip_grad_norm_(self.trainable, clip, foreach=True)
        self.optimizer.step()
        self.method.on_step_end(ctx)
        return output

    def stop_step(self) -> int:
        """The step this session ends at: the plan's end, or ``stop_after_steps`` when sooner."""
        total = self.plan.total_steps
        return total if self.config.stop_after_steps is None else min(total, self.config.stop_after_steps)

    def steps_bound(self) -> int:
        """The most steps this session could run: the plan's end, or for a budget in minutes (which may be
        re-planned longer) the asked epochs or ``stop_after_steps``. The batch of a step depends only on
        the seed and the step, so the sampler's length never changes what a step trains on."""
        if self.plan.budget_seconds is None:
            return self.stop_step()
        bounds = [b for b in (self.config.stop_after_steps, self.run_budget().epoch_steps) if b]
        return min(bounds) if bounds else sys.maxsize

    def loop(self) -> TrainResult:
        config, plan = self.config, self.plan
        self.session_start = self.clock()
        self.base_lr = config.optimizer.lr * self.global_batch / 256
        self.saved_step = self.step
        self.current_lr = self.current_weight_decay = 0.0
        stop_at = self.stop_step()
        hard_limit, hard_stop_every = plan.hard_stop_seconds, self.hard_stop_every()
        monitor = CollapseMonitor(grace_steps=collapse_grace(plan))
        val_every = self.val_every_steps()
        sampler = StepBatchSampler(len(self.images), config.batch_size, steps_per_epoch=plan.steps_per_epoch,
                                   start_step=self.step, total_steps=self.steps_bound(), seed=config.seed,
                                   rank=self.process.rank, world_size=self.process.world_size)
        # the loop's own pace, for re-planning a --max-minutes run: seconds of the steps since the last
        # look (k-NN evaluations and checkpoints apart), leaving out the session's first step
        check_at = first_replan_step(plan, self.step)
        first_step, paced_seconds, paced_steps = self.step + 1, 0.0, 0
        recent: collections.deque[float] = collections.deque(maxlen=OVERRUN_WINDOW_STEPS)  # for the late checks
        loader = make_loader(self.dataset, sampler, workers=self.workers, pin_memory=self.device.type == "cuda",
                             seed=self.config.seed)
        interval: dict[str, list[Any]] = {}
        interval_start, interval_steps = self.clock(), 0
        session_images, final_loss, stopped_by_budget = 0, float("nan"), False
        bad_seen: set[str] = set()
        show = progress_enabled(config.progress) and self.process.is_main
        bar = progress_bar(plan.total_steps, f"train {config.method} {config.backbone}", unit="step", enabled=show)
        bar.update(self.step)
        tick = self.clock()
        try:
            for views, bad in loader:
                for note in bad:
                    if note not in bad_seen:
                        bad_seen.add(note)
                        self.log(f"skipped unreadable image {note.replace(chr(9), ': ')} (replaced by the next one)")
                output = self.train_step(views)
                self.step += 1
                self.images_seen += self.global_batch
                session_images += self.global_batch
                interval_steps += 1
                bar.update(1)
                interval.setdefault("loss", []).append(output.loss.detach())
                if output.embeddings is not None and output.embeddings.shape[0] > 1:
                    z = torch.nn.functional.normalize(output.embeddings.float(), dim=1)
                    interval.setdefault("spread", []).append(z.std(dim=0).mean() * math.sqrt(z.shape[1]))
                for name, value in output.logs.items():
                    interval.setdefault(name, []).append(value.detach() if torch.is_tensor(value) else value)
                last = self.step >= stop_at
                if self.step % config.log_every_steps == 0 or last:
                    now = self.clock()
                    means = self.reduce_interval(interval)
                    images_per_second = interval_steps * self.global_batch / max(now - interval_start, 1e-9)
                    interval, interval_start, interval_steps = {}, now, 0
                    final_loss = means["loss"]
                    if not math.isfinite(final_loss):
                        raise TrainingDivergedError(
                            f"the loss became {final_loss} at step {self.step}; lower the learning rate "
                            f"(--set optimizer.lr=...; now {config.optimizer.lr:g} per 256 images) or raise "
                            "optimizer.warmup_fraction, then start a new run")
                    record = {"step": self.step, "epoch": round(self.step / plan.steps_per_epoch, 4),
                              "loss": final_loss, "lr": self.current_lr, "weight_decay": self.current_weight_decay,
                              "images_per_second": round(images_per_second, 2), **{k: v for k, v in means.items()
                                                                                 if k != "loss"},
                              "elapsed_seconds": round(self.elapsed(), 2)}
                    self.write_metrics(record)
                    bar.set_postfix(loss=f"{final_loss:.4f}", img_s=f"{images_per_second:.0f}")
                    monitor.observe(**means)
                    for warning in monitor.check(self.step):
                        self.warnings.append(warning["message"])
                        self.write_metrics(warning)
                        self.log(f"warning: {warning['message']}. Hint: {warning['hint']}")
                if self.step > first_step:
                    recent.append(self.clock() - tick)
                    paced_seconds, paced_steps = paced_seconds + recent[-1], paced_steps + 1
                if config.val and self.step % val_every == 0 and not last:
                    self.evaluate_knn()
                if self.step % config.checkpoint_every_steps == 0 and not last:
                    self.save()
                replanned = False
                if check_at is not None and self.step >= check_at and not last:
                    replanned = self.replan(paced_seconds / max(paced_steps, 1))
                    check_at = next_replan_step(self.plan, self.step)
                    paced_seconds, paced_steps = 0.0, 0
                elif (check_at is None and hard_limit is not None and not last and self.step % hard_stop_every == 0
                      and len(recent) == recent.maxlen):
                    # past the last rate check: a lasting slowdown (the median of the last steps) that would
                    # carry the run past its budget shortens it, so its schedules still end
                    replanned = self.replan(statistics.median(recent), overrun_only=True)
                if replanned:
                    plan, stop_at, hard_stop_every = self.plan, self.stop_step(), self.hard_stop_every()
                    monitor.grace_steps = collapse_grace(plan)
                    bar.total = plan.total_steps
                    bar.refresh()
                if hard_limit is not None and not last and self.step % hard_stop_every == 0:
                    # rank 0 decides, so every process stops at the same step
                    if distributed.broadcast_object(self.budget_used() > hard_limit):
                        stopped_by_budget = True
                        self.log(f"stopping at step {self.step}/{plan.total_steps}: the {config.max_minutes:g}-minute"
                                 " budget is spent (the machine ran slower than measured)")
                        break
                if self.step >= stop_at:  # the sampler may hold more steps than the plan (re-planning)
                    break
                tick = self.clock()
        except KeyboardInterrupt:
            if self.step > self.saved_step:
                bar.close()
                self.log(f"interrupted: saving a checkpoint at step {self.step} (continue with --resume)")
                self.save()
            raise
        finally:
            bar.close()
        if config.val:
            self.evaluate_knn()
        if self.step > self.saved_step or self.step == 0:
            self.save()
        finished = self.step >= plan.total_steps
        exported = False
        if finished or stopped_by_budget:
            exported = self.export(finished=finished)
        seconds = self.clock() - self.start_time
        session_seconds = self.clock() - self.session_start
        result = TrainResult(run_dir=self.run_dir.path, method=config.method, backbone=config.backbone,
                             steps=self.step, planned_steps=plan.total_steps,
                             epochs=round(self.step / plan.steps_per_epoch, 3), images_seen=self.images_seen,
                             final_loss=final_loss, seconds=round(seconds, 2),
                             images_per_second=round(session_images / max(session_seconds, 1e-9), 2),
                             knn_accuracy=self.knn_accuracy, warnings=tuple(self.warnings),
                             skipped_images=len(self.images.skipped) + len(bad_seen), encoder_exported=exported,
                             finished=finished, replans=plan.replans)
        self.write_metrics({"step": self.step, "event": "end", **{k: v for k, v in result.to_dict().items()
                                                                  if k not in ("run_dir", "warnings")}})
        return result

    def reduce_interval(self, interval: dict[str, list[Any]]) -> dict[str, float]:
        """Means over the logging interval and over processes (one device sync per interval)."""
        names = sorted(interval)
        values = torch.stack([torch.as_tensor(sum(float(v) if not torch.is_tensor(v) else v.float().cpu()
                                                  for v in interval[name]) / len(interval[name]),
                                              dtype=torch.float64) for name in names])
        values = distributed.all_reduce_mean(values)
        return {name: float(v) for name, v in zip(names, values.tolist())}

    def write_metrics(self, record: dict[str, Any]) -> None:
        if self.process.is_main:
            self.run_dir.append_metrics(record)

    def evaluate_knn(self) -> None:
        if self.knn is not None:
            began = self.clock()
            backbone = self.method.export_backbone()
            self.knn_accuracy = self.knn.accuracy(backbone, self.device, channels_last=bool(self.config.channels_last),
                                                  autocast_dtype=self.autocast_dtype)
            self.write_metrics({"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
                                "knn_accuracy": self.knn_accuracy})
            self.log(f"step {self.step}: k-NN accuracy on --val {self.knn_accuracy:.4f} "
                     f"(leave-one-out, k={self.config.knn_k}, {len(self.knn)} images)")
            self.eval_seconds = self.clock() - began
        distributed.barrier()

    def export(self, *, finished: bool) -> bool:
        """Write encoder.safetensors + encoder.json (rank 0) from the method's export backbone."""
        if self.process.is_main:
            backbone = copy.deepcopy(self.method.export_backbone()).float().cpu()
            backbone = backbone.to(memory_format=torch.contiguous_format)
            metadata = {"method": self.config.method, "steps": self.step, "planned_steps": self.plan.total_steps,
                        "epochs": round(self.step / self.plan.steps_per_epoch, 3), "images_seen": self.images_seen,
                        "finished": finished, "image_size": self.config.image_size, "data": self.config.data,
                        "knn_accuracy": self.knn_accuracy}
            if self.config.init:
                metadata["init"] = {"spec": self.config.init, "pretrained": self.config.pretrained}
            save_encoder(self.run_dir.path, backbone, backbone=self.config.backbone,
                         model_kwargs=dict(self.config.model_kwargs), preprocessing=self.preprocessing,
                         metadata=metadata)
        distributed.barrier()
        return True
