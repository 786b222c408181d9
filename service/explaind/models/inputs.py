"""Turning a request's input into one example in the model's input space, checked.

Images are decoded with Pillow (PNG and JPEG only), checked against the byte and pixel limits
before any pixel is decoded, converted to RGB (or greyscale for one-channel models), resized
bilinearly to the model's size, divided by `scale` and normalised per channel. Tensors must have the
model's example shape and dtype exactly and hold only finite values.
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InvalidArgument
from .config import Preprocess
from .text import clip

IMAGE_FORMATS = ("PNG", "JPEG")
_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...): not DHT, JPG or DAC.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}  # RSTn, TEM, SOI: no length field


def declared_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) as the PNG or JPEG header declares them, without decoding a pixel.

    Read here rather than through Pillow: ``Image.open`` refuses images over its process-wide
    ``MAX_IMAGE_PIXELS`` with DecompressionBombError before it tells the size, and that global is not
    the server's limit. None when the header is not one of these (Pillow then says what is wrong).
    """
    if data.startswith(PNG_SIGNATURE):
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return "PNG", int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return None
    if not data.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            at += 2
            continue
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if marker in _JPEG_SOF:
            if length < 7 or at + 9 > len(data):
                return None
            height = int.from_bytes(data[at + 5:at + 7], "big")
            width = int.from_bytes(data[at + 7:at + 9], "big")
            return "JPEG", width, height
        if marker == 0xDA or length < 2:  # start of scan before any frame header: not a JPEG we know
            return None
        at += 2 + length
    return None


def check_image_size(data: bytes, max_pixels: int) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels, before decoding it."""
    declared = declared_size(data)
    if declared is not None:
        kind, width, height = declared
        if width * height > max_pixels:
            raise InvalidArgument("image", f"at most {max_pixels} pixels (the server's max_image_pixels)",
                                  f"{width}x{height} = {width * height} pixels (declared in its {kind} header)")


def decode_image(data: bytes, max_bytes: int, max_pixels: int, channels: int) -> np.ndarray:
    """uint8 [h, w, 3] (or [h, w, 1]) at the image's own size."""
    if len(data) == 0:
        raise InvalidArgument("image", "PNG or JPEG bytes", "an empty image")
    if len(data) > max_bytes:
        raise InvalidArgument("image", f"at most {max_bytes} bytes (the server's max_image_bytes)",
                              f"{len(data)} bytes")
    check_image_size(data, max_pixels)
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise InvalidArgument("image", f"at most {max_pixels} pixels (the server's max_image_pixels)",
                                      f"{width}x{height} = {width * height} pixels")
            img.load()
            rgb = img.convert("L" if channels == 1 else "RGB")
    except InvalidArgument:
        raise
    except Image.DecompressionBombError as exc:  # only when max_image_pixels is above Pillow's own limit
        raise InvalidArgument("image", f"at most {Image.MAX_IMAGE_PIXELS * 2} pixels (Pillow's decompression "
                              "bomb limit, below the server's max_image_pixels)", f"a larger image ({exc})") from None
    except UnidentifiedImageError:  # its message names the BytesIO object: nothing for the caller
        raise InvalidArgument("image", "a decodable PNG or JPEG", "data that is neither (no PNG or JPEG "
                              "header Pillow can read)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        detail = clip(_OBJECT_REPR.sub("the data", str(exc)))
        raise InvalidArgument("image", "a decodable PNG or JPEG", f"undecodable data ({detail})") from None
    array = np.asarray(rgb, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def preprocess_image(image: np.ndarray, pre: Preprocess, layout: str) -> np.ndarray:
    """uint8 [h, w, C] -> float32 example ([C, H, W] for NCHW, [H, W, C] for NHWC)."""
    height, width = pre.size  # type: ignore[misc]
    mode = "L" if image.shape[2] == 1 else "RGB"
    pil = Image.fromarray(image[:, :, 0] if mode == "L" else image, mode=mode)
    if pil.size != (width, height):
        pil = pil.resize((width, height), Image.Resampling.BILINEAR)
    x = np.asarray(pil, dtype=np.float32).reshape(height, width, -1) / np.float32(pre.scale)
    channels = x.shape[2]
    mean = np.asarray(pre.mean if pre.mean is not None else [0.0] * channels, np.float32)
    std = np.asarray(pre.std if pre.std is not None else [1.0] * channels, np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1) if layout == "NCHW" else x, dtype=np.float32)


def display_image(x: np.ndarray, pre: Preprocess | None, layout: str) -> np.ndarray:
    """Undo the preprocessing of an example to get uint8 [H, W, 3] pixels for overlays."""
    hwc = x.transpose(1, 2, 0) if layout == "NCHW" else x
    channels = hwc.shape[2]
    scale = pre.scale if pre else 255.0
    mean = np.asarray(pre.mean if pre and pre.mean is not None else [0.0] * channels, np.float32)
    std = np.asarray(pre.std if pre and pre.std is not None else [1.0] * channels, np.float32)
    pixels = np.clip((hwc * std + mean) * scale, 0, 255).round().astype(np.uint8)
    return np.repeat(pixels, 3, axis=2) if channels == 1 else pixels


def check_tensor(array: np.ndarray, example_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The request's tensor, checked against the model's example shape, dtype and finiteness."""
    if array.dtype != dtype:
        raise InvalidArgument("tensor.dtype", f"{dtype.name.upper()} (the model's input type)",
                              array.dtype.name.upper())
    if tuple(array.shape) != tuple(example_shape):
        raise InvalidArgument("tensor.shape", f"{list(example_shape)} (one example, without the batch "
                              "dimension)", list(array.shape))
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InvalidArgument("tensor.data", "finite values",
                                  f"{int(bad.sum())} NaN or Inf values (first at index {list(first)}: "
                                  f"{array[first]})")
    return np.ascontiguousarray(array)
