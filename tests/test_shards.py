"""lcrypt.format and lcrypt.tarstream: the one shard format, manifest schema and tar reader."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import tarfile
import zlib

import numpy as np
import pytest

from lcrypt.format import (IMAGE_EXT, IMAGE_EXTS, KEY_HEX_DIGITS, TAR_RECORD, Manifest, ManifestError,
                           OwnerEntry, ShardEntry, ShardFormatError, ShardWriter, check_owner, decode_label,
                           decode_labels, decode_member, decode_samples, encode_image, encode_png,
                           group_members, num_shards_for, parse_shard_path, read_index, read_samples,
                           sample_key, sample_key_salt, shard_of, shard_path, tar_bytes, write_tar)
from lcrypt.format.codecs import png_raw_rows
from lcrypt.format.reader import _plain_tar_members
from lcrypt.tarstream import TarFormatError, iter_members


@pytest.mark.parametrize("encoding", ["png", "npy"])
def test_lossless_encodings_round_trip_bit_for_bit(encoding, rng):
    img = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    writer = ShardWriter(encoding)
    members = writer.members([("k0", 7, writer.encode(img))])
    assert [n for n, _ in members] == ["k0.cls", f"k0.{IMAGE_EXT[encoding]}"]
    assert decode_label(members[0][1]) == 7
    assert np.array_equal(decode_member(*members[1]), img)


def test_png_is_a_standard_png_pillow_reads(rng):
    from PIL import Image

    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(img)))), img)


def test_jpeg_encoding_honours_quality_and_subsampling(rng):
    img = np.repeat(np.repeat(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), 8, 0), 8, 1)
    hi = encode_image(img, "jpeg", 95)
    lo = encode_image(img, "jpeg", 30, "420")
    assert len(lo) < len(hi)
    import simplejpeg

    assert simplejpeg.decode_jpeg_header(lo)[3] == "420"
    assert np.abs(decode_member("a.jpg", hi).astype(int) - img).mean() < 3
    with pytest.raises(ValueError, match="jpeg_quality"):
        encode_image(img, "jpeg", None)


@pytest.mark.parametrize("name, data", [
    ("x.pyd", b"\x80\x04K\x01."), ("x.pickle", b"\x80\x04K\x01."), ("x.json", b"{}"), ("x.txt", b"1")])
def test_decoding_refuses_pickles_and_unknown_types(name, data):
    with pytest.raises(ShardFormatError, match="refused|not an lcrypt image"):
        decode_member(name, data)


def test_npy_with_objects_is_refused():
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ShardFormatError):
        decode_member("x.npy", buf.getvalue())


def test_malformed_labels_and_images_name_the_member():
    with pytest.raises(ShardFormatError, match="decimal"):
        decode_label(b"cat")
    with pytest.raises(ShardFormatError, match="k.png"):
        decode_member("k.png", b"\x89PNG\r\n\x1a\ntruncated")


def test_tar_is_deterministic_and_readable_by_tarfile_and_webdataset(tmp_path, rng):
    writer = ShardWriter("png")
    members = writer.members([(f"{i:020x}", i, writer.encode(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
                              for i in range(5)])
    a, b = tar_bytes(members), tar_bytes(members)
    assert a == b and len(a) % TAR_RECORD == 0
    size, digest = write_tar(tmp_path / "s.tar", members)
    assert (tmp_path / "s.tar").read_bytes() == a and size == len(a)
    assert not [p for p in tmp_path.iterdir() if p.name != "s.tar"]  # no temp file left behind
    with tarfile.open(tmp_path / "s.tar") as tf:
        infos = tf.getmembers()
        assert [(i.name, tf.extractfile(i).read()) for i in infos] == members
        assert {(i.mtime, i.uid, i.gid, i.mode, i.uname) for i in infos} == {(0, 0, 0, 0o444, "")}
    import webdataset as wds

    got = list(wds.WebDataset(str(tmp_path / "s.tar"), shardshuffle=False))
    assert [s["__key__"] for s in got] == [f"{i:020x}" for i in range(5)]
    assert [int(s["cls"]) for s in got] == list(range(5))


def test_shard_writer_gives_the_shard_and_its_manifest_entry(rng):
    writer = ShardWriter("npy")
    images = [rng.integers(0, 256, (4, 6, 3), dtype=np.uint8) for _ in range(3)]
    samples = [(f"{i:020x}", 7 - i, writer.encode(img)) for i, img in enumerate(images)]
    data, entry = writer.shard("train", "hospital-a", 3, samples)
    assert entry == ShardEntry("train/hospital-a-000003.tar", "hospital-a", "train", 3, len(data),
                               hashlib.sha256(data).hexdigest())
    assert data == tar_bytes(writer.members(samples))
    got = list(read_samples(data, "u"))
    assert [(k, decode_label(lab), ext) for k, lab, ext, _, _ in got] == [(f"{i:020x}", 7 - i, "npy")
                                                                          for i in range(3)]
    assert all(np.array_equal(decode_member("k.npy", s[3]), img) for s, img in zip(got, images))
    for bad in (samples[::-1], [samples[0], samples[0]]):  # unsorted, a key twice: not a deterministic shard
        with pytest.raises(ValueError, match="sorted by key, each key once"):
            writer.shard("train", "hospital-a", 3, bad)
    with pytest.raises(ValueError, match="must not contain"):
        writer.members([("a.b", 1, b"x")])
    with pytest.raises(ValueError, match="unknown encoding"):
        ShardWriter("gif")


def test_streaming_reader_handles_gzip_pax_and_long_names():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in [("d/" + "a" * 120 + ".png", b"x" * 700), ("d/é.cls", b"3"), ("e/b.cls", b"")]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    for stream in (raw, gzip.compress(raw)):
        got = list(iter_members(io.BytesIO(stream)))
        assert [n for n, _ in got] == ["d/" + "a" * 120 + ".png", "d/é.cls", "e/b.cls"]
        assert got[0][1] == b"x" * 700


def test_keep_steps_over_members_and_their_long_names():
    """iter_members(keep=...): the kept files are exactly those of the full read, a skipped file's pax
    name never lands on the next one, and a skipped member's header is still checked."""
    buf = io.BytesIO()
    names = [("d/" + "a" * 120 + f"{i}.png" if i % 2 else f"d/{i}.png") for i in range(7)]
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        folder = tarfile.TarInfo("d")
        folder.type = tarfile.DIRTYPE
        tf.addfile(folder)  # a directory entry: not counted
        for i, name in enumerate(names):
            ti = tarfile.TarInfo(name)
            ti.size = 600 * i
            tf.addfile(ti, io.BytesIO(bytes([i]) * ti.size))
    raw = gzip.compress(buf.getvalue())
    full = list(iter_members(io.BytesIO(raw)))
    assert [n for n, _ in full] == names
    for part in range(3):
        got = list(iter_members(io.BytesIO(raw), keep=lambda i: i % 3 == part))
        assert got == full[part::3]
    bad = bytearray(buf.getvalue())
    last = bytes(bad).rindex(b"d/6.png")  # the last member's header, skipped by keep below
    bad[last + 1] ^= 1
    with pytest.raises(TarFormatError, match="checksum"):
        list(iter_members(io.BytesIO(bytes(bad)), keep=lambda i: i == 0))


