"""Loaders over real shards made by the real `prepare` pipeline: planning, ranks, workers, resume, safety."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lcrypt import Key, get_scheme
from lcrypt.format import Manifest, ShardFormatError, decode_shard, write_tar
from lcrypt.tarstream import iter_members
from loaders import plan as planning
from loaders.augment import AugmentConfig, EncryptedAugment, grid_flip, grid_translate, normalize
from loaders.dataset import KeyMismatchError, ShardDataset, shuffle_buffer
from loaders.gpu import GPUResident, read_split
from loaders.torch_dataset import make_loader

CLASSES = ("red", "green", "blue")


def write_color_tree(root: Path, per_class: dict[str, int], size: int = 16, seed: int = 0) -> None:
    """An ImageFolder of PNGs whose class is its dominant colour (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c, name in enumerate(CLASSES):
            for i in range(n):
                img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
                img[..., c] += 150
                path = root / split / name / f"{name}_{i:03d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(path)


def make_dataset(root: Path, scheme: str = "pe", params: tuple[str, ...] = (), per_class=None,
                 shard_size: int = 7, key_name: str = "alice") -> tuple[Path, Key]:
    """Tiny encrypted dataset written by pipelines.prepare (the real Beam pipeline)."""
    from pipelines.prepare import run

    write_color_tree(root / "src", per_class or {"train": 20, "test": 6})
    key = Key.generate(key_name)
    key.save(root / f"{key_name}.key")
    argv = ["--source", str(root / "src"), "--scheme", scheme, *params,
            "--keys", str(root / f"{key_name}.key"), "--out", str(root / "data"),
            "--shard-size", str(shard_size), "--quiet"]
    assert run(argv) == 0
    return root / "data", key


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    data, key = make_dataset(root)
    return {"data": data, "key": key, "root": root, "manifest": Manifest.load(data)}


def all_keys(m: Manifest, split: str, base: Path) -> list[str]:
    return [k for e in m.shards_for(split) for k, _, _ in decode_shard(base / e.path)]


# -- planning -------------------------------------------------------------------------------------
@pytest.mark.parametrize("counts,world,workers,batch", [([7, 3, 10, 1, 9], 2, 2, 4), ([5], 3, 1, 1),
                                                        ([4, 4, 4, 13], 4, 3, 2), ([2, 9, 6], 2, 4, 3)])
def test_plan_gives_equal_batches_and_disjoint_ranges(counts, world, workers, batch):
    for epoch in range(3):
        plans = [planning.plan_epoch(counts, batch, r, world, workers, seed=1, epoch=epoch)
                 for r in range(world)]
        assert len({p.num_batches for p in plans}) == 1  # the property that keeps DDP from hanging
        seen = []
        for p in plans:
            assert sum(w.num_samples for w in p.workers) == p.num_samples == p.num_batches * batch
            for w in p.workers:
                assert sum(len(pc) for pc in w.pieces) == w.num_samples
                seen += [(pc.shard, i) for pc in w.pieces for i in range(pc.start, pc.stop)]
        assert len(seen) == len(set(seen))
        total = sum(counts)
        assert total - len(seen) < world * batch
    cover = [planning.plan_epoch(counts, batch, r, world, workers, cover_all=True, drop_last=False,
                                 shuffle=False)
             for r in range(world)]
    assert sum(p.num_samples for p in cover) == sum(counts)


def test_plan_step_order_matches_consumed_batches():
    p = planning.plan_epoch([10, 7, 9], 2, 0, 1, 3, seed=0, epoch=0)
    order = p and planning.step_order(p)
    assert sorted(order) == list(range(p.num_batches))
    for step in range(p.num_batches + 1):
        for w in range(3):
            used = sum(1 for k in range(step) if planning.worker_of_step(k, 3) == w)
            assert planning.consumed_batches(step, w, 3) == min(used, p.workers[w].num_batches)


# -- streaming over real shards --------------------------------------------------------------------
def epoch_keys(data: Path, rank: int, world: int, workers: int, epoch: int, batch: int = 4,
               start_step: int = 0, **kw) -> list[list[str]]:
    loader, ds = make_loader(data, "train", batch, rank=rank, world=world, num_workers=workers, seed=3, **kw)
    ds.set_epoch(epoch, start_step)
    out = []
    for b in loader:
        assert b["image"].dtype == torch.uint8 and b["image"].shape[1:] == (16, 16, 3)
        assert len(b["label"]) == len(b["key"]) == batch
        out.append(list(b["key"]))
    assert len(out) == len(ds) - start_step
    return out


def test_ranks_and_workers_see_each_sample_once_per_epoch(dataset):
    m = dataset["manifest"]
    counts = [e.count for e in m.shards_for("train")]
    assert len(set(counts)) > 1  # uneven shards
    keys = all_keys(m, "train", dataset["data"])
    assert len(keys) == 60
    per_epoch = []
    for epoch in (0, 1):
        ranks = [epoch_keys(dataset["data"], r, 2, 2, epoch, batch=5) for r in range(2)]
        assert len(ranks[0]) == len(ranks[1]) == 6
        flat = [k for r in ranks for b in r for k in b]
        assert sorted(flat) == sorted(keys)  # 60 = 2 ranks x 6 batches x 5: each exactly once
        per_epoch.append(flat)
    assert per_epoch[0] != per_epoch[1]  # reshuffled each epoch
    again = [k for r in range(2) for b in epoch_keys(dataset["data"], r, 2, 2, 1, batch=5) for k in b]
    assert again == per_epoch[1]  # and deterministic


def test_resume_mid_epoch_yields_exactly_the_rest(dataset):
    full = epoch_keys(dataset["data"], 1, 2, 2, epoch=2, batch=3)
    for start in (1, 4, len(full) - 1):
        rest = epoch_keys(dataset["data"], 1, 2, 2, epoch=2, batch=3, start_step=start)
        assert rest == full[start:]


def test_labels_and_pixels_are_the_shards(dataset):
    loader, ds = make_loader(dataset["data"], "test", 4, shuffle=False, drop_last=False, cover_all=True)
    truth = {k: (img, lab) for e in dataset["manifest"].shards_for("test")
             for k, img, lab in decode_shard(dataset["data"] / e.path)}
    n = 0
    for b in loader:
        for k, img, lab in zip(b["key"], b["image"], b["label"]):
            assert np.array_equal(img.numpy(), truth[k][0]) and int(lab) == truth[k][1]
            n += 1
    assert n == len(truth) == 18


def reference_batches(ds: ShardDataset, start_step: int = 0) -> list[tuple[list[str], np.ndarray, list[int]]]:
    """The rank's batches computed one sample at a time: samples decoded one by one by the streaming
    reader (decode_shard), one ``rng.integers`` call per shuffled sample, then the DataLoader's round
    robin over the workers. The loader must give exactly these batches."""
    plan = ds.plan()
    per_worker = []
    for w, wp in enumerate(plan.workers):
        samples = []
        for pc in wp.pieces:
            samples += list(decode_shard(ds.urls[pc.shard]))[pc.start:pc.stop]
        if ds.shuffle and ds.buffer > 1:
            rng = np.random.default_rng([ds.seed, plan.epoch, plan.rank, w, 0xB0FF])
            buf, out = [], []
            for s in samples:
                if len(buf) < ds.buffer:
                    buf.append(s)
                    continue
                j = int(rng.integers(len(buf)))
                buf[j], s = s, buf[j]
                out.append(s)
            samples = out + [buf[j] for j in rng.permutation(len(buf))]
        per_worker.append([samples[i:i + ds.batch_size] for i in range(0, len(samples), ds.batch_size)])
    batches = []
    for b in planning.step_order(plan)[start_step:]:
        w = max(i for i, wp in enumerate(plan.workers) if wp.first_batch <= b and wp.num_batches)
        decoded = per_worker[w][b - plan.workers[w].first_batch]
        batches.append(([key for key, _, _ in decoded], np.stack([img for _, img, _ in decoded]),
                        [lab for _, _, lab in decoded]))
    return batches


@pytest.mark.parametrize("rank,world,workers,batch,buffer,epoch,start", [
    (0, 1, 1, 4, 5, 0, 0), (1, 2, 2, 3, 4, 1, 0), (0, 2, 2, 5, 2000, 2, 0), (1, 2, 3, 2, 3, 0, 4),
    (0, 1, 2, 7, 6, 3, 3)])
def test_loader_batches_equal_the_per_sample_reference(dataset, rank, world, workers, batch, buffer, epoch,
                                                       start):
    ds = ShardDataset(dataset["data"], "train", batch, rank=rank, world=world, num_workers=workers, seed=5,
                      buffer=buffer)
    ds.set_epoch(epoch, start)
    got = list(ds)
    want = reference_batches(ds, start)
    assert len(got) == len(want) == len(ds) - start
    for g, (keys, images, labels) in zip(got, want):
        assert g["key"] == keys and g["label"].tolist() == labels and g["label"].dtype == torch.int64
        assert g["image"].dtype == torch.uint8 and np.array_equal(g["image"].numpy(), images)


def test_block_drawn_shuffle_is_the_one_by_one_shuffle():
    for size, total in [(5, 40), (7, 7), (10, 3), (3, 10_000), (4096, 9000), (1, 5)]:
        for announced in (total, None, total + 3):  # a wrong total only loses the speed-up, never the order
            want = list(shuffle_buffer(iter(range(total)), size, np.random.default_rng([size, total])))
            got = list(shuffle_buffer(iter(range(total)), size, np.random.default_rng([size, total]),
                                      announced))
            if announced == total + 3:  # drew 3 more than needed: only the final permutation may differ
                assert got[:max(0, total - size)] == want[:max(0, total - size)]
            else:
                assert got == want
            assert sorted(got) == list(range(total))


def _rewrite_largest_train_shard(dataset, tmp_path: Path, edit) -> tuple[Path, str]:
    """A copy of the dataset whose largest train shard's member list went through ``edit``; returns the
    copy and that shard's path. The largest, because the edits touch members 2-4 and the samples fall
    into shards by a hash of a fresh key: the first shard may hold a single sample."""
    data = tmp_path / "data"
    shutil.copytree(dataset["data"], data)
    m = Manifest.load(data)
    entry = max(m.shards_for("train"), key=lambda e: e.count)
    assert entry.count >= 3
    with open(data / entry.path, "rb") as f:
        members = edit(list(iter_members(f)))
    entry.bytes, entry.sha256 = write_tar(data / entry.path, members)
    m.save(data)
    return data, entry.path


@pytest.mark.parametrize("edit, match", [
    (lambda ms: ms[:2] + ms[3:], "has no .cls member"),
    (lambda ms: ms[:2] + [(ms[1][0].replace(".png", ".npy"), ms[1][1])] + ms[2:], "2 image members"),
    (lambda ms: [(n, b[:50] + bytes([b[50] ^ 0xFF]) + b[51:]) if n.endswith(".png") and i == 3 else (n, b)
                 for i, (n, b) in enumerate(ms)], "IDAT chunk has a bad CRC"),
    (lambda ms: [(n, b"x") if i == 4 else (n, b) for i, (n, b) in enumerate(ms)],
     "not a decimal class index"),
])
def test_malformed_samples_are_refused_naming_shard_and_member(dataset, tmp_path, edit, match):
    data, shard = _rewrite_largest_train_shard(dataset, tmp_path, edit)
    loader, _ = make_loader(data, "train", 4, shuffle=False)
    with pytest.raises(ShardFormatError, match=rf"{shard}: .*{match}"):
        for _ in loader:
            pass
    with pytest.raises(ShardFormatError, match=match):
        read_split(data, "train")


class _Boom:
    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled"))


def _poisoned_copy(dataset, tmp_path: Path, member_ext: str) -> tuple[Path, Path]:
    """Copy the dataset and put a pickle member (that would write a file when loaded) into one shard."""
    data = tmp_path / "data"
    shutil.copytree(dataset["data"], data)
    marker = tmp_path / "pwned.txt"
    boom = _Boom()
    boom.marker = str(marker)
    m = Manifest.load(data)
    entry = m.shards_for("train")[0]
    members = []
    with open(data / entry.path, "rb") as f:
        for i, (name, body) in enumerate(iter_members(f)):
            members.append((name, body))
            if i == 1:
                members.append((name.split(".")[0] + "." + member_ext, pickle.dumps(boom)))
    size, digest = write_tar(data / entry.path, members)
    entry.bytes, entry.sha256 = size, digest
    m.save(data)
    return data, marker


@pytest.mark.parametrize("ext", ["pyd", "pickle", "pth"])
def test_pickle_members_are_refused_never_loaded(dataset, tmp_path, ext):
    data, marker = _poisoned_copy(dataset, tmp_path, ext)
    for workers in ((0, 2) if ext == "pyd" else (0,)):  # a failing worker costs DataLoader ~10 s to shut down
        loader, ds = make_loader(data, "train", 4, num_workers=workers, shuffle=False)
        with pytest.raises(Exception, match=rf"\.{ext}.*refus"):
            for _ in loader:
                pass
    with pytest.raises(ShardFormatError, match=ext):
        read_split(data, "train")
    assert not marker.exists()


def test_sha256_and_key_id_checks(dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(dataset["data"], data)
    entry = Manifest.load(data).shards_for("train")[1]
    raw = bytearray((data / entry.path).read_bytes())
    idx = raw.index(b"\x89PNG") + 40  # inside a PNG's compressed data: same size, still a valid tar
    raw[idx] ^= 0xFF
    (data / entry.path).write_bytes(bytes(raw))
    loader, _ = make_loader(data, "train", 4, shuffle=False, verify_sha256=True)
    with pytest.raises(ShardFormatError, match="sha256"):
        for _ in loader:
            pass
    with pytest.raises(KeyMismatchError, match="key ids"):
        ShardDataset(dataset["data"], expect_key_ids=[Key.generate("mallory").key_id])
    ShardDataset(dataset["data"], expect_key_ids=[dataset["key"].key_id])  # the right key passes


def test_gpu_resident_mode_ranks_resume_and_content(dataset):
    images, labels, keys = read_split(dataset["data"], "train")
    assert images.shape == (60, 16, 16, 3) and len(set(keys)) == 60
    ranks = [GPUResident(images, labels, 5, device="cpu", rank=r, world=2, seed=1) for r in range(2)]
    for r in ranks:
        r.set_epoch(3)
    idx = [torch.cat([b["index"] for b in r]) for r in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 6
    assert sorted(torch.cat(idx).tolist()) == list(range(60))
    ranks[1].set_epoch(3, start_step=2)
    rest = torch.cat([b["index"] for b in ranks[1]])
    assert torch.equal(rest, idx[1][10:])
    b = next(iter(ranks[1]))
    assert torch.equal(b["image"], torch.from_numpy(images)[b["index"]])


# -- augmentation ---------------------------------------------------------------------------------
def test_normalisation_makes_negative_positive_a_sign_flip():
    x = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    assert torch.equal(normalize(255 - x), -normalize(x))
    assert normalize(x).shape == (2, 3, 8, 8)


def test_block_grid_moves_keep_every_block_intact():
    g = 4
    x = torch.randn(6, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    for out in (grid_flip(x, g, "h", 1.0, gen), grid_flip(x, g, "v", 1.0, gen), grid_translate(x, g, 4, gen)):
        blocks_in = {tuple(x[n, :, i:i + g, j:j + g].flatten().tolist()) for n in range(6)
                     for i in range(0, 16, g) for j in range(0, 16, g)}
        for n in range(6):
            for i in range(0, 16, g):
                for j in range(0, 16, g):
                    blk = out[n, :, i:i + g, j:j + g]
                    assert tuple(blk.flatten().tolist()) in blocks_in or bool((blk == 0).all())
    flipped = grid_flip(x, g, "h", 1.0, gen)
    assert torch.equal(flipped[:, :, :, :g], x[:, :, :, -g:])  # last block moved to the front, not mirrored
    assert torch.equal(grid_flip(x, 1, "h", 1.0, gen), x.flip(3))  # pixel grid: an ordinary flip


def test_augmentations_come_from_the_scheme_properties():
    for name, params in [("etc", {"block_size": 8}), ("pe", {}), ("le", {"block_size": 4})]:
        info = get_scheme(name, **params).info.as_dict(16, 16)
        aug = EncryptedAugment(info, 3, AugmentConfig(translate=4, mixup=0.8, cutmix=1.0))
        assert aug.hflip == ("hflip" in info["augmentations"])
        assert bool(aug.translate) == ("translate" in info["augmentations"])
        assert aug.grid == info["aug_grid"]
    etc = EncryptedAugment(get_scheme("etc", block_size=8).info.as_dict(16, 16), 3,
                           AugmentConfig(mixup=0.0, cutmix=1.0, mix_prob=1.0))
    x = torch.arange(4 * 3 * 16 * 16, dtype=torch.float32).reshape(4, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0])
    for seed in range(5):
        out, target = etc(x.clone(), y, torch.Generator().manual_seed(seed), np_seed=(seed,))
        changed = (out != x).any(1)  # (B, H, W)
        rows, cols = changed[0].any(1).nonzero(), changed[0].any(0).nonzero()
        if len(rows):  # CutMix box edges sit on the 8-pixel block grid
            assert rows.min() % 8 == 0 and (rows.max() + 1) % 8 == 0
            assert cols.min() % 8 == 0 and (cols.max() + 1) % 8 == 0
        assert torch.allclose(target.sum(1), torch.ones(4))
