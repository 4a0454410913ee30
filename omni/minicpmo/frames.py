"""Video frames for the model: PIL images, with the high-refresh grid.

The model takes one image per unit at 448 px (64 tokens).  In high-refresh mode the unit's
other frames are tiled into a second image, so the model sees motion within the second at the
cost of one more image.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from omni.api import MAX_FRAME_SIDE, Frame


def _image(rgb: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB")


def grid(frames: list[Frame], side: int = MAX_FRAME_SIDE) -> Any:
    """Tile ``frames`` (in time order) into one image whose long side is ``side``."""
    from PIL import Image

    columns = math.ceil(math.sqrt(len(frames)))
    rows = math.ceil(len(frames) / columns)
    height, width = frames[0].rgb.shape[:2]
    scale = min(side / (columns * width), side / (rows * height))
    tile_w, tile_h = max(1, int(width * scale)), max(1, int(height * scale))
    canvas = Image.new("RGB", (tile_w * columns, tile_h * rows))
    for i, frame in enumerate(frames):
        tile = _image(frame.rgb).resize((tile_w, tile_h))
        canvas.paste(tile, ((i % columns) * tile_w, (i // columns) * tile_h))
    return canvas


def to_images(frames: tuple[Frame, ...], high_refresh: bool) -> list[Any]:
    """The latest frame, plus (high refresh) a grid of the unit's earlier frames."""
    images = [_image(frames[-1].rgb)]
    if high_refresh and len(frames) > 1:
        images.append(grid(list(frames[:-1])))
    return images
