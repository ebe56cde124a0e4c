"""Every PIL mode becomes the right 8-bit RGB values (closed forms computed here with numpy). Transparency:
by default exactly the reference's ``convert("RGB")``; composited on white only when asked."""
import numpy as np
import pytest
from PIL import Image

from evaclip.transforms import ImageInputError, to_rgb


def rgb(img: Image.Image, transparency: str = "keep") -> np.ndarray:
    out = to_rgb(img, transparency)
    assert out.mode == "RGB" and out.size == img.size
    return np.asarray(out).astype(np.int64)


def over_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Closed form of compositing ``color`` with opacity ``alpha`` (0..255) on white."""
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.rint(color.astype(np.float64) * a + 255.0 * (1.0 - a))


def test_rgb_is_returned_unchanged():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    assert to_rgb(img) is img


def test_rgba_is_composited_on_white_when_asked():
    half_red = Image.new("RGBA", (3, 2), (255, 0, 0, 128))
    assert np.abs(rgb(half_red, "white") - [255, 127, 127]).max() <= 1  # pink, not red and not dark red
    assert (rgb(Image.new("RGBA", (2, 2), (0, 0, 0, 0)), "white") == 255).all()  # fully transparent -> white
    assert (rgb(Image.new("RGBA", (2, 2), (10, 20, 30, 255)), "white") == [10, 20, 30]).all()  # opaque unchanged
    values = np.random.default_rng(1).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    got = rgb(Image.fromarray(values, "RGBA"), "white")
    assert np.abs(got - over_white(values[..., :3], values[..., 3])).max() <= 1


def test_transparency_defaults_to_the_reference_convert():
    values = np.random.default_rng(1).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    rgba = Image.fromarray(values, "RGBA")
    assert (rgb(rgba) == values[..., :3]).all()  # alpha dropped, the stored colour kept
    la = Image.fromarray(values[..., :2].copy(), "LA")
    pa = _palette_image().convert("PA")
    pa.putalpha(Image.fromarray(np.array([[255, 0, 128]], np.uint8)))
    for img in (rgba, la, pa):
        assert (rgb(img) == np.asarray(img.convert("RGB"))).all()
    with pytest.raises(ImageInputError, match="transparency must be one of keep, white"):
        to_rgb(rgba, "black")


def test_la_and_premultiplied_modes():
    values = np.random.default_rng(2).integers(0, 256, (8, 8, 2), dtype=np.uint8)
    got = rgb(Image.fromarray(values, "LA"), "white")
    expected = over_white(np.repeat(values[..., :1], 3, axis=2), values[..., 1])
    assert np.abs(got - expected).max() <= 1
    premultiplied = Image.new("RGBA", (2, 2), (200, 100, 50, 128)).convert("RGBa")
    assert np.abs(rgb(premultiplied, "white") - over_white(np.array([200, 100, 50]), np.array(128))).max() <= 2
    la_premultiplied = Image.new("LA", (2, 2), (100, 128)).convert("La")
    assert np.abs(rgb(la_premultiplied, "white") - over_white(np.array([100, 100, 100]), np.array(128))).max() <= 2


def _palette_image() -> Image.Image:
    img = Image.new("P", (3, 1))
    img.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.putpixel((1, 0), 1)
    img.putpixel((2, 0), 2)
    return img


def test_palette_with_and_without_transparency():
    img = _palette_image()
    assert rgb(img).tolist() == [[[10, 20, 30], [200, 100, 50], [0, 255, 0]]]
    img.info["transparency"] = 0  # palette index 0 is transparent
    assert rgb(img, "white").tolist() == [[[255, 255, 255], [200, 100, 50], [0, 255, 0]]]
    assert rgb(img).tolist() == [[[10, 20, 30], [200, 100, 50], [0, 255, 0]]]  # the reference keeps the colour
    pa = _palette_image().convert("PA")
    pa.putalpha(Image.fromarray(np.array([[255, 0, 128]], np.uint8)))
    got = rgb(pa, "white")[0]
    assert got[0].tolist() == [10, 20, 30] and got[1].tolist() == [255, 255, 255]
    assert np.abs(got[2] - over_white(np.array([0, 255, 0]), np.array(128))).max() <= 1


def test_rgb_with_colour_key_transparency(tmp_path):
    img = Image.fromarray(np.array([[[1, 2, 3], [9, 9, 9]]], np.uint8))
    img.save(tmp_path / "key.png", transparency=(1, 2, 3))
    loaded = Image.open(tmp_path / "key.png")
    assert rgb(loaded, "white").tolist() == [[[255, 255, 255], [9, 9, 9]]]
    assert rgb(Image.open(tmp_path / "key.png")).tolist() == [[[1, 2, 3], [9, 9, 9]]]


def test_grayscale_and_bilevel():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert (rgb(Image.fromarray(values, "L")) == values[..., None]).all()
    bits = Image.fromarray(np.array([[0, 255, 0]], np.uint8)).convert("1")
    assert rgb(bits).tolist() == [[[0, 0, 0], [255, 255, 255], [0, 0, 0]]]


def test_sixteen_bit_scales_not_clips(tmp_path):
    values = np.array([[0, 128, 129, 257, 32896, 65534, 65535]], np.uint16)
    expected = np.rint(values / 257.0)  # 65535 -> 255, 257 -> 1, 32896 -> 128
    assert expected.tolist() == [[0, 0, 1, 1, 128, 255, 255]]
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    assert (rgb(img) == expected[..., None]).all()
    big_endian = Image.frombytes("I;16B", (7, 1), values.astype(">u2").tobytes())
    assert (rgb(big_endian) == expected[..., None]).all()
    noise = np.random.default_rng(3).integers(0, 65536, (12, 12)).astype(np.uint16)
    Image.fromarray(noise).save(tmp_path / "deep.png")  # a real 16-bit PNG file
    loaded = Image.open(tmp_path / "deep.png")
    assert loaded.mode.startswith("I")
    assert (rgb(loaded) == np.rint(noise / 257.0)[..., None]).all()


def test_thirty_two_bit_int_and_float():
    in_16bit_range = np.array([[0, 257, 65535]], np.int32)
    assert rgb(Image.fromarray(in_16bit_range, "I"))[0, :, 0].tolist() == [0, 1, 255]
    wide = np.array([[-1000, 49000, 100000]], np.int32)  # beyond 16 bits: stretched from [min, max]
    assert rgb(Image.fromarray(wide, "I"))[0, :, 0].tolist() == [0, 126, 255]  # 50000 / 101000 * 255
    unit = np.array([[0.0, 0.5, 1.0]], np.float32)
    assert rgb(Image.fromarray(unit, "F"))[0, :, 0].tolist() == [0, 128, 255]
    eight_bit = np.array([[0.0, 100.4, 255.0]], np.float32)
    assert rgb(Image.fromarray(eight_bit, "F"))[0, :, 0].tolist() == [0, 100, 255]
    hdr = np.array([[-5.0, 1200.0, 2005.0, np.nan]], np.float32)  # NaN counts as 0
    assert rgb(Image.fromarray(hdr, "F"))[0, :, 0].tolist() == [0, 153, 255, 1]


def test_cmyk_closed_form():
    values = np.random.default_rng(4).integers(0, 256, (10, 10, 4), dtype=np.uint8)
    got = rgb(Image.fromarray(values, "CMYK"))
    c, k = values[..., :3].astype(np.float64), values[..., 3:].astype(np.float64)
    expected = (255.0 - c) * (255.0 - k) / 255.0
    assert np.abs(got - expected).max() <= 1
    assert rgb(Image.new("CMYK", (1, 1), (255, 0, 0, 0))).tolist() == [[[0, 255, 255]]]


def test_other_colour_spaces():
    assert np.abs(rgb(Image.new("YCbCr", (2, 2), (255, 128, 128))) - 255).max() <= 1
    assert rgb(Image.new("HSV", (1, 1), (0, 255, 255))).tolist() == [[[255, 0, 0]]]


def test_not_an_image_is_refused():
    with pytest.raises(ImageInputError, match="expected a PIL.Image.Image, got ndarray"):
        to_rgb(np.zeros((4, 4, 3), np.uint8))
