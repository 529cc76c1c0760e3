"""Synthetic image folders with class structure, for benchmarks of the image-folder source.

Every class has a look of its own: a grating at a class-specific orientation and frequency,
a class-specific pair of colours, and a class-specific layout of soft blobs. Every image
varies it: the grating's phase, frequency and a small tilt, where the blobs sit and how big
they are, brightness, contrast and pixel noise. So a self-supervised encoder has something
to learn (and a linear probe something to find), and no two images are alike.

Files are ``root/<class>/<i:07d>.<ext>`` with image ``i`` in class ``i % classes``. Image
``i`` depends on (seed, i) alone, so ``make_folder(root, 100)`` followed by
``make_folder(root, 10, start=100)`` gives the same 110 files as ``make_folder(root, 110)``,
and the later images sort after the earlier ones in every class folder (new files, as a
growing data set gets them).

    .venv/bin/python benchmarks/synthetic.py /tmp/shapes --n 10000 --size 32 --fmt png
"""

from __future__ import annotations

import argparse
import colorsys
import functools
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

EXTENSIONS = {"png": "png", "jpg": "jpg", "jpeg": "jpg"}  # --fmt -> file extension
SAVE_OPTIONS = {"png": {}, "jpg": {"quality": 90}}
PARALLEL_FROM = 2000  # fewer images are written in-process: starting workers costs more
CHUNK = 500  # images per worker task
NOISE = 0.04  # pixel noise (std, on the [0, 1] scale)


def class_name(c: int) -> str:
    return f"class_{c:02d}"


def image_path(root: Path, i: int, classes: int, ext: str) -> Path:
    return Path(root) / class_name(i % classes) / f"{i:07d}.{ext}"


def _rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float32)


@dataclass(frozen=True)
class ClassStyle:
    """What all images of one class share."""

    angle: float  # grating orientation (radians)
    frequency: float  # grating cycles across the image
    light: np.ndarray  # the grating's two colours, RGB in [0, 1]
    dark: np.ndarray
    blob_centres: np.ndarray  # (k, 2) x, y in [0, 1]
    blob_radius: float
    blob_colour: np.ndarray


def class_style(c: int, classes: int, seed: int) -> ClassStyle:
    rng = np.random.default_rng((seed, 0, c))
    hue = c / classes
    return ClassStyle(
        angle=np.pi * c / classes,
        frequency=1.5 + 1.25 * (c % 3),
        light=_rgb(hue, 0.75, 0.95),
        dark=_rgb(hue + 0.45, 0.6, 0.25),
        blob_centres=rng.uniform(0.2, 0.8, size=(1 + c % 3, 2)).astype(np.float32),
        blob_radius=float(rng.uniform(0.08, 0.16)),
        blob_colour=_rgb(hue + 0.2, 0.9, 1.0 if c % 2 else 0.1),
    )


@functools.cache
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres (y, x) on [0, 1), each (size, size)."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(axis, axis, indexing="ij")


def render(style: ClassStyle, size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 (size, size, 3) image of the class ``style`` describes."""
    yy, xx = _grid(size)
    angle = style.angle + rng.normal(0.0, 0.1)
    frequency = style.frequency * rng.uniform(0.85, 1.15)
    phase = rng.uniform(0.0, 2 * np.pi)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * frequency * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    image = wave[..., None] * style.light + (1.0 - wave[..., None]) * style.dark
    shift = rng.uniform(-0.15, 0.15, size=2).astype(np.float32)
    radius = style.blob_radius * rng.uniform(0.8, 1.25)
    for cx, cy in style.blob_centres + shift:
        mask = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius * radius))[..., None]
        image = image * (1.0 - mask) + mask * style.blob_colour
    image = (image - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.1, 0.1)
    image += NOISE * rng.standard_normal(image.shape, dtype=np.float32)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _write_range(root: str, first: int, stop: int, size: int, classes: int, ext: str, seed: int) -> int:
    styles = [class_style(c, classes, seed) for c in range(classes)]
    options = SAVE_OPTIONS[ext]
    for i in range(first, stop):
        pixels = render(styles[i % classes], size, np.random.default_rng((seed, 1, i)))
        Image.fromarray(pixels, "RGB").save(image_path(Path(root), i, classes, ext), **options)
    return stop - first


def make_folder(root: Path, n: int, size: int, classes: int = 10, fmt: str = "png", seed: int = 0,
                start: int = 0, processes: int = 2) -> list[Path]:
    """Write images ``start .. start + n - 1`` (RGB, ``size`` px square) into class folders
    under ``root``; returns their paths in index order. ``fmt``: png, jpg or jpeg."""
    if fmt.lower() not in EXTENSIONS:
        raise ValueError(f"fmt must be one of {', '.join(EXTENSIONS)}, not {fmt!r}")
    if n < 0 or start < 0 or classes < 1 or size < 1:
        raise ValueError("n and start must be >= 0, classes and size >= 1")
    ext = EXTENSIONS[fmt.lower()]
    root = Path(root)
    indices = range(start, start + n)
    for c in sorted({i % classes for i in indices[:classes]}):
        (root / class_name(c)).mkdir(parents=True, exist_ok=True)
    tasks = [(str(root), first, min(first + CHUNK, start + n), size, classes, ext, seed)
             for first in range(start, start + n, CHUNK)]
    if processes <= 1 or n < PARALLEL_FROM:
        for task in tasks:
            _write_range(*task)
    else:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            pool.starmap(_write_range, tasks, chunksize=1)
    return [image_path(root, i, classes, ext) for i in indices]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder to write the class folders into")
    parser.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    parser.add_argument("--size", type=int, default=32, help="side in pixels (default 32)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--fmt", default="png", choices=sorted(EXTENSIONS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="index of the first image (to add to a folder)")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    paths = make_folder(args.root, args.n, args.size, args.classes, args.fmt, args.seed, args.start, args.processes)
    seconds = time.perf_counter() - started
    print(f"wrote {len(paths)} {args.size} px {args.fmt} images in {min(args.classes, args.n)} class folders under "
          f"{args.root} in {seconds:.1f}s ({len(paths) / max(seconds, 1e-9):.0f} img/s)")


if __name__ == "__main__":
    main()