def test_truncated_and_corrupt_tars_are_errors(rng):
    writer = ShardWriter("npy")
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    data = tar_bytes(writer.members([("k", 1, writer.encode(image))]))
    with pytest.raises(TarFormatError, match="truncated"):
        list(iter_members(io.BytesIO(data[:700])))
    bad = bytearray(data)
    bad[10] ^= 1
    with pytest.raises(TarFormatError, match="checksum"):
        list(iter_members(io.BytesIO(bytes(bad))))


def test_samples_group_members_and_reject_scattered_keys():
    data = tar_bytes([("a.cls", b"1"), ("a.npy", b"x"), ("b.cls", b"2"), ("a.png", b"y")])
    with pytest.raises(ShardFormatError, match="appears twice"):
        list(group_members(iter_members(io.BytesIO(data)), ""))


def test_sample_keys_are_opaque_salted_and_stable(fixed_key):
    salt = sample_key_salt(fixed_key)
    k = sample_key("train/cat/alice_smith.jpg", salt)
    assert len(k) == KEY_HEX_DIGITS and "alice" not in k
    assert k == sample_key("train/cat/alice_smith.jpg", salt)
    assert k != sample_key("train/cat/alice_smith.jpg", b"other salt")
    assert sample_key("x", salt) != k
    assert 0 <= shard_of(k, 7) < 7


def test_shard_paths_and_owner_names():
    assert shard_path("train", "hospital-a", 3) == "train/hospital-a-000003.tar"
    assert parse_shard_path("train/hospital-a-000003.tar") == ("train", "hospital-a", 3)
    for bad in ("../x", "a.b", "", "a/b"):
        with pytest.raises(ValueError):
            check_owner(bad)
    assert num_shards_for(0, 10) == 1 and num_shards_for(21, 10) == 3


