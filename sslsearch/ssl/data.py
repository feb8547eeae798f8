"""Training data: decoded images (cached in memory when they fit), deterministic per-sample views, step batches."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..errors import BadImageError, InputNotFoundError
from ..progress import track
from ..sources import ImageSource, SkippedFile, count_reasons, load_image

PROBE_IMAGES = 64  # without a full scan, this many images are decoded up front to catch an all-corrupt source
MASK_64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (splitmix64 over the values)."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (int(value) & MASK_64)) & MASK_64
        state = (state + 0x9E3779B97F4A7C15) & MASK_64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK_64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK_64
        state = z ^ (z >> 31)
    return state & ((1 << 63) - 1)


@dataclass
class TrainingImages:
    """The decodable images of a source, optionally all decoded into memory.

    Attributes:
        source: the listed images.
        indices: source record ids usable for training (bad files removed when known).
        skipped: files left out, with reasons.
        cache: decoded images by position in ``indices`` when preloaded, else None.
    """

    source: ImageSource
    indices: list[int]
    skipped: list[SkippedFile] = field(default_factory=list)
    cache: list[Image.Image] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, position: int) -> Image.Image:
        """Decoded RGB image at ``position`` (raises BadImageError for a file that went bad)."""
        if self.cache is not None:
            return self.cache[position]
        record = self.source.records[self.indices[position]]
        return load_image(self.source.abs_path(record)).image

    def skipped_summary(self) -> str:
        reasons = ", ".join(f"{n} {reason}" for reason, n in count_reasons(self.skipped).items())
        return f"skipped {len(self.skipped)} unreadable image(s) ({reasons})" if self.skipped else ""


def estimate_decoded_bytes(source: ImageSource, sample: int = 200) -> int:
    """Bytes the decoded RGB images would take, from the headers of up to ``sample`` files."""
    records = source.records
    step = max(1, len(records) // sample)
    sizes = []
    for record in records[::step][:sample]:
        try:
            with Image.open(source.abs_path(record)) as image:
                sizes.append(image.width * image.height * 3)
        except Exception:  # noqa: BLE001 - unreadable headers are counted when decoding
            continue
    if not sizes:
        return 0
    return int(np.mean(sizes) * len(records))


def load_training_images(source: ImageSource, *, strict: bool, preload_megabytes: int,
                         progress: bool | None = None) -> TrainingImages:
    """Decide whether to preload, decode what is needed up front, and apply the bad-file policy.

    Preloading (all images fit in ``preload_megabytes``) or ``strict`` decodes every file now;
    otherwise the first ``PROBE_IMAGES`` are decoded to catch a source with no readable image.

    Raises:
        InputNotFoundError: no image can be decoded.
        BadImageError: ``strict`` and a file cannot be decoded.
    """
    preload = estimate_decoded_bytes(source) <= preload_megabytes * 2**20
    full_scan = preload or strict
    records = source.records if full_scan else source.records[:PROBE_IMAGES]
    good: list[int] = []
    cache: list[Image.Image] = []
    skipped: list[SkippedFile] = []
    for record in track(records, "decode images", total=len(records), unit="img", enabled=progress):
        try:
            decoded = load_image(source.abs_path(record))
        except BadImageError as error:
            if strict:
                raise BadImageError(f"{error} (--strict: fix or remove the file, or drop --strict to skip it)",
                                    error.reason) from None
            skipped.append(SkippedFile.from_error(record.path, error))
            continue
        good.append(record.id)
        if preload:
            decoded.image.load()
            cache.append(decoded.image)
    if not good:
        scope = f"all {len(records)}" if full_scan else f"the first {len(records)}"
        example = f" (e.g. {skipped[0].path}: {skipped[0].reason})" if skipped else ""
        raise InputNotFoundError(f"{scope} images of {source.root} are unreadable{example}; "
                                 "nothing to train on — check the folder holds real image files")
    if full_scan:
        return TrainingImages(source, good, skipped, cache if preload else None)
    bad_ids = {r.id for r in records} - set(good)
    return TrainingImages(source, [r.id for r in source.records if r.id not in bad_ids], skipped, None)


class ViewDataset(torch.utils.data.Dataset):
    """Maps a key (epoch, position) to the views of one image, with augmentations seeded by the key.

    The seed depends only on (seed, epoch, position), so views are the same whatever the worker
    count, the process count or a resume. A file that fails to decode is replaced by the next
    readable one (reported in the sample), so batches keep their size.
    """

    def __init__(self, images: TrainingImages, transform: Callable[[Image.Image], list[torch.Tensor]],
                 seed: int) -> None:
        self.images = images
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[list[torch.Tensor], list[str]]:
        epoch, position = key
        bad: list[str] = []
        n = len(self.images)
        for attempt in range(n):
            candidate = (position + attempt) % n
            try:
                image = self.images.image(candidate)
                break
            except BadImageError as error:
                bad.append(f"{self.images.source.records[self.images.indices[candidate]].path}\t{error.reason}")
        else:
            raise InputNotFoundError("every training image became unreadable during training")
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also queue seeds for every lazy device
            # backend (formatting a stack trace each time, ~2 ms per image)
            torch.default_generator.manual_seed(mix_seed(self.seed, epoch, position))
            views = self.transform(image)
        return views, bad


def collate_views(samples: list[tuple[list[torch.Tensor], list[str]]]) -> tuple[list[torch.Tensor], list[str]]:
    """Samples → (one (B, 3, h, w) tensor per view, bad-file notes)."""
    views = [torch.stack([sample[0][v] for sample in samples]) for v in range(len(samples[0][0]))]
    return views, [note for sample in samples for note in sample[1]]


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields this process's keys for steps ``start_step`` … ``total_steps - 1``.

    Epoch e visits a permutation of the data seeded by (seed, e); step s of the epoch takes the
    slice [s·B·W, (s+1)·B·W) of it and process r the r-th B of that slice. The last partial
    global batch of an epoch is dropped. A resume at step k yields exactly what an
    uninterrupted run yields from step k on.
    """

    def __init__(self, dataset_size: int, batch_size: int, *, steps_per_epoch: int, start_step: int,
                 total_steps: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.dataset_size, self.batch_size = dataset_size, batch_size
        self.steps_per_epoch, self.start_step, self.total_steps = steps_per_epoch, start_step, total_steps
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(mix_seed(self.seed, epoch, 0x5EED)).permutation(self.dataset_size)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        global_batch = self.batch_size * self.world_size
        epoch, order = -1, None
        for step in range(self.start_step, self.total_steps):
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                order = self.permutation(epoch)
            begin = (step % self.steps_per_epoch) * global_batch + self.rank * self.batch_size
            yield [(epoch, int(i)) for i in order[begin:begin + self.batch_size]]


def make_loader(dataset: ViewDataset, sampler: StepBatchSampler, *, workers: int, pin_memory: bool,
                seed: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over ``sampler``'s step batches; one iterator spans all epochs (no worker restarts).

    It has its own generator, so starting it does not draw from (and shift) torch's global RNG,
    which the methods use and checkpoints restore.
    """
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_views, pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None, persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
    )
