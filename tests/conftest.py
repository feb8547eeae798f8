"""Shared test fixtures (generated image folders) and the --runslow / gpu markers."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

# ----------------------------------------------------------------------------- markers


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow test: run with --runslow")
    gpu_available: bool | None = None
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords:
            if gpu_available is None:
                import torch

                gpu_available = torch.cuda.is_available()
            if not gpu_available:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


# ----------------------------------------------------------------------------- image folders


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory: pytest.TempPathFactory):
    """A generated ImageFolder (sslsearch.sample_data.SampleDataset): 120 images at 32 px, 10 classes,
    6 planted near-duplicate pairs (``.near_duplicates``, also in ``near_duplicates.csv``).

    Session-scoped and shared: do not write into it (copy it with shutil.copytree first).
    """
    from sslsearch.sample_data import make_sample_dataset

    return make_sample_dataset(tmp_path_factory.mktemp("sample") / "images", n_images=120, image_size=32, seed=0)


@pytest.fixture(scope="session")
def sample_dir(sample_dataset) -> Path:
    """The root folder of ``sample_dataset`` (``<class>/img_NNNNN.png|jpg`` + near_duplicates.csv)."""
    return sample_dataset.root


# Files of ``images_with_bad_files`` that cannot be decoded, with the BadImageError reason of each.
BAD_FILE_REASONS: dict[str, str] = {
    "circle/truncated.jpg": "truncated",
    "square/empty.png": "empty",
    "square/notes.png": "not_an_image",
}


@pytest.fixture(scope="session")
def bad_file_reasons() -> dict[str, str]:
    """Relative path -> expected ``BadImageError.reason`` for the bad files of ``images_with_bad_files``."""
    return dict(BAD_FILE_REASONS)


@pytest.fixture
def images_with_bad_files(tmp_path: Path) -> Path:
    """A small ImageFolder: 6 good 32x32 images (3 in ``circle/``, 3 in ``square/``, PNG and JPEG)
    plus the three bad files of ``bad_file_reasons`` (a truncated JPEG, a zero-byte PNG, a text
    file named .png). A fresh copy per test, so tests may modify it.
    """
    root = tmp_path / "with_bad_files"
    rng = np.random.default_rng(0)
    for shape in ("circle", "square"):
        (root / shape).mkdir(parents=True)
        for i in range(3):
            image = Image.new("RGB", (32, 32), tuple(int(v) for v in rng.integers(150, 256, 3)))
            draw = ImageDraw.Draw(image)
            box = (6 + i, 6 + i, 25 - i, 25 - i)
            color = tuple(int(v) for v in rng.integers(0, 100, 3))
            (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=color)
            image.save(root / shape / f"{shape}_{i}.{'jpg' if i == 2 else 'png'}", quality=90)
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(jpeg, "JPEG", quality=90)
    (root / "circle" / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / "square" / "empty.png").write_bytes(b"")
    (root / "square" / "notes.png").write_text("not an image, just a text file with an image name\n")
    return root