def _manifest() -> Manifest:
    return Manifest(name="d", scheme="etc", scheme_params={"block_size": 16},
                    owners=[OwnerEntry("b", "id-b", {"train": 1}), OwnerEntry("a", "id-a", {"train": 2})],
                    class_names=["x", "y"], image_shape=[32, 32, 3], encoding="png",
                    shards=[ShardEntry("train/b-000000.tar", "b", "train", 1, 10240, "00"),
                            ShardEntry("train/a-000000.tar", "a", "train", 2, 10240, "11")])


def test_manifest_round_trip_index_and_timm_info(tmp_path):
    m = _manifest()
    placed = [("k2", "train/a-000000.tar"), ("k1", "train/a-000000.tar"), ("k3", "train/b-000000.tar")]
    rows = [{"key": k, "shard": s, "label": 1, "owner": s[6], "split": "train"} for k, s in placed]
    m.save(tmp_path, index=rows)
    back = Manifest.load(tmp_path)
    assert back.deterministic_dict() == m.deterministic_dict() and back.created
    assert [s.path for s in back.shards] == ["train/a-000000.tar", "train/b-000000.tar"]
    assert back.splits == {"train": 3} and back.num_samples("train", "a") == 2
    assert read_index(tmp_path).column("key").to_pylist() == ["k1", "k2", "k3"]
    info = json.loads((tmp_path / "_info.json").read_text())
    assert info["splits"]["train"]["num_samples"] == 3
    assert info["splits"]["train"]["shard_lengths"] == [2, 1]
    assert info["splits"]["train-a"]["filenames"] == ["train/a-000000.tar"]
    # timm's own parser accepts it
    from timm.data.readers.reader_wds import _parse_split_info

    si = _parse_split_info("train", info)
    assert si.num_samples == 3 and si.filenames == ("train/a-000000.tar", "train/b-000000.tar")


