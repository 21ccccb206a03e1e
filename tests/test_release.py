"""`lcrypt release` and `lcrypt verify RELEASE`: the layout, what is never published, signatures that
catch a recomputed manifest, an edited key id and a re-signed release, versions, and bad input refused
in one line with nothing written."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import shutil
import subprocess
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from PIL import Image

from lcrypt import Key
from lcrypt.errors import UserError
from lcrypt.format import Manifest, read_index
from lcrypt.format.index import index_bytes
from lcrypt.keys import verify_signature
from lcrypt.signatures import parse_sha256sums, sha256sums, signature_json, statement
from lcrypt.storage import LOCAL
from lcrypt.verify import check
from tests.test_loader import write_color_tree

ROOT = Path(__file__).resolve().parents[1]
OWN_FILES = {"README.md", "croissant.json", "SHA256SUMS", "preview.png", "rejections.json", "keys.pub.json",
             "release.json", "manifest.json", "index.parquet", "_info.json"}


def make_two_owner_dataset(root: Path, per_class: dict[str, int] | None = None) -> dict:
    """A prepared dataset: alice owns the red images, bob green and blue; one broken file is rejected."""
    from pipelines.prepare import run

    write_color_tree(root / "src", per_class or {"train": 6, "test": 2})
    (root / "src" / "train" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    keys = {"alice": Key.generate("alice"), "bob": Key.generate("bob")}
    (root / "keys").mkdir()
    for name, key in keys.items():
        key.save(root / "keys" / f"{name}.key")
    owners = {"alice": {"key": "alice.key", "match": ["*/red/*"]},
              "bob": {"key": "bob.key", "match": ["*/green/*", "*/blue/*"]}}
    (root / "keys" / "owners.json").write_text(json.dumps(owners))
    assert run(["--source", str(root / "src"), "--keys", str(root / "keys" / "owners.json"), "--out",
                str(root / "data"), "--name", "colors", "--scheme", "etc", "--param", "block_size=8",
                "--shard-size", "4", "--max-reject-rate", "0.5", "--quiet"]) == 0
    return {"data": root / "data", "keys": keys, "owners": root / "keys" / "owners.json", "root": root}


def lcrypt(argv: list[str]) -> int:
    """`lcrypt ARGV` with the release plugin registered as pyproject declares it (the installed metadata
    may predate it)."""
    import lcrypt.cli as cli

    real = cli.entry_points

    def entry_points(group: str):
        found = [e for e in real(group=group) if e.name != "release"]
        return found + [EntryPoint("release", "lcrypt.release.command:add_command", group)]

    cli.entry_points = entry_points
    try:
        return cli.main(argv)
    finally:
        cli.entry_points = real


def release(ds: dict, out: Path, *extra: str, version: str = "1.0.0") -> int:
    return lcrypt(["release", str(ds["data"]), "--version", version, "--license", "CC-BY-4.0", "--out",
                   str(out), *extra])


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (folders as None): equal trees mean nothing was written or left."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_two_owner_dataset(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def released(ds):
    out = ds["root"] / "releases"
    assert release(ds, out, "--keys", str(ds["owners"]), "--title", "Colours", "--creator", "Lab") == 0
    return out / "1.0.0"


@pytest.fixture
def forged(released, tmp_path):
    """A copy of the release to tamper with."""
    shutil.copytree(released, tmp_path / "1.0.0")
    return tmp_path / "1.0.0"


def test_pyproject_declares_the_release_plugin():
    body = tomllib.loads((ROOT / "pyproject.toml").read_text())
    plugins = body["project"]["entry-points"]["lcrypt.commands"]
    assert plugins["release"] == "lcrypt.release.command:add_command"
    assert any(d.startswith("cryptography") for d in body["project"]["dependencies"])
    dev = {d.split(">")[0] for d in body["project"]["optional-dependencies"]["dev"]}
    assert {"datasets", "mlcroissant"} <= dev


def test_release_holds_exactly_what_it_knows_and_verifies(ds, released, capsys):
    m = Manifest.load(ds["data"])
    files = {p.relative_to(released).as_posix() for p in released.rglob("*") if p.is_file()}
    assert files == OWN_FILES | {s.path for s in m.shards} | {"signatures/alice.sig", "signatures/bob.sig"}
    assert not list(released.parent.glob(".staging-*"))
    for s in m.shards:  # byte-identical copies
        assert (released / s.path).read_bytes() == (ds["data"] / s.path).read_bytes()
    # errors.jsonl names source files: only counts by reason are published, and no file name anywhere
    errors = [json.loads(line) for line in (ds["data"] / "errors.jsonl").read_text().splitlines()]
    assert errors and json.loads((released / "rejections.json").read_text())["total"] == len(errors)
    blob = b"".join((released / f).read_bytes() for f in files)
    assert not any(Path(e["source"]).name.encode() in blob for e in errors)
    for key in ds["keys"].values():
        assert key._secret.hex().encode() not in blob and key.legacy_key_id.encode() not in blob
    # SHA256SUMS is what `sha256sum -c` reads, and covers every file but itself and the signatures
    sums = parse_sha256sums((released / "SHA256SUMS").read_bytes())
    assert set(sums) == files - {"SHA256SUMS", "signatures/alice.sig", "signatures/bob.sig"}
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=released, check=True)
    # each signature is Ed25519 over the canonical statement of every file but signatures/
    digests = {f: hashlib.sha256((released / f).read_bytes()).hexdigest() for f in files
               if not f.startswith("signatures/")}
    message = statement("colors", "1.0.0", digests)
    assert message == json.dumps(json.loads(message), sort_keys=True, separators=(",", ":")).encode()
    for owner, key in ds["keys"].items():
        sig = json.loads((released / "signatures" / f"{owner}.sig").read_text())
        assert verify_signature(key.public_key, message, base64.b64decode(sig["signature"]))
    with Image.open(released / "preview.png") as im:
        assert im.size[0] > 0
    capsys.readouterr()
    ids = [f"--key-id={o}={k.key_id}" for o, k in ds["keys"].items()]
    assert lcrypt(["verify", str(released), *ids]) == 0
    out = capsys.readouterr().out
    assert f"alice signed colors 1.0.0 with key {ds['keys']['alice'].key_id} (the key you trust)" in out
    assert lcrypt(["verify", str(released)]) == 0
    assert "this proves integrity, not origin" in capsys.readouterr().out


def _rewrite_sums(folder: Path) -> None:
    files = {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in folder.rglob("*") if p.is_file() and p.name != "SHA256SUMS"
             and not p.relative_to(folder).as_posix().startswith("signatures/")}
    (folder / "SHA256SUMS").write_bytes(sha256sums(files))


def test_a_removed_shard_with_manifest_index_and_sums_recomputed_fails_on_the_signatures(forged):
    m = Manifest.load(forged)
    gone = next(s for s in m.shards if s.owner == "bob")
    (forged / gone.path).unlink()
    m.shards = [s for s in m.shards if s.path != gone.path]
    m.splits[gone.split] -= gone.count
    owner = m.owner("bob")
    owner.counts[gone.split] -= gone.count
    for stat in m.stats:
        if (stat["split"], stat["owner"]) == (gone.split, "bob"):
            stat["written"] -= gone.count
            stat["read"] -= gone.count
    rows = [r for r in read_index(forged).to_pylist() if r["shard"] != gone.path]
    (forged / "index.parquet").write_bytes(index_bytes(rows))
    m.save(forged)
    _rewrite_sums(forged)
    found = check(forged)
    # the dataset itself is consistent again: only the signatures can tell
    assert found.problems and all(p.startswith("signatures/") for p in found.problems), found.problems
    assert any("alice" in p and "does not match the release's files" in p for p in found.problems)


def test_an_edited_key_id_in_the_manifest_fails(forged, ds):
    body = json.loads((forged / "manifest.json").read_text())
    body["owners"][0]["key_id"] = Key.generate("x").key_id
    (forged / "manifest.json").write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    _rewrite_sums(forged)
    problems = check(forged).problems
    assert any(p.startswith("manifest.json: owner alice has key id") and "keys.pub.json says" in p
               for p in problems), problems


def test_a_release_re_signed_with_another_key_fails_against_the_owners_key(forged, ds, released, capsys):
    """Mallory edits the data, swaps in her key under alice's name (manifest and keys.pub.json), re-signs:
    the release is consistent with itself, and only the owner's published key exposes it."""
    mallory = Key.generate("alice")
    for name in ("manifest.json", "keys.pub.json"):
        text = (forged / name).read_text().replace(ds["keys"]["alice"].key_id, mallory.key_id)
        body = json.loads(text)
        if name == "keys.pub.json":
            body["owners"]["alice"]["public_key"] = base64.b64encode(mallory.public_key).decode()
        (forged / name).write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    (forged / "signatures" / "bob.sig").unlink()
    info = json.loads((forged / "release.json").read_text())
    info["signers"] = ["alice"]
    (forged / "release.json").write_text(json.dumps(info))
    _rewrite_sums(forged)
    digests = {p.relative_to(forged).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in forged.rglob("*") if p.is_file() and "signatures" not in p.parts}
    message = statement("colors", "1.0.0", digests)
    (forged / "signatures" / "alice.sig").write_bytes(signature_json(mallory, message))
    assert check(forged).problems == []  # consistent with itself: integrity only, and it says so
    real = ds["keys"]["alice"].key_id
    assert lcrypt(["verify", str(forged), f"--key-id=alice={real}"]) == 1
    assert f"not the trusted {real} (re-signed by someone else?)" in capsys.readouterr().err
    assert lcrypt(["verify", str(forged), "--public-keys", str(released / "keys.pub.json")]) == 1
    err = capsys.readouterr().err
    assert "re-signed by someone else" in err and "owner bob: no valid signature under the trusted key" in err


