"""Dataset readers for evaluation: (path, label) tables, ImageFolder labels, CIFAR-10/100 python batches."""
from __future__ import annotations

import csv
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputNotFoundError, InvalidArgumentError, OutputExistsError
from ..files import prepare_output_dir
from ..progress import track
from .pickles import load_pickle

CIFAR_SPLITS = ("train", "test")


def read_label_table(path: str | os.PathLike[str], *, label_column: str | None = None) -> dict[str, str]:
    """Read a CSV or Parquet table of (path, label) into a dict.

    The label column is ``label_column`` if given, else ``label``, else ``group`` (instance groups).
    Rows with an empty label are kept out (they count as unlabelled).

    Raises:
        InputNotFoundError: the file does not exist.
        InvalidArgumentError: not .csv/.parquet, no ``path`` or label column, or a path given two labels.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"labels file {path} does not exist; pass a .csv or .parquet with path,label columns")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            rows = list(reader)
        columns = {name: [row.get(name) for row in rows] for name in header}
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        columns = {name: [None if v is None else str(v) for v in table.column(name).to_pylist()]
                   for name in table.column_names}
    else:
        raise InvalidArgumentError(f"labels file {path} has suffix {suffix!r}; expected .csv or .parquet with "
                                   "path,label columns")
    candidates = [label_column] if label_column else ["label", "group"]
    chosen = next((c for c in candidates if c in columns), None)
    if "path" not in columns or chosen is None:
        raise InvalidArgumentError(f"labels file {path} has columns {sorted(columns)}; expected 'path' and "
                                   f"{' or '.join(repr(c) for c in candidates)}")
    labels: dict[str, str] = {}
    for file_path, label in zip(columns["path"], columns[chosen]):
        if not file_path or label is None or label == "":
            continue
        if labels.get(file_path, label) != label:
            raise InvalidArgumentError(f"labels file {path} gives {file_path!r} two labels ({labels[file_path]!r} and "
                                       f"{label!r}); give each path one label")
        labels[file_path] = label
    return labels


def image_folder_labels(root: str | os.PathLike[str]) -> dict[str, str]:
    """(relative path -> class) of an ImageFolder: the class is the first folder under ``root``.

    Raises:
        InputNotFoundError: ``root`` does not exist or holds no images.
    """
    from ..sources import list_images

    source = list_images(root)
    return {record.path: record.label for record in source.records if record.label is not None}


@dataclass(frozen=True)
class ArrayDataset:
    """Images held as arrays (CIFAR python batches).

    Attributes:
        images: (n, h, w, 3) uint8 RGB.
        labels: (n,) int64 class indices into ``classes``.
        classes: class names.
        split: "train" or "test".
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    split: str

    def __len__(self) -> int:
        return len(self.labels)


def _cifar_layout(directory: Path) -> tuple[dict[str, list[str]], str, str, str]:
    """Files of each split, the meta file, its class-name key and the batches' label key."""
    if (directory / "batches.meta").is_file():
        train = sorted(p.name for p in directory.glob("data_batch_*"))
        return {"train": train, "test": ["test_batch"]}, "batches.meta", "label_names", "labels"
    if (directory / "meta").is_file() or (directory / "train").is_file():
        return {"train": ["train"], "test": ["test"]}, "meta", "fine_label_names", "fine_labels"
    if any(directory.glob("data_batch_*")):
        return ({"train": sorted(p.name for p in directory.glob("data_batch_*")), "test": ["test_batch"]}, "",
                "label_names", "labels")
    raise InputNotFoundError(f"{directory} is not a CIFAR python directory: expected data_batch_1..5 + test_batch "
                             "(+ batches.meta) for CIFAR-10, or train + test + meta for CIFAR-100")