def test_manifest_refuses_other_formats(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something/9"}))
    with pytest.raises(ManifestError, match="format"):
        Manifest.load(tmp_path)
    assert "secret" not in _manifest().to_json()


# -- the loaders' fast path: samples, batch decoding, lcrypt-layout PNG ------------------------------
def _shard(rng, n=6, encoding="png", size=(8, 8), extra=()):
    writer = ShardWriter(encoding, jpeg_quality=90)
    members = writer.members([(f"{i:020x}", i % 10, writer.encode(rng.integers(0, 256, (*size, 3), np.uint8)))
                              for i in range(n)])
    return tar_bytes([*members, *extra])


def _as_samples(groups, url):
    return [(k, parts["cls"], e, parts[e], url) for k, parts in groups for e in parts if e in IMAGE_EXTS]


def test_samples_match_the_general_reader_plain_gzip_and_pax(rng):
    data = _shard(rng, 7)
    want = _as_samples(group_members(iter_members(io.BytesIO(data)), "u"), "u")
    assert _plain_tar_members(data) is not None  # the fast path is taken for lcrypt's own tars
    assert list(read_samples(data, "u")) == want and len(want) == 7
    assert list(read_samples(gzip.compress(data), "u")) == want  # general reader
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, body in iter_members(io.BytesIO(data)):
            ti = tarfile.TarInfo("dir/" + name if name.endswith("0.cls") or name.endswith("0.png") else name)
            ti.size = len(body)
            tf.addfile(ti, io.BytesIO(body))
    got = list(read_samples(buf.getvalue(), "u"))
    assert [r[0] for r in got] == [("dir/" if k.endswith("0") else "") + k for k, *_ in want]
    assert [r[1:] for r in got] == [r[1:] for r in want]


@pytest.mark.parametrize("extra, match", [
    ([("00000000000000000005.pyd", b"\x80\x04K\x01.")],
     r"u: sample '00000000000000000005' holds member\(s\) \.pyd.*refus"),
    ([("00000000000000000005.json", b"{}")], r"\.json.*refus"),
    ([("00000000000000000005.jpg", b"x")], "2 image members"),
    ([("zz.png", b"x")], "'zz' has no .cls member"),
    ([("zz.cls", b"1")], "'zz' has 0 image members"),
    ([("00000000000000000005.cls", b"1")], "two .cls members"),
    ([("zz.cls", b"1"), ("zz.jpeg", b"x")], r"\.jpeg.*refus"),
    ([("noext", b"1")], "has no extension"),
])
def test_samples_that_are_not_one_label_plus_one_image_are_refused(rng, extra, match):
    data = _shard(rng, 6, extra=extra)
    with pytest.raises(ShardFormatError, match=match):
        list(read_samples(data, "u"))


def test_samples_reject_scattered_keys_corrupt_and_truncated_tars(rng):
    data = tar_bytes([("a.cls", b"1"), ("a.png", b"x"), ("b.cls", b"2"), ("b.png", b"x"), ("a.npy", b"y")])
    with pytest.raises(ShardFormatError, match="appears twice"):
        list(read_samples(data, "u"))
    good = _shard(rng, 4)
    headers = [i for i in range(0, len(good), 512) if good[i + 257:i + 262] == b"ustar"]
    for off in (headers[0] + 10, headers[1] + 130, headers[5] + 140):  # a name, a size, a later mtime
        bad = bytearray(good)
        bad[off] ^= 0x01
        with pytest.raises(ShardFormatError, match="checksum|truncated"):
            list(read_samples(bytes(bad), "u"))
    for field, ok in [(b"%07o\0", True), (b" %06o\0", True), (b"zz%05o\0", False), (b"%06o\0 ", False)]:
        other = bytearray(good)  # header 1's checksum written in another (or a wrong) form
        h = headers[1]
        value = sum(other[h:h + 148]) + 256 + sum(other[h + 156:h + 512]) + (0 if ok else 1)
        other[h + 148:h + 156] = field % value
        assert len(other) == len(good)
        if ok:
            assert list(read_samples(bytes(other), "u")) == list(read_samples(good, "u"))
        else:
            with pytest.raises(ShardFormatError, match="checksum|not an octal number"):
                list(read_samples(bytes(other), "u"))
    for cut in (700, 5 * 1024 + 100, 512 * 3 + 5):
        with pytest.raises(ShardFormatError, match="truncated"):
            list(read_samples(good[:cut], "u"))


def _samples(blobs, ext="png", url="u"):
    return [(f"k{i}", str(i).encode(), ext, b, url) for i, b in enumerate(blobs)]


@pytest.mark.parametrize("shape", [(8, 8), (32, 32), (5, 17), (1, 1)])
def test_png_fast_path_equals_pillow(rng, shape):
    from PIL import Image

    imgs = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(5)]
    imgs[1][:] = 7  # compresses to almost nothing
    blobs = [encode_png(im) for im in imgs]
    assert all(png_raw_rows(b) is not None for b in blobs)
    batch, labels = decode_samples(_samples(blobs))
    assert batch.shape == (5, *shape, 3) and batch.flags.c_contiguous and labels.tolist() == list(range(5))
    for im, b, got in zip(imgs, blobs, batch):
        assert np.array_equal(got, im) and np.array_equal(got, np.asarray(Image.open(io.BytesIO(b))))
        assert np.array_equal(decode_member("k.png", b), im)


def _pillow_png(img, **kw):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG", **kw)
    return buf.getvalue()


def test_png_in_other_layouts_falls_back_to_pillow(rng):
    from PIL import PngImagePlugin

    img = np.tile(np.arange(32, dtype=np.uint8)[:, None, None] * 8, (1, 32, 3))  # rows Pillow filters
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "hello")
    foreign = [_pillow_png(img), _pillow_png(img, pnginfo=info), _pillow_png(img, optimize=True)]
    ours = encode_png(img)
    batch, _ = decode_samples(_samples([ours, *foreign, ours]))
    assert all(np.array_equal(b, img) for b in batch)
    batch, _ = decode_samples(_samples(foreign))
    assert all(np.array_equal(b, img) for b in batch)
    gray = _pillow_png(img[..., 0])
    with pytest.raises(ShardFormatError, match="u: k1.png: PNG mode L"):
        decode_samples(_samples([ours, gray]))


