"""Pictures written as PNG files with Pillow: images from network inputs, segmentation
overlays, detection boxes, and grids of maps (feature maps, filters, saliency).

Images here are (C, H, W) float arrays in any range (shown stretched to their minimum and
maximum unless a range is given) with 1 or 3 channels; small ones are enlarged (nearest
neighbour, so pixels stay visible) to at least ``MIN_SIDE`` pixels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

MIN_SIDE = 256

# a colour per class: background black, then distinct hues (tab10, then golden-angle hues)
_TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf"]


def palette(count: int, background: bool = True) -> np.ndarray:
    """(count, 3) uint8 colours; with ``background`` the first is black."""
    import colorsys

    colours = [(0, 0, 0)] if background else []
    k = 0
    while len(colours) < count:
        if k < len(_TAB10):
            hexa = _TAB10[k]
            colours.append(tuple(int(hexa[i:i + 2], 16) for i in (1, 3, 5)))
        else:
            r, g, b = colorsys.hsv_to_rgb((k * 0.618034) % 1, 0.75, 0.95)
            colours.append((int(r * 255), int(g * 255), int(b * 255)))
        k += 1
    return np.array(colours[:count], np.uint8)


def to_uint8(image: np.ndarray, value_range=None) -> np.ndarray:
    """(C, H, W) or (H, W) floats -> (H, W, 3) uint8, stretched to ``value_range`` (default:
    the image's own minimum and maximum)."""
    a = np.asarray(image, np.float64)
    if a.ndim == 3:
        a = a.transpose(1, 2, 0)
        if a.shape[2] == 1:
            a = a[:, :, 0]
        elif a.shape[2] != 3:
            raise ValueError(f"an image to draw needs 1 or 3 channels, not {a.shape[2]}")
    lo, hi = value_range if value_range is not None else (a.min(), a.max())
    a = np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return (a * 255 + 0.5).astype(np.uint8)


def heat(values: np.ndarray) -> np.ndarray:
    """(H, W) non-negative values -> (H, W, 3) uint8 on a black-red-yellow-white scale."""
    v = np.asarray(values, np.float64)
    v = (v - v.min()) / (v.max() - v.min() if v.max() > v.min() else 1.0)
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)],
                   axis=2)
    return (rgb * 255 + 0.5).astype(np.uint8)


def enlarge(pixels: np.ndarray, min_side: int = MIN_SIDE) -> np.ndarray:
    """Repeat pixels so that the shorter side reaches ``min_side`` (a whole factor)."""
    factor = max(1, -(-min_side // min(pixels.shape[:2])))
    return np.repeat(np.repeat(pixels, factor, axis=0), factor, axis=1)


def overlay(pixels: np.ndarray, mask: np.ndarray, colours: np.ndarray,
            alpha: float = 0.5) -> np.ndarray:
    """Class colours over an image where the mask is not background (class 0)."""
    h, w = mask.shape
    top, left = (pixels.shape[0] - h) // 2, (pixels.shape[1] - w) // 2
    out = pixels.copy()
    region = out[top:top + h, left:left + w]
    shown = (mask > 0) & (mask < len(colours))
    tint = colours[np.clip(mask, 0, len(colours) - 1)].astype(np.float64)
    region[shown] = ((1 - alpha) * region[shown] + alpha * tint[shown] + 0.5).astype(np.uint8)
    return out


def side_by_side(*panels: np.ndarray, gap: int = 4) -> np.ndarray:
    """Panels (H, W, 3) of one height in a row, with a white gap."""
    h = max(p.shape[0] for p in panels)
    parts = []
    for k, p in enumerate(panels):
        if k:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
        parts.append(np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255))
    return np.concatenate(parts, axis=1)


def grid(tiles: list[np.ndarray], columns: int | None = None, gap: int = 2) -> np.ndarray:
    """Equal-size tiles (h, w, 3) in rows of ``columns`` (default: about square)."""
    if not tiles:
        raise ValueError("nothing to draw: no tiles")
    n = len(tiles)
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = -(-n // columns)
    h, w = tiles[0].shape[:2]
    out = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tile
    return out


def draw_boxes(pixels: np.ndarray, boxes, labels: list[str], colours: np.ndarray,
               scale: float = 1.0) -> np.ndarray:
    """Boxes (k, 4) in the image's pixels (drawn on a copy enlarged ``scale`` times), each
    with its label above it."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for k, (box, label) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), labels)):
        colour = tuple(int(v) for v in colours[k % len(colours)])
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        if label:
            text_y = max(y1 - 11, 0)
            draw.rectangle([x1, text_y, x1 + 6 * len(label) + 4, text_y + 11], fill=colour)
            draw.text((x1 + 2, text_y), label, fill=(0, 0, 0))
    return np.asarray(image)


def png_bytes(pixels: np.ndarray) -> bytes:
    """(H, W, 3) uint8 as the bytes of a PNG file."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


def save(pixels: np.ndarray, path: str | Path) -> Path:
    """Write (H, W, 3) uint8 as a PNG (folders made as needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(pixels))
    return path


def load_image(path: str | Path, shape) -> np.ndarray:
    """An image file fitted to a network input (C, H, W), values in [0, 1]."""
    from runtime.train.data import read_image

    return read_image(path, shape).astype(np.float32) / 255.0
