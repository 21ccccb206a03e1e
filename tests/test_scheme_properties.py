"""The papers' properties, measured on natural images (scikit-image's bundled samples)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import simplejpeg
from skimage import data as skdata

from lcrypt import Key, get_scheme
from lcrypt.schemes.base import COLOR_PERMUTATIONS, block_index, dihedral_maps

KEY = Key(b"\x07" * 32, "props")


@pytest.fixture(scope="module")
def natural() -> np.ndarray:
    """Six natural 224x224 RGB images cut from images that ship inside scikit-image."""
    crops = []
    for img in (skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket()):
        h, w, _ = img.shape
        crops.append(img[:224, :224])
        crops.append(img[h - 224:, w - 224:])
    return np.stack(crops[:6])


def adjacent_correlation(images: np.ndarray) -> float:
    a = images[:, :, :-1].astype(np.float64).ravel()
    b = images[:, :, 1:].astype(np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def histogram_asymmetry(images: np.ndarray) -> float:
    """Half the L1 distance between the value histogram and its mirror (0 = symmetric about 127.5)."""
    h = np.bincount(images.ravel(), minlength=256) / images.size
    return 0.5 * float(np.abs(h - h[::-1]).sum())


def jpeg_bytes(images: np.ndarray, subsampling: str = "444", quality: int = 85) -> int:
    return sum(len(simplejpeg.encode_jpeg(np.ascontiguousarray(im), quality=quality, colorspace="RGB",
                                          colorsubsampling=subsampling)) for im in images)


def test_pe_and_etc_histograms_become_symmetric(natural):
    """Negative-positive with P = 0.5 mixes each value with 255 - value (Sirichotedumrong eq. 1;
    EtC step 3)."""
    assert histogram_asymmetry(natural) > 0.15
    assert histogram_asymmetry(get_scheme("pe").encrypt(natural, KEY)) < 0.02
    assert histogram_asymmetry(get_scheme("etc").encrypt(natural, KEY)) < 0.25
    # EtC keeps each block's values: every cipher block is some plain block, or its negative, rearranged
    blk = block_index(224, 224, 16)
    plain = np.sort(natural.reshape(6, -1)[:, blk], axis=2)
    cipher = np.sort(get_scheme("etc").encrypt(natural, KEY).reshape(6, -1)[:, blk], axis=2)
    for i in range(6):
        plain_set = {b.tobytes() for b in plain[i]} | {np.sort(255 - b).tobytes() for b in plain[i]}
        assert all(c.tobytes() in plain_set for c in cipher[i])


def test_etc_stays_jpeg_compressible_and_pe_does_not(natural):
    """EtC paper Table IV: EtC's JPEG size is within a few % of plain; pixel-wise schemes are not."""
    plain = jpeg_bytes(natural)
    etc = jpeg_bytes(get_scheme("etc").encrypt(natural, KEY))
    pe = jpeg_bytes(get_scheme("pe").encrypt(natural, KEY))
    assert abs(etc / plain - 1) < 0.05, (etc, plain)
    assert pe > 2 * plain


def test_etc_jpeg_size_on_real_cifar(shared_datasets):
    """The same check on CIFAR-10's own 32x32 images (Table IV counts 69.0 vs 68.7 MB at q85)."""
    import io
    import tarfile

    from PIL import Image

    images = []
    with tarfile.open(shared_datasets / "cifar10-jpeg.tar.gz") as tar:
        for member in tar:
            if member.isfile() and "/test/" in member.name:
                images.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
                if len(images) == 500:
                    break
    batch = np.stack(images)
    ratio = jpeg_bytes(get_scheme("etc").encrypt(batch, KEY)) / jpeg_bytes(batch)
    assert abs(ratio - 1) < 0.05, ratio


def test_catmap_destroys_adjacent_correlation_and_learnable_schemes_keep_some(natural):
    assert adjacent_correlation(natural) > 0.8
    assert abs(adjacent_correlation(get_scheme("catmap").encrypt(natural, KEY))) < 0.02
    assert adjacent_correlation(get_scheme("etc").encrypt(natural, KEY)) > 0.6  # within-block structure kept
    assert adjacent_correlation(get_scheme("block-shuffle").encrypt(natural, KEY)) > 0.5