def read_cifar(directory: str | os.PathLike[str], split: str = "train") -> ArrayDataset:
    """Read a local CIFAR-10 (``cifar-10-batches-py``) or CIFAR-100 (``cifar-100-python``) split.

    The batch files are pickles; they are read with a restricted unpickler that admits only
    plain containers and numpy arrays. Nothing is downloaded. Without a meta file, classes are
    named by their index.

    Args:
        directory: the folder holding the batch files.
        split: "train" or "test".

    Returns:
        An ArrayDataset with (n, 32, 32, 3) uint8 images.

    Raises:
        InputNotFoundError: the folder or a batch file is missing.
        InvalidArgumentError: an unknown split, or a batch without data/labels of matching length.
    """
    directory = Path(directory)
    if split not in CIFAR_SPLITS:
        raise InvalidArgumentError(f"unknown CIFAR split {split!r}; choose train or test")
    if not directory.is_dir():
        raise InputNotFoundError(f"CIFAR directory {directory} does not exist; pass the extracted "
                                 "cifar-10-batches-py or cifar-100-python folder")
    files, meta_name, names_key, labels_key = _cifar_layout(directory)
    if not files[split]:
        raise InputNotFoundError(f"{directory} has no {split} batch files")
    images, labels = [], []
    for name in files[split]:
        batch_path = directory / name
        batch = load_pickle(batch_path)
        if not isinstance(batch, dict) or "data" not in batch or labels_key not in batch:
            keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
            raise InvalidArgumentError(f"CIFAR batch {batch_path} has keys {keys}; expected 'data' and {labels_key!r}")
        data = np.asarray(batch["data"], dtype=np.uint8)
        batch_labels = np.asarray(batch[labels_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch_labels):
            raise InvalidArgumentError(f"CIFAR batch {batch_path}: data {data.shape} and {len(batch_labels)} labels; "
                                       "expected (n, 3072) uint8 and n labels")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    all_labels = np.concatenate(labels)
    n_classes = int(all_labels.max()) + 1 if len(all_labels) else 0
    classes = tuple(str(i) for i in range(n_classes))
    if meta_name and (directory / meta_name).is_file():
        meta = load_pickle(directory / meta_name)
        names = meta.get(names_key) if isinstance(meta, dict) else None
        if names:
            classes = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
    if n_classes > len(classes):
        raise InvalidArgumentError(f"CIFAR labels in {directory} go up to {n_classes - 1} but the meta file names "
                                   f"{len(classes)} classes")
    return ArrayDataset(images=np.ascontiguousarray(np.concatenate(images)), labels=all_labels, classes=classes,
                        split=split)


def write_image_folder(dataset: ArrayDataset, out: str | os.PathLike[str], *, progress: bool | None = None) -> Path:
    """Write an ArrayDataset as PNG files ``out/<class>/<split>_<nnnnn>.png`` (an ImageFolder).

    Also writes ``out/labels.csv`` (path,label). Embedding ``out`` with ``sslsearch embed`` gives a
    store whose ``label`` column is the class.

    Raises:
        OutputExistsError: ``out`` already holds files.
    """
    from PIL import Image

    target = prepare_output_dir(out)
    if any(target.iterdir()):
        raise OutputExistsError(f"{target} is not empty; choose a new folder for the images")
    # Written under a temporary name and renamed at the end: `target` never holds half a dataset.
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        class_dirs = [name.replace("/", "_") or "_" for name in dataset.classes]
        for name in set(class_dirs):
            (staging / name).mkdir(exist_ok=True)
        rows = ["path,label"]
        for i in track(range(len(dataset)), f"write {dataset.split} images", total=len(dataset), unit="img",
                       enabled=progress):
            folder = class_dirs[int(dataset.labels[i])]
            relative = f"{folder}/{dataset.split}_{i:05d}.png"
            Image.fromarray(dataset.images[i]).save(staging / relative, format="PNG")
            rows.append(f"{relative},{folder}")
        (staging / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        target.rmdir()
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def export_cifar(directory: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 progress: bool | None = None) -> dict[str, Path]:
    """Write both CIFAR splits as ImageFolders ``out/train`` and ``out/test`` for ``sslsearch embed``.

    Returns:
        {"train": path, "test": path}.

    Raises:
        OutputExistsError: ``out/train`` or ``out/test`` already exists.
    """
    out = Path(out)
    for split in CIFAR_SPLITS:
        if (out / split).exists():
            raise OutputExistsError(f"{out / split} already exists; choose a new --out")
    return {split: write_image_folder(read_cifar(directory, split), out / split, progress=progress)
            for split in CIFAR_SPLITS}
