"""Video frames for the model: PIL images, with the high-refresh grid and HD.

The model takes one image per unit at 448 px (64 tokens).  In high-refresh mode the unit's
other frames are tiled into a second image, so the model sees motion within the second at the
cost of one more image.

HD (``max_slice_nums = 2``) adds 64-token crops only for images larger than 448 px: the model
slices by image size.  So in HD the latest frame goes to the model as large as it came, up to
``HD_FRAME_SIDE`` (the official HD mode sends 1280x720); without HD it is brought down to 448.
The engine asks for frames that large through ``EngineInfo.frame_side`` when HD is on; the
call's unit loop and ``omnirtc replay`` convert frames to that size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from omni.api import MAX_FRAME_SIDE, Frame

HD_FRAME_SIDE = 1280
HD_SLICES = 2


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


def _bounded(rgb: np.ndarray, side: int) -> Any:
    image = _image(rgb)
    if max(image.size) > side:
        scale = side / max(image.size)
        image = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        )
    return image


def to_images(frames: tuple[Frame, ...], high_refresh: bool, hd: bool = False) -> list[Any]:
    """The latest frame (HD: up to 1280 px), plus (high refresh) a grid of the earlier ones."""
    images = [_bounded(frames[-1].rgb, HD_FRAME_SIDE if hd else MAX_FRAME_SIDE)]
    if high_refresh and len(frames) > 1:
        images.append(grid(list(frames[:-1])))
    return images