def test_an_unsigned_release_says_so_and_fails_a_trust_check(ds, tmp_path, capsys):
    assert release(ds, tmp_path / "rel", "--unsigned") == 0
    folder = tmp_path / "rel" / "1.0.0"
    assert not (folder / "signatures").exists()
    capsys.readouterr()
    assert lcrypt(["verify", str(folder)]) == 0
    assert "unsigned: SHA256SUMS shows the files are intact, but nobody vouches" in capsys.readouterr().out
    assert lcrypt(["verify", str(folder), f"--key-id=alice={ds['keys']['alice'].key_id}"]) == 1
    assert lcrypt(["verify", str(ds["data"]), f"--key-id=alice={ds['keys']['alice'].key_id}"]) == 2


def test_a_dataset_recording_legacy_key_ids_is_released_and_verified(ds, tmp_path, capsys):
    data = tmp_path / "old"
    shutil.copytree(ds["data"], data)
    body = json.loads((data / "manifest.json").read_text())
    for o in body["owners"]:
        o["key_id"] = ds["keys"][o["name"]].legacy_key_id
    (data / "manifest.json").write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    assert lcrypt(["release", str(data), "--version", "1.0.0", "--license", "MIT", "--keys",
                   str(ds["owners"]), "--out", str(tmp_path / "rel")]) == 0
    pub = json.loads((tmp_path / "rel" / "1.0.0" / "keys.pub.json").read_text())["owners"]
    assert pub["alice"]["legacy_key_id"] == ds["keys"]["alice"].legacy_key_id
    capsys.readouterr()
    folder, alice = str(tmp_path / "rel" / "1.0.0"), ds["keys"]["alice"]
    assert lcrypt(["verify", folder, f"--key-id=alice={alice.key_id}"]) == 0
    assert lcrypt(["verify", folder, f"--key-id=alice={alice.legacy_key_id}"]) == 2  # names no public key


