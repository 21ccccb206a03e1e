"""lcrypt.images: every decode rule either converts as documented or rejects with its reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lcrypt.images import ImageRejected, decode_image, parse_size, read_image, resize_cover


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def rgb(rng) -> np.ndarray:
    return rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)


def test_png_rgb_is_exact_and_jpeg_fast_path_matches_pillow(rgb):
    assert np.array_equal(decode_image(encode(Image.fromarray(rgb), "PNG")), rgb)
    jpg = encode(Image.fromarray(rgb), "JPEG", quality=90)
    fast = decode_image(jpg)
    pil = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))
    assert fast.shape == (24, 40, 3)
    assert np.abs(fast.astype(int) - pil.astype(int)).max() <= 2  # libjpeg-turbo IDCT rounding only


def test_grayscale_is_replicated_and_opaque_alpha_dropped(rgb):
    g = rgb[..., 0]
    out = decode_image(encode(Image.fromarray(g), "PNG"))
    assert out.shape == (24, 40, 3) and all(np.array_equal(out[..., c], g) for c in range(3))
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    assert np.array_equal(decode_image(encode(Image.fromarray(rgba), "PNG")), rgb)


def test_transparency_is_rejected(rgb):
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    rgba[3, 3, 3] = 0
    with pytest.raises(ImageRejected) as e:
        decode_image(encode(Image.fromarray(rgba), "PNG"))
    assert e.value.reason == "transparent"


def test_palette_is_expanded_but_a_used_transparent_entry_is_rejected(rgb):
    pal = Image.fromarray(rgb).quantize(16)
    out = decode_image(encode(pal, "PNG"))
    assert np.array_equal(out, np.asarray(pal.convert("RGB")))
    idx = np.asarray(pal)[0, 0]
    with pytest.raises(ImageRejected, match="transparent"):
        decode_image(encode(pal, "PNG", transparency=int(idx)))


def test_sixteen_bit_keeps_the_high_byte():
    v = (np.arange(24 * 40, dtype=np.uint16).reshape(24, 40) * 67).astype(np.uint16)
    out = decode_image(encode(Image.fromarray(v), "PNG"))
    assert np.array_equal(out[..., 0], (v >> 8).astype(np.uint8))


def test_cmyk_is_rejected_naming_the_rule(rgb):
    with pytest.raises(ImageRejected) as e:
        decode_image(encode(Image.fromarray(rgb).convert("CMYK"), "JPEG"))
    assert e.value.reason == "unsupported_mode" and "CMYK" in str(e.value)


def test_exif_orientation_is_applied(rgb):
    im = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(encode(im, "PNG", exif=exif))
    assert out.shape == (40, 24, 3)
    assert np.array_equal(out, np.rot90(rgb, k=-1))


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"), (b"hello, this is a text file", "not_an_image"), (b"\xff\xd8\xff\xe0garbage", "corrupt")])
def test_non_images_and_garbage_are_rejected(data, reason):
    with pytest.raises(ImageRejected) as e:
        decode_image(data)
    assert e.value.reason == reason


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_rejected(rgb, fmt):
    data = encode(Image.fromarray(rgb), fmt)
    with pytest.raises(ImageRejected) as e:
        decode_image(data[: len(data) // 2])
    assert e.value.reason == "corrupt"


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("1", (10000, 10000)), "PNG")  # 100 Mpx in a few KB
    assert len(bomb) < 100_000
    with pytest.raises(ImageRejected) as e:
        decode_image(bomb)
    assert e.value.reason == "decompression_bomb"


def test_multi_frame_is_rejected(rgb):
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageRejected, match="frames"):
        decode_image(buf.getvalue())


def test_wrong_size_rejected_and_size_resizes_or_keeps_exact(rgb):
    png = encode(Image.fromarray(rgb), "PNG")
    with pytest.raises(ImageRejected) as e:
        decode_image(png, expect=(32, 32))
    assert e.value.reason == "wrong_size" and "--size" in str(e.value)
    assert decode_image(png, size=(16, 16)).shape == (16, 16, 3)
    assert np.array_equal(decode_image(png, size=(24, 40)), rgb)  # already that size: untouched
    assert resize_cover(rgb, (24, 24)).shape == (24, 24, 3)
    assert parse_size("32") == (32, 32) and parse_size("24x40") == (24, 40)
    with pytest.raises(ValueError, match="HxW"):
        parse_size("big")


def test_read_image_names_the_file(tmp_path):
    p = tmp_path / "bad.png"
    p.write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.png"):
        read_image(p)
