"""A small PNG writer for the report's example images: 8-bit grey or RGB, nothing beyond zlib."""

from __future__ import annotations

import base64
import struct
import zlib

import torch

__all__ = ["png_bytes", "png_data_uri"]


def png_bytes(image: torch.Tensor, bounds: tuple[float, float], *, scale: int = 1) -> bytes:
    r"""An image tensor as PNG, enlarged ``scale`` times with nearest-neighbour.

    Args:
        image: ``[C, H, W]`` (or ``[H, W]``) with values in ``bounds``; one channel is grey, three
            are RGB, any other count is shown as the grey mean over channels.
        bounds: the input bounds, mapped to black and white.
        scale: the enlargement factor, an integer >= 1.

    Returns:
        The bytes of an 8-bit PNG file.

    Example:
        >>> png = png_bytes(torch.zeros(1, 2, 3), (0.0, 1.0), scale=2)
        >>> png[:8], int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        (b'\x89PNG\r\n\x1a\n', 6, 4)

    """
    low, high = bounds
    x = image.detach().to("cpu", torch.float32)
    x = x[None] if x.dim() == 2 else x
    if x.dim() != 3:
        raise ValueError(f"mlsec: an example image must be [C, H, W] (got shape {tuple(x.shape)})")
    x = torch.nan_to_num((x - low) / max(high - low, 1e-12), nan=0.0).clamp(0, 1)
    pixels = x.mul(255).round().to(torch.uint8)
    if pixels.shape[0] == 3:
        pixels, color_type = pixels.permute(1, 2, 0), 2
    else:
        pixels, color_type = x.mean(0).mul(255).round().to(torch.uint8), 0
    pixels = pixels.repeat_interleave(scale, 0).repeat_interleave(scale, 1).contiguous()
    height, width = pixels.shape[:2]
    # Each scanline starts with filter type 0 (none); zlib does the compressing.
    rows = torch.cat([torch.zeros(height, 1, dtype=torch.uint8), pixels.reshape(height, -1)], 1)
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(rows.numpy().tobytes(), 9)),
            _chunk(b"IEND", b""),
        ]
    )


def png_data_uri(png: bytes) -> str:
    r"""PNG bytes as a ``data:`` URI, to inline an image in a self-contained page.

    Example:
        >>> png_data_uri(b"\x89PNG")
        'data:image/png;base64,iVBORw=='

    """
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