def test_versions_grow_and_the_changelog_carries_every_line(ds, tmp_path):
    from lcrypt.release.versions import change_of, plan_version

    out = tmp_path / "rel"
    assert release(ds, out, "--unsigned") == 0
    assert release(ds, out, "--unsigned", version="1.0.1") == 0  # same shards: metadata only
    info = json.loads((out / "1.0.1" / "release.json").read_text())
    assert [(c["version"], c["change"]) for c in info["changelog"]] == [("1.0.0", "first release"),
                                                                        ("1.0.1", "metadata only")]
    assert "- 1.0.0 (" in (out / "1.0.1" / "README.md").read_text()
    m = Manifest.load(ds["data"])
    grown = copy.deepcopy(m)
    extra = copy.deepcopy(next(s for s in m.shards if s.owner == "alice" and s.split == "train"))
    extra.path, extra.count = "train/alice-000099.tar", 3
    grown.shards.append(extra)
    grown.owner("alice").counts["train"] += 3
    grown.splits["train"] += 3
    assert change_of(m, grown) == ("added", "added train +3 (alice +3)")
    with pytest.raises(UserError, match=r"the data was added .* needs version 1\.1\.0 or greater"):
        plan_version(str(out), LOCAL, "1.0.2", grown)
    changelog, line = plan_version(str(out), LOCAL, "1.1.0", grown)
    assert [c["version"] for c in changelog] == ["1.0.0", "1.0.1", "1.1.0"] and line.startswith("added")
    replaced = copy.deepcopy(m)
    replaced.shards[0].sha256 = "0" * 64
    with pytest.raises(UserError, match=r"data was replaced .* needs version 2\.0\.0"):
        plan_version(str(out), LOCAL, "1.1.0", replaced)


def test_release_to_an_object_store_url(ds, capsys):
    pytest.importorskip("fsspec")
    url = f"memory://lcrypt-release-test-{id(ds)}"
    assert lcrypt(["release", str(ds["data"]), "--version", "2.0.0", "--license", "MIT", "--keys",
                   str(ds["owners"]), "--out", url]) == 0
    capsys.readouterr()
    assert lcrypt(["verify", f"{url}/2.0.0", f"--key-id=bob={ds['keys']['bob'].key_id}"]) == 0
    assert "bob signed colors 2.0.0" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["no-license", "not-semver", "existing", "older", "no-key", "both",
                                  "damaged", "stray", "key-inside-data", "out-inside-data", "wrong-key",
                                  "foreign-owner", "bad-license"])
