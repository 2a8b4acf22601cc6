"""Synthetic benchmark photos: the sample JPEGs upscaled to a fixed size, each one distinct."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SIZES = {"1024x768": (1024, 768), "4032x3024": (4032, 3024)}


def make_set(directory: Path, size: str, count: int, seed: int = 0) -> list[str]:
    """`count` JPEGs of `size` under directory/size; returns names relative to `directory`."""
    width, height = SIZES[size]
    out = directory / size
    out.mkdir(parents=True, exist_ok=True)
    bases = []
    for path in sorted(SAMPLES.glob("*.jpg")):
        with Image.open(path) as source:
            bases.append(source.convert("RGB").resize((width, height), Image.Resampling.BICUBIC))
    rng = random.Random(seed)
    names = []
    for i in range(count):
        name = f"{size}/img{i:04d}.jpg"
        if not (directory / name).exists():
            image = bases[i % len(bases)].copy()
            # A random patch makes every file's bytes distinct, so no cache can serve repeats.
            patch = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            x, y = rng.randrange(width - 32), rng.randrange(height - 32)
            image.paste(patch, (x, y, x + 32, y + 32))
            image.save(directory / name, quality=90)
        names.append(name)
    return names
