"""The one sample-grid layout: a PNG of uint8 NHWC images, one row per class with its name, or a square grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import atomic_write

__all__ = ["save_grid"]


def save_grid(images: np.ndarray, path: Path, max_images: int = 64, labels: np.ndarray | None = None,
              class_names: list[str] | None = None, min_tile: int = 64) -> None:
    """A PNG grid of uint8 NHWC images, tiles upscaled (nearest neighbour, an integer factor) to at least
    ``min_tile`` pixels. With ``labels``: one row per class present (sorted), headed by its name (``class_names[c]``,
    else ``class c``), holding that class's first samples; without: a square grid of the first ``max_images``."""
    from PIL import Image, ImageDraw

    if len(images) == 0:
        raise ValueError("images: nothing to draw")
    h, w, c = images.shape[1:]
    factor = max(1, -(-min_tile // max(h, w)))
    if labels is not None:
        classes = sorted(int(k) for k in np.unique(labels))
        rows_of = {k: np.flatnonzero(labels == k) for k in classes}
        cols = max(1, min(max(len(v) for v in rows_of.values()), max(1, max_images // len(classes)), 16))
        cells = [[int(i) for i in rows_of[k][:cols]] for k in classes]
        names = [class_names[k] if class_names is not None and k < len(class_names) else f"class {k}"
                 for k in classes]
    else:
        n = min(len(images), max_images)
        cols = int(np.ceil(np.sqrt(n)))
        cells = [list(range(r, min(r + cols, n))) for r in range(0, n, cols)]
        names = None
    th, tw, gap = h * factor, w * factor, 2
    label_width = 0 if names is None else 8 + 7 * max(len(name) for name in names)
    grid = Image.new("RGB", (label_width + gap + cols * (tw + gap), gap + len(cells) * (th + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(cells):
        top = gap + r * (th + gap)
        if names is not None:
            draw.text((4, top + th // 2 - 5), names[r], fill=(0, 0, 0))
        for q, index in enumerate(row):
            tile = Image.fromarray(images[index].squeeze(-1) if c == 1 else images[index]).convert("RGB")
            grid.paste(tile.resize((tw, th), Image.NEAREST), (label_width + gap + q * (tw + gap), top))
    atomic_write(Path(path), lambda tmp: grid.save(tmp, format="PNG"))
