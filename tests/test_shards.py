"""lcrypt.shards and lcrypt.manifest: the one shard format and manifest schema."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import numpy as np
import pytest

from lcrypt import shards
from lcrypt.manifest import Manifest, ManifestError, OwnerEntry, ShardEntry, read_index


@pytest.mark.parametrize("encoding", ["png", "npy"])
def test_lossless_encodings_round_trip_bit_for_bit(encoding, rng):
    img = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    members = shards.encode_sample("k0", img, 7, encoding)
    assert [n for n, _ in members] == ["k0.cls", f"k0.{shards.IMAGE_EXT[encoding]}"]
    assert shards.decode_label(members[0][1]) == 7
    assert np.array_equal(shards.decode_image(*members[1]), img)


def test_png_is_a_standard_png_pillow_reads(rng):
    from PIL import Image

    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(shards.encode_png(img)))), img)


def test_jpeg_encoding_honours_quality_and_subsampling(rng):
    img = np.repeat(np.repeat(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), 8, 0), 8, 1)
    hi = shards.encode_image(img, "jpeg", 95)
    lo = shards.encode_image(img, "jpeg", 30, "420")
    assert len(lo) < len(hi)
    import simplejpeg

    assert simplejpeg.decode_jpeg_header(lo)[3] == "420"
    assert np.abs(shards.decode_image("a.jpg", hi).astype(int) - img).mean() < 3
    with pytest.raises(ValueError, match="jpeg_quality"):
        shards.encode_image(img, "jpeg", None)


@pytest.mark.parametrize("name, data", [
    ("x.pyd", b"\x80\x04K\x01."), ("x.pickle", b"\x80\x04K\x01."), ("x.json", b"{}"), ("x.txt", b"1")])
def test_decoding_refuses_pickles_and_unknown_types(name, data):
    with pytest.raises(shards.ShardFormatError, match="refused|not an lcrypt image"):
        shards.decode_image(name, data)


def test_npy_with_objects_is_refused():
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(shards.ShardFormatError):
        shards.decode_image("x.npy", buf.getvalue())


def test_malformed_labels_and_images_name_the_member():
    with pytest.raises(shards.ShardFormatError, match="decimal"):
        shards.decode_label(b"cat")
    with pytest.raises(shards.ShardFormatError, match="k.png"):
        shards.decode_image("k.png", b"\x89PNG\r\n\x1a\ntruncated")


def test_tar_is_deterministic_and_readable_by_tarfile_and_webdataset(tmp_path, rng):
    members = [m for i in range(5)
               for m in shards.encode_sample(f"{i:020x}", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), i, "png")]
    a, b = shards.tar_bytes(members), shards.tar_bytes(members)
    assert a == b and len(a) % shards.TAR_RECORD == 0
    size, digest = shards.write_tar(tmp_path / "s.tar", members)
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


def test_streaming_reader_handles_gzip_pax_and_long_names():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in [("d/" + "a" * 120 + ".png", b"x" * 700), ("d/é.cls", b"3"), ("e/b.cls", b"")]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    for stream in (raw, gzip.compress(raw)):
        got = list(shards.iter_members(io.BytesIO(stream)))
        assert [n for n, _ in got] == ["d/" + "a" * 120 + ".png", "d/é.cls", "e/b.cls"]
        assert got[0][1] == b"x" * 700


def test_truncated_and_corrupt_tars_are_errors(rng):
    members = shards.encode_sample("k", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), 1, "npy")
    data = shards.tar_bytes(members)
    with pytest.raises(shards.ShardFormatError, match="truncated"):
        list(shards.iter_members(io.BytesIO(data[:700])))
    bad = bytearray(data)
    bad[10] ^= 1
    with pytest.raises(shards.ShardFormatError, match="checksum"):
        list(shards.iter_members(io.BytesIO(bytes(bad))))


def test_samples_group_members_and_reject_scattered_keys():
    data = shards.tar_bytes([("a.cls", b"1"), ("a.npy", b"x"), ("b.cls", b"2"), ("a.png", b"y")])
    with pytest.raises(shards.ShardFormatError, match="appears twice"):
        list(shards.iter_samples(io.BytesIO(data)))


def test_sample_keys_are_opaque_salted_and_stable(fixed_key):
    salt = shards.sample_key_salt(fixed_key)
    k = shards.sample_key("train/cat/alice_smith.jpg", salt)
    assert len(k) == shards.KEY_HEX_DIGITS and "alice" not in k
    assert k == shards.sample_key("train/cat/alice_smith.jpg", salt)
    assert k != shards.sample_key("train/cat/alice_smith.jpg", b"other salt")
    assert shards.sample_key("x", salt) != k
    assert 0 <= shards.shard_of(k, 7) < 7


def test_shard_paths_and_owner_names():
    assert shards.shard_path("train", "hospital-a", 3) == "train/hospital-a-000003.tar"
    assert shards.parse_shard_path("train/hospital-a-000003.tar") == ("train", "hospital-a", 3)
    for bad in ("../x", "a.b", "", "a/b"):
        with pytest.raises(ValueError):
            shards.check_owner(bad)
    assert shards.num_shards_for(0, 10) == 1 and shards.num_shards_for(21, 10) == 3


def _manifest() -> Manifest:
    return Manifest(name="d", scheme="etc", scheme_params={"block_size": 16},
                    owners=[OwnerEntry("b", "id-b", {"train": 1}), OwnerEntry("a", "id-a", {"train": 2})],
                    class_names=["x", "y"], image_shape=[32, 32, 3], encoding="png",
                    shards=[ShardEntry("train/b-000000.tar", "b", "train", 1, 10240, "00"),
                            ShardEntry("train/a-000000.tar", "a", "train", 2, 10240, "11")])


def test_manifest_round_trip_index_and_timm_info(tmp_path):
    m = _manifest()
    rows = [{"key": k, "shard": s, "label": 1, "owner": s[6], "split": "train"}
            for k, s in [("k2", "train/a-000000.tar"), ("k1", "train/a-000000.tar"), ("k3", "train/b-000000.tar")]]
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