def test_bad_input_is_one_line_and_writes_nothing(ds, released, tmp_path, capsys, case):
    data, target = ds["data"], released.parent
    keys = ["--keys", str(ds["owners"])]
    args = {"no-license": ["--version", "9.0.0", *keys],
            "bad-license": ["--version", "9.0.0", "--license", "CC BY", *keys],
            "not-semver": ["--version", "1.1", "--license", "MIT", *keys],
            "existing": ["--version", "1.0.0", "--license", "MIT", *keys],
            "older": ["--version", "0.9.9", "--license", "MIT", *keys],
            "no-key": ["--version", "9.0.0", "--license", "MIT"],
            "both": ["--version", "9.0.0", "--license", "MIT", "--unsigned", *keys]}.get(case)
    needle = {"no-license": "--license is required", "bad-license": "not an SPDX identifier",
              "not-semver": "not semver", "existing": "already exists", "older": "must be greater",
              "no-key": "no signing key", "both": "contradict", "damaged": "fails verify",
              "stray": "stray file", "key-inside-data": "a key file inside",
              "out-inside-data": "inside the dataset",
              "wrong-key": "is not the key that encrypted", "foreign-owner": "holds no data"}[case]
    if args is None:
        copy_of = tmp_path / "data"
        shutil.copytree(data, copy_of)
        data = copy_of
        args = ["--version", "9.0.0", "--license", "MIT", *keys]
        if case == "damaged":
            shard = data / Manifest.load(data).shards[-1].path
            raw = bytearray(shard.read_bytes())
            raw[700] ^= 1
            shard.write_bytes(bytes(raw))
        elif case == "stray":
            (data / "notes.txt").write_text("mine")
        elif case == "key-inside-data":
            shutil.copy(ds["root"] / "keys" / "alice.key", data / "alice.key")
            args[-1] = str(data / "alice.key")
        elif case == "out-inside-data":
            target = data / "releases"
        elif case in ("wrong-key", "foreign-owner"):
            Key.generate("alice" if case == "wrong-key" else "carol").save(tmp_path / "other.key")
            args[-1] = str(tmp_path / "other.key")
    before_target, before_data = tree(target), tree(data)
    capsys.readouterr()
    code = lcrypt(["release", str(data), "--out", str(target), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("lcrypt release: error:"), err
    assert needle in err and "Traceback" not in err, err
    assert tree(target) == before_target and tree(data) == before_data


def test_owner_configs_match_only_their_owners_shards():
    from fnmatch import fnmatch

    from lcrypt.release.card import owner_config, shard_glob

    assert fnmatch("train/a-000003.tar", shard_glob("train", "a"))
    assert not fnmatch("train/a-b-000003.tar", shard_glob("train", "a"))  # owner "a-b" is not "a"
    assert not fnmatch("test/a-000003.tar", shard_glob("train", "a"))
    assert fnmatch("train/a-b-000003.tar", shard_glob("train", None))
    assert owner_config("default") == "owner-default" and owner_config("a") == "a"


def test_shards_are_hard_links_on_one_file_system_and_copies_elsewhere(ds, released, tmp_path, monkeypatch):
    import os

    m = Manifest.load(ds["data"])
    for s in m.shards:  # linked: no second copy to write; lcrypt never changes a shard in place
        assert os.path.samefile(released / s.path, ds["data"] / s.path)

    def no_links(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    assert release(ds, tmp_path / "rel", "--unsigned") == 0
    for s in m.shards:
        copy_ = tmp_path / "rel" / "1.0.0" / s.path
        assert not os.path.samefile(copy_, ds["data"] / s.path)
        assert copy_.read_bytes() == (ds["data"] / s.path).read_bytes()
    assert check(tmp_path / "rel" / "1.0.0").problems == []


def test_a_refused_release_to_an_object_store_leaves_nothing_there(ds, tmp_path, capsys):
    fsspec = pytest.importorskip("fsspec")
    data = tmp_path / "data"
    shutil.copytree(ds["data"], data)
    shard = data / Manifest.load(data).shards[-1].path  # the last one: others are written before it fails
    raw = bytearray(shard.read_bytes())
    raw[700] ^= 1
    shard.write_bytes(bytes(raw))
    url = f"memory://lcrypt-refused-{tmp_path.name}"
    capsys.readouterr()
    assert lcrypt(["release", str(data), "--version", "1.0.0", "--license", "MIT", "--unsigned", "--out",
                   url]) == 2
    assert "fails verify" in capsys.readouterr().err
    fs = fsspec.filesystem("memory")
    assert not fs.exists(f"{url}/1.0.0") or fs.find(f"{url}/1.0.0") == []