def test_etc_draws_all_eight_block_symmetries_and_true_colour_permutations():
    """Guards against two public-code bugs: 4 of 8 rotation/inversion variants, and channel 'shuffles'
    that duplicate a channel. Every 16x16 block holds the same asymmetric pattern 0..255."""
    b = 16
    pattern = ((np.arange(256) * 7) % 101).astype(np.uint8).reshape(b, b)    # asymmetric, values <= 100
    image = np.tile(pattern, (14, 14))[None, :, :, None].repeat(3, axis=-1)   # 224x224, grey
    cipher = get_scheme("etc").encrypt(image, KEY)[0]
    variants = {m.tobytes(): v for v, m in enumerate(pattern.ravel()[dihedral_maps(b)])}
    assert len(variants) == 8
    seen = set()
    for by in range(14):
        for bx in range(14):
            block = cipher[by * b:(by + 1) * b, bx * b:(bx + 1) * b, 0]
            block = block if block.max() <= 100 else 255 - block                 # undo negative-positive
            seen.add(variants[block.tobytes()])
    assert seen == set(range(8))

    colours = np.zeros((1, 224, 224, 3), np.uint8) + np.array([10, 100, 200], np.uint8)
    cipher = get_scheme("etc").encrypt(colours, KEY)[0]
    perms = set()
    for by in range(14):
        for bx in range(14):
            px = cipher[by * b, bx * b]
            px = px if set(px) == {10, 100, 200} else 255 - px
            assert sorted(px) == [10, 100, 200], "a colour shuffle must be a permutation"
            perms.add(tuple(int(np.where(np.array([10, 100, 200]) == v)[0][0]) for v in px))
    assert perms == {tuple(p) for p in COLOR_PERMUTATIONS}


def test_key_spaces_match_the_papers():
    lg = lambda n: math.lgamma(n + 1) / math.log(2)  # noqa: E731
    assert get_scheme("le").info.key_space_bits(32, 32) == pytest.approx(lg(96) + 96)          # 96!·2^96
    n = 32 * 32
    assert (get_scheme("pe", color_shuffle=True).info.key_space_bits(32, 32)
            == pytest.approx(3 * n + n * math.log2(6)))
    assert get_scheme("pe").info.key_space_bits(32, 32) == pytest.approx(3 * n)
    nb = 14 * 14
    assert (get_scheme("etc").info.key_space_bits(224, 224)
            == pytest.approx(lg(nb) + nb * math.log2(8 * 2 * 6)))


def test_jpeg_compatibility_follows_the_mcu():
    assert get_scheme("etc").info.jpeg_subsamplings == ("444", "422", "420")
    assert get_scheme("etc", block_size=8).info.jpeg_subsamplings == ("444",)
    assert get_scheme("etc", block_size=4).info.jpeg_subsamplings == ()
    assert all(not get_scheme(n).info.jpeg_compatible for n in ("pe", "le", "ele", "cpbe", "catmap"))


def test_le_keeps_every_block_under_the_same_transform():
    """LE shares its key across blocks, so moving whole blocks commutes with encryption
    (why block-grid translation is a declared augmentation) while moving single pixels does not."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    le = get_scheme("le")
    assert "translate" in le.info.augmentations and le.info.aug_grid == 4
    shift = lambda a, s: np.roll(a, s, axis=2)  # noqa: E731
    assert np.array_equal(le.encrypt(shift(x, 4), KEY), shift(le.encrypt(x, KEY), 4))
    assert not np.array_equal(le.encrypt(shift(x, 1), KEY), shift(le.encrypt(x, KEY), 1))


@pytest.mark.parametrize("scramble", [True, False])
def test_blockwise_is_one_in_block_transform_shared_by_every_block(scramble):
    """x' = S·P·x in every block (AprilPyone & Kiya; Kiya et al. 2022), blocks moved by σ, checked
    block by block against the scheme's own σ, P, S (a loop, not the gather the scheme runs)."""
    b = 8
    s = get_scheme("blockwise", block_size=b, scramble=scramble)
    x = np.random.default_rng(3).integers(0, 256, (2, 32, 48, 3), dtype=np.uint8)
    c = s.encrypt(x, KEY)
    bk = s.block_key(KEY, x.shape[1:])
    assert bk.scrambles == scramble and 0.3 < bk.flip.mean() < 0.7
    grid_w = 48 // b
    for q in range(len(bk.blocks)):
        pq = bk.blocks[q]
        plain = x[:, pq // grid_w * b:(pq // grid_w + 1) * b, pq % grid_w * b:(pq % grid_w + 1) * b]
        cipher = c[:, q // grid_w * b:(q // grid_w + 1) * b, q % grid_w * b:(q % grid_w + 1) * b]
        moved = plain.reshape(2, -1)[:, bk.src]
        assert np.array_equal(cipher.reshape(2, -1), np.where(bk.flip, 255 - moved, moved))
    # P and S do not depend on the image size (a converted ConvMixer serves any size)
    other = s.block_key(KEY, (64, 64, 3))
    assert np.array_equal(other.src, bk.src) and np.array_equal(other.flip, bk.flip)


def test_blockwise_key_space_jpeg_and_augmentations():
    lg = lambda n: math.lgamma(n + 1) / math.log(2)  # noqa: E731
    s = get_scheme("blockwise", block_size=16)
    assert s.info.key_space_bits(224, 224) == pytest.approx(lg(768) + 768 + lg(196))      # 768!·2^768·196!
    unscrambled = get_scheme("blockwise", scramble=False)
    assert unscrambled.info.key_space_bits(224, 224) == pytest.approx(lg(768) + 768)
    assert not s.info.jpeg_compatible
    assert "translate" in get_scheme("blockwise", scramble=False).info.augmentations
    assert "translate" not in s.info.augmentations
