"""`sslsearch sample-data`: write the offline labelled sample image folder."""
from __future__ import annotations

from pathlib import Path

import typer

from ..sample_data import make_sample_dataset
from .common import JsonOption, print_json


def sample_data_command(
    out: Path = typer.Argument(..., metavar="OUT", help="Folder to create (absent or empty unless --overwrite).", show_default=False),
    n_images: int = typer.Option(1000, "--n-images", help="Images to write, near-duplicate copies included."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed writes the same bytes."),
    image_size: int = typer.Option(64, "--image-size", help="Side of the square images in pixels."),
    duplicate_fraction: float = typer.Option(0.05, "--duplicate-fraction",
                                             help="Fraction of the images that are near-duplicate copies (0..0.5)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it already holds files."),
    as_json: bool = JsonOption,
) -> None:
    """Generate a labelled sample image folder with planted near-duplicates, offline and seeded.

    Writes `OUT/<class>/img_NNNNN.png|jpg` for 10 shape classes (arrow, checker, circle, crescent,
    cross, ring, square, star, stripes, triangle) on varied backgrounds with random colours,
    positions, sizes, rotations and clutter, plus `OUT/near_duplicates.csv` (columns
    original, copy, edits) listing the planted near-duplicate pairs. The same seed writes the
    same bytes.

    Example: `sslsearch sample-data sample-data --n-images 1000`
    """
    dataset = make_sample_dataset(out, n_images=n_images, seed=seed, image_size=image_size,
                                  duplicate_fraction=duplicate_fraction, overwrite=overwrite)
    if as_json:
        print_json(dataset.to_dict())
        return
    typer.echo(f"wrote {dataset.n_images} images ({dataset.image_size} px) in {len(dataset.classes)} classes "
               f"to {dataset.root}")
    typer.echo(f"planted {len(dataset.near_duplicates)} near-duplicate pairs, listed in "
               f"{dataset.root / 'near_duplicates.csv'}")


def register(app: typer.Typer, index_app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("sample-data")(sample_data_command)
