"""Conversion of any PIL image mode to 8-bit RGB.

Transparency is handled as the reference pipeline (EVA-CLIP / OpenCLIP / CLIP_benchmark's ``convert("RGB")``)
does by default: the alpha channel, or a palette's or colour key's transparent colour, is dropped and each pixel
keeps the colour it stores, so evaluation numbers match the reference's. ``transparency="white"`` composites
transparent pixels on white instead (what the stored colour of a transparent pixel, often black, hides). High-bit-
depth images are rescaled to 0..255, not clipped (``convert("L")`` on a 16-bit image saturates everything
above 255 to white).
"""
import warnings

import numpy as np
from PIL import Image

from evaclip.errors import EvaclipError

WHITE = (255, 255, 255)
TRANSPARENCY_MODES = ("keep", "white")  # the reference's convert("RGB"), or composited on white
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


class ImageInputError(EvaclipError, TypeError, ValueError):
    """An image given to a transform is not a PIL image, or has a mode that cannot become RGB."""


def to_rgb(img: Image.Image, transparency: str = "keep") -> Image.Image:
    """Return ``img`` as an 8-bit RGB image (``img`` itself if it already is RGB and needs no compositing).

    * RGBA, LA, PA (and premultiplied RGBa, La), and palette / L / RGB images with a ``transparency`` entry:
      ``transparency="keep"`` (default): exactly ``convert("RGB")``, the reference's preprocessing (alpha
      dropped, the stored colour kept); ``"white"``: alpha-composited on white.
    * 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX: PIL's colour conversion.
    * I;16* (16-bit): ``round(v / 257)``, so 65535 -> 255.
    * I (32-bit int): as 16-bit when every value lies in [0, 65535] (how 16-bit PNG/TIFF files often open),
      otherwise stretched linearly from [min, max] to [0, 255].
    * F (32-bit float): values in [0, 1] are scaled by 255, values in [0, 255] kept, anything else stretched
      from [min, max]; NaN counts as 0, +-inf as the max / min.
    """
    if not isinstance(img, Image.Image):
        raise ImageInputError(f"expected a PIL.Image.Image, got {type(img).__name__}; "
                              "use PIL.Image.open(path) or PIL.Image.fromarray(array)")
    if transparency not in TRANSPARENCY_MODES:
        raise ImageInputError(f"transparency must be one of {', '.join(TRANSPARENCY_MODES)}, got {transparency!r}")
    composite = transparency == "white"
    mode = img.mode
    if mode == "RGB" and not (composite and "transparency" in img.info):
        return img
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return Image.fromarray(_high_bit_depth_to_uint8(img), mode="L").convert("RGB")
    if mode == "La":
        img, mode = img.convert("LA"), "LA"  # PIL converts premultiplied La only to LA
    if composite and (mode in _ALPHA_MODES or "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE + (255,)), rgba).convert("RGB")
    try:
        with warnings.catch_warnings():
            # Pillow suggests RGBA for palette transparency; dropping it is what the reference does, on purpose.
            warnings.filterwarnings("ignore", message="Palette images with Transparency", category=UserWarning)
            return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageInputError(f"cannot convert an image of mode {mode!r} to RGB: {e}") from None


def _high_bit_depth_to_uint8(img: Image.Image) -> np.ndarray:
    """Gray levels of a 16/32-bit integer or float image mapped to uint8 without clipping."""
    values = np.asarray(img)
    if img.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_to_eight(values.astype(np.uint32))
    if img.mode == "I":
        if values.size == 0 or (values.min() >= 0 and values.max() <= 65535):
            return _sixteen_to_eight(values.astype(np.uint32))
        return _stretch(values.astype(np.float64))
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=np.inf, neginf=-np.inf)
    finite = values[np.isfinite(values)]
    if finite.size == values.size and (finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1)):
        return np.rint(values * 255).astype(np.uint8)
    if finite.size == values.size and finite.min() >= 0 and finite.max() <= 255:
        return np.rint(values).astype(np.uint8)
    return _stretch(values)


def _sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    # round(v / 257) in integers; 65535 = 255 * 257 exactly, and since 257 is odd there are no ties.
    return ((values + 128) // 257).astype(np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Map [min, max] of the finite values linearly onto [0, 255] (+inf -> 255, -inf -> 0)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, np.uint8)
    low, high = float(finite.min()), float(finite.max())
    if high == low:
        return np.where(np.isposinf(values), 255, 0).astype(np.uint8)
    scaled = (np.clip(values, low, high) - low) * (255.0 / (high - low))
    return np.rint(scaled).astype(np.uint8)