def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def _png(w, h, raw, compress=True):
    """A PNG in lcrypt's layout (IHDR, one IDAT, IEND, valid CRCs) around any ``raw`` rows."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw) if compress else raw) + _chunk(b"IEND", b""))


def test_malformed_lcrypt_pngs_are_errors_never_silent(rng):
    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    good = encode_png(img)
    raw = np.zeros((8, 25), np.uint8)
    raw[:, 1:] = img.reshape(8, 24)
    assert np.array_equal(decode_member("k.png", _png(8, 8, raw.tobytes())), img)
    ihdr_crc = bytearray(good)
    ihdr_crc[20] ^= 1  # width, CRC not updated
    idat_crc = bytearray(good)
    idat_crc[45] ^= 1  # compressed data, CRC not updated
    cases = {
        "IHDR chunk has a bad CRC": bytes(ihdr_crc),
        "IDAT chunk has a bad CRC": bytes(idat_crc),
        "not a valid zlib stream": _png(8, 8, b"\x78\x9c garbage that is not deflate", compress=False),
        "inflates to 150 bytes": _png(8, 8, raw.tobytes()[:150]),  # image smaller than its header
        "inflates to 201\\+ bytes": _png(8, 8, raw.tobytes() + b"\0" * 9),  # image bigger than its header
        "with trailing data: True": _png(8, 8, zlib.compress(raw.tobytes()) + b"tail", compress=False),
        "exceeds": _png(1 << 14, 1 << 14, b""),
        "is empty": _png(0, 8, b""),
    }
    for match, blob in cases.items():
        with pytest.raises(ShardFormatError, match=match):
            decode_member("k.png", blob)
        with pytest.raises(ShardFormatError, match=f"u: k1.png: .*{match}"):
            decode_samples(_samples([good, blob]))
    bad_filter = raw.copy()
    bad_filter[3, 0] = 9  # not a PNG filter type: Pillow refuses it too
    with pytest.raises(ShardFormatError, match="k1.png"):
        decode_samples(_samples([good, _png(8, 8, bad_filter.tobytes())]))


def test_batches_refuse_mixed_shapes_and_damaged_jpegs(rng):
    def jpeg(h, w):
        return encode_image(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "jpeg", 90)

    blobs = [jpeg(16, 16) for _ in range(4)]
    batch, _ = decode_samples(_samples(blobs, "jpg"))
    for b, got in zip(blobs, batch):
        assert np.array_equal(got, decode_member("k.jpg", b))
    for odd, match in [(jpeg(8, 16), r"\(8, 16, 3\), but this batch's images are \(16, 16, 3\)"),
                       (jpeg(32, 32), "buffer is too small"), (blobs[0][:-40], "cannot decode .jpg"),
                       (b"\xff\xd8 not a jpeg", "cannot decode .jpg")]:
        with pytest.raises(ShardFormatError, match=rf"u: k2.jpg: .*{match}"):
            decode_samples(_samples([blobs[0], blobs[1], odd], "jpg"))
    with pytest.raises(ShardFormatError, match="k0.jpg: cannot decode"):
        decode_samples(_samples([b"junk", blobs[0]], "jpg"))
    pngs = [encode_png(rng.integers(0, 256, s, dtype=np.uint8)) for s in [(8, 8, 3), (8, 8, 3), (4, 8, 3)]]
    with pytest.raises(ShardFormatError, match=r"k2.png: image is \(4, 8\)"):
        decode_samples(_samples(pngs))
    npys = [encode_image(rng.integers(0, 256, s, dtype=np.uint8), "npy") for s in [(8, 8, 3), (4, 8, 3)]]
    with pytest.raises(ShardFormatError, match=r"k1.npy: image is \(4, 8, 3\)"):
        decode_samples(_samples(npys, "npy"))
    mixed = [(f"k{i}", b"1", e, b, "") for i, (e, b) in enumerate([("npy", npys[0]), ("png", pngs[0]),
                                                                     ("jpg", jpeg(8, 8))])]
    assert decode_samples(mixed)[0].shape == (3, 8, 8, 3)
    with pytest.raises(ShardFormatError, match="not an lcrypt image"):
        decode_samples([("k", b"1", "pyd", b"\x80\x04K\x01.", "")])


def test_labels_parse_like_decode_label():
    ok = [b"0", b"7", b"123", b"-1", b" 4\n", b"0007"]
    assert decode_labels(ok).tolist() == [decode_label(b) for b in ok] == [0, 7, 123, -1, 4, 7]
    assert decode_labels(ok).dtype == np.int64
    for bad in (b"", b"cat", b"1_0", b"+1", b"1.5", b"\xff", b"9" * 30, b"1" * 5000):
        with pytest.raises(ShardFormatError):
            decode_labels([b"1", bad])
    png = encode_png(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ShardFormatError, match="u: k1.cls: .cls member is not a decimal"):
        decode_samples([("k0", b"1", "png", png, "u"), ("k1", b"one", "png", png, "u")])
