"""End-to-end builds of the offline data on the fixture of fake package contents (no registry access)."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from PIL import Image

import numpy as np

from evaclip.cli.main import main as cli_main
from evaclip.data.video import decode_video
from evaclip.eval.video import load_video_folder
from evaclip_demo.offline import PrepareOptions, prepare
from evaclip_demo.offline.fetch import FetchError
from evaclip_demo.offline.packages import PACKAGES, Package
from evaclip.errors import ConfigError, EvaclipError

# the fixture has SVG art (OpenMoji, a Tux Paint stamp); cairosvg is a dependency of `evaclip data prepare`
pytest.importorskip("cairosvg", reason="cairosvg (pip) and libcairo2 (apt) render the SVG art")

FIXTURE = Path(__file__).parent / "fixtures" / "offline"
OPTIONS = PrepareOptions(image_size=16, heldout=2, shard_size=2, fluent_styles="flat,modern,high-contrast")


class FixtureFetch:
    """A fetch function that copies the fixture's fake package contents and counts its calls."""

    def __init__(self, fail: tuple[str, ...] = ()):
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, package: Package, dest: Path) -> str:
        self.calls.append(package.name)
        if package.name in self.fail:
            raise FetchError(f"apt-get download {package.name}", "exit 100: E: Unable to locate package")
        shutil.copytree(FIXTURE / package.name, dest, symlinks=True, dirs_exist_ok=True)
        return package.version or "1.0-test"


def build(out: Path, fetch: FixtureFetch | None = None, **kwargs):
    return prepare(out, kwargs.pop("options", OPTIONS), fetch_fn=fetch or FixtureFetch(), workers=1,
                   progress=False, **kwargs)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("offline")
    result = build(out)
    return out, result.manifest


def read_shard(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            assert member.isfile() and member.mtime == 0 and member.uid == 0
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def train_samples(out: Path) -> list[dict]:
    rows = []
    for shard in sorted((out / "train").glob("*.tar")):
        for key, parts in read_shard(shard).items():
            assert set(parts) == {"png", "txt", "json"}
            image = Image.open(io.BytesIO(parts["png"]))
            assert image.mode == "RGB" and image.size == (16, 16)
            rows.append({"key": key, "shard": shard.name, "caption": parts["txt"].decode(),
                         **json.loads(parts["json"])})
    return rows


def test_train_shards_are_valid_webdataset_tars(built):
    out, manifest = built
    rows = train_samples(out)
    listing = json.loads((out / "train" / "shards.json").read_text())["sources"]
    for source, info in listing.items():
        mine = [r for r in rows if r["source"] == source]
        assert info["samples"] == len(mine) == manifest["train"]["by_source"][source]
        assert [s["file"] for s in info["shards"]] == sorted({r["shard"] for r in mine})
        assert info["pattern"] == {"openclipart": "openclipart-{00000..00004}.tar", "twemoji": "twemoji-{00000..00001}.tar",
                                   "openmoji": "openmoji-{00000..00001}.tar", "emojione": "emojione-00000.tar",
                                   "fluent": "fluent-{00000..00002}.tar"}[source]
        assert all(s["samples"] <= OPTIONS.shard_size for s in info["shards"])
        assert all(r["shard"].startswith(f"{source}-") for r in mine)
    licences = {r["source"]: r["licence"] for r in rows}
    assert licences == {"openclipart": "public-domain", "twemoji": "CC-BY-4.0", "openmoji": "CC-BY-SA-4.0",
                        "emojione": "CC-BY-SA-4.0", "fluent": "MIT"}
    captions = {r["id"]: r["caption"] for r in rows}
    # keywords already in the name ("pig") are dropped; held-out items are absent
    assert captions.get("animals/mammals/a_simple_pig_01", "A simple pig. mammal, animal") == \
        "A simple pig. mammal, animal"
    assert captions["computer/icons/flat-theme/action/Network_1"] == "Network. action"
    assert {r["caption"] for r in rows if r["id"] == "1F600"} == {"Grinning face. happy", "Grinning face. happy, smile"}
    # Fluent files carry names, not code points: matched to CLDR, they get the caption the other styles give
    assert captions["flat/1F600"] == captions["modern/1F600"] == "Grinning face. happy"
    assert captions["high-contrast/1F436"] == next(r["caption"] for r in rows if (r["source"], r["id"]) == ("twemoji", "1F436"))
    assert len(rows) == manifest["train"]["samples"]


def test_expected_items_are_skipped_and_counted(built):
    out, manifest = built
    ids = {(r["source"], r["id"]) for r in train_samples(out)}
    skipped = [("openclipart", "computer/icons/apps/konqueror"), ("openclipart", "animals/mammals/pig_link"),
               ("openmoji", "1F44B-1F3FB"), ("openmoji", "1F1EB-1F1F7"), ("emojione", "1F1EB-1F1F7"),
               ("twemoji", "1F3FB"), ("emojione", "1F3FB"), ("fluent", "flat/1F1EB-1F1F7")]
    assert not ids & set(skipped)
    leak = manifest["leakage"]
    assert leak["listed"] == {"openclipart": 13, "twemoji": 4, "openmoji": 3, "emojione": 2, "tuxpaint": 5, "noto": 4,
                              "fluent": 6}
    # Fluent: skin-tone variants and the flag are skipped silently, a name CLDR does not know is reported
    assert leak["fluent_names_not_in_cldr"] == ["party-thing"]
    assert {i for s, i in ids if s == "fluent"} == {"flat/1F600", "flat/1F436", "modern/1F600", "modern/1F436",
                                                   "high-contrast/1F436"}
    assert leak["exact_duplicates_dropped"]["openclipart"] == 1  # blue_square_02 == blue_square_01
    # the 4 "network" icons share one boilerplate-derived name, so their group is never held out
    assert sum(i.startswith("computer/icons/flat-theme/action/Network") for s, i in ids) == 4


def test_leakage_control(built):
    out, manifest = built
    rows = train_samples(out)
    train_ids = {(r["source"], r["id"]) for r in rows}
    with open(out / "retrieval" / "openclipart_heldout" / "captions.csv") as f:
        held = list(csv.DictReader(f))
    assert len(held) == OPTIONS.heldout == manifest["leakage"]["openclipart_heldout_groups"]
    held_ids = {Path(r["image"]).stem.replace("__", "/") for r in held}
    assert not {("openclipart", i) for i in held_ids} & train_ids  # held-out items never in train
    held_captions = {r["caption"].split(".")[0].lower() for r in held}
    assert not {r["caption"].split(".")[0].lower() for r in rows if r["source"] == "openclipart"} & held_captions
    # the openclipart apple is a copy of the Tux Paint apple stamp; the Twemoji star a recoloured Noto star
    assert ("openclipart", "food/apple_ganson") not in train_ids
    assert ("twemoji", "2B50") not in train_ids and ("openmoji", "2B50") in train_ids
    assert ("fluent", "flat/2B50") not in train_ids  # a brightened Noto star drawn as SVG: caught as well
    dropped = manifest["leakage"]["near_duplicates_dropped_from_train"]
    assert dropped["twemoji"]["noto"] == 1 and dropped["twemoji"]["total"] == 1
    assert dropped["fluent"] == {"tuxpaint": 0, "openclipart_heldout": 0, "noto": 1, "total": 1}
    assert dropped["openclipart"]["tuxpaint"] == 1 and ("openclipart", "food/apple_other") in train_ids
    # 13 listed - 1 exact duplicate - 2 held out - the apple copy
    assert manifest["train"]["by_source"] == {"openclipart": 9, "twemoji": 3, "openmoji": 3, "emojione": 2,
                                              "fluent": 5}


def test_leakage_control_can_leave_noto_copies(tmp_path):
    manifest = build(tmp_path, options=PrepareOptions(image_size=16, heldout=2, shard_size=2,
                                                      drop_noto_copies=False)).manifest
    assert manifest["train"]["by_source"]["twemoji"] == 4
    assert "noto" not in manifest["leakage"]["near_duplicates_dropped_from_train"]["twemoji"]


def test_zeroshot_image_folders(built):
    out, manifest = built
    tux = out / "zeroshot" / "tuxpaint"
    names = (tux / "classnames.txt").read_text().splitlines()
    assert len(names) == 23 and names[0] == "mammal"
    assert sorted(p.name for p in tux.iterdir() if p.is_dir()) == sorted(names)
    assert (tux / "templates.txt").read_text() == "a picture of a {c}.\n"
    files = {p.parent.name: sorted(q.name for q in p.parent.glob("*.png")) for p in tux.glob("*/*.png")}
    assert files == {"bird": ["animals__birds__robin.png"], "fruit": ["food__fruit__apple.png"],
                     "vehicle": ["vehicles__car.png", "vehicles__car2.png"]}
    assert manifest["zeroshot"]["tuxpaint"]["images"] == 4 and manifest["zeroshot"]["tuxpaint"]["per_class"]["bird"] == 1
    noto = out / "zeroshot" / "noto"
    assert len((noto / "classnames.txt").read_text().splitlines()) == 34
    assert {p.parent.name for p in noto.glob("*/*.png")} == {"smiley face", "mammal", "weather", "national flag"}
    assert Image.open(noto / "national flag" / "1F1EB-1F1F7.png").size == (16, 16)


def test_retrieval_caption_csvs(built):
    out, manifest = built
    for name, expected in (("tuxpaint_sentences", 4), ("openclipart_heldout", 2), ("noto_names", 4)):
        root = out / "retrieval" / name
        with open(root / "captions.csv", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["image", "caption"] and len(rows) - 1 == expected == manifest["retrieval"][name]["pairs"]
        assert all((root / image).is_file() for image, _ in rows[1:])
    with open(out / "retrieval" / "tuxpaint_sentences" / "captions.csv", newline="") as f:
        captions = [r["caption"] for r in csv.DictReader(f)]
    # one image per unique sentence: car2 repeats "A red car."; only the English first line is kept
    assert captions == ["A robin.", "A “Granny Smith” apple.", "A kite flying high.", "A red car."]


def _dark_centre_y(frame: Image.Image) -> float:
    """Row centre of the icon's pixels (the renders draw a dark stroke colour on a light background)."""
    a = np.asarray(frame.convert("L"), np.float32)
    ys = np.nonzero(a < a.mean() - 10)[0]
    return float(ys.mean())


def test_video_clips_train_shards_and_zeroshot_split(built):
    out, manifest = built
    video = manifest["video"]
    assert video["synthetic"] is False and video["animations"] == 4 and video["frames_per_clip"] == 16
    trained: set[tuple[str, int]] = set()
    for shard in sorted((out / "video" / "train").glob("*.tar")):
        for key, parts in read_shard(shard).items():
            assert set(parts) == {"mp4", "txt", "json"}
            meta = json.loads(parts["json"])
            assert meta["licence"] == "MIT" and meta["package"] == "react-useanimations"
            assert meta["class"] in parts["txt"].decode()  # the caption names the icon
            frames = decode_video(parts["mp4"], 16, 1 << 20, 60.0)
            assert len(frames) == 16 and frames[0].size == (16, 16)
            trained.add((meta["animation"], meta["variant"]))
    # every animation trains on its renders 3..11; renders 0..2 are the zero-shot set and never trained on
    assert trained == {(a, v) for a in ("arrowDown", "arrowDown2", "plusToX", "zoomIn") for v in range(3, 12)}
    assert video["train"]["clips"] == len(trained) == 36
    root = out / "video" / "zeroshot" / "useanimations"
    assert (root / "classnames.txt").read_text().split() == ["arrow", "down", "plus", "to", "x", "zoom", "in"]
    held = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.mp4"))
    assert held == [f"arrow_down/arrowDown-{v:02d}.mp4" for v in range(3)] + \
        [f"arrow_down/arrowDown2-{v:02d}.mp4" for v in range(3)] + \
        [f"plus_to_x/plusToX-{v:02d}.mp4" for v in range(3)] + [f"zoom_in/zoomIn-{v:02d}.mp4" for v in range(3)]
    assert video["zeroshot"]["chance"] == pytest.approx(1 / 3)
    dataset, names = load_video_folder(root, lambda im: im, num_frames=8)
    assert names == ["arrow down", "plus to x", "zoom in"] and len(dataset) == 12
    # the motion is the animation's: the arrowDown square moves down the frame in every render
    for v in range(3):
        frames = decode_video((root / "arrow_down" / f"arrowDown-{v:02d}.mp4").read_bytes(), 8, 1 << 20, 60.0)
        ys = [_dark_centre_y(f) for f in frames]
        assert ys[-1] > ys[0] + 3, ys


def test_manifest_and_notice(built):
    out, manifest = built
    assert manifest["image_size"] == 16 and manifest["seed"] == 0 and manifest["options"]["heldout"] == 2
    packages = {p["name"]: p for p in manifest["packages"]}
    assert len(packages) == 9 and packages["openmoji"]["version"] == "17.0.0"
    assert packages["openclipart-png"]["version"] == "1.0-test"
    assert manifest["train"]["samples"] == 22 and manifest["train"]["shards"] == 5 + 2 + 2 + 1 + 3
    notice = (out / "NOTICE.md").read_text()
    for needle in ("CC-BY-4.0", "CC-BY-SA-4.0", "GPL-2.0-or-later", "Apache-2.0", "Twemoji", "OpenMoji",
                   "EmojiOne", "Tux Paint", "`ruby-gemojione` 1.0-test", "Fluent Emoji", "Microsoft", "MIT", "useAnimations",
                   "video/zeroshot/useanimations/"):
        assert needle in notice
    assert "The above copyright notice and this permission notice shall be included" in notice  # MIT's terms
    assert not list(out.glob(".tmp-build-*"))


def _digest(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and not p.relative_to(out).parts[0] == "packages"}


def test_two_builds_are_byte_identical(built, tmp_path):
    out, _ = built
    build(tmp_path)
    assert _digest(tmp_path) == _digest(out)
    assert len(_digest(out)) > 30


def test_second_build_is_cached_and_force_rebuilds(tmp_path):
    fetch = FixtureFetch()
    first = build(tmp_path, fetch)
    assert not first.cached and len(fetch.calls) == len(PACKAGES)
    second = build(tmp_path, fetch)
    assert second.cached and second.manifest == first.manifest and len(fetch.calls) == len(PACKAGES)
    # other options -> rebuilt from the package cache without fetching again
    third = build(tmp_path, fetch, options=dataclasses.replace(OPTIONS, image_size=24))
    assert not third.cached and len(fetch.calls) == len(PACKAGES)
    assert Image.open(next((tmp_path / "zeroshot" / "noto").glob("*/*.png"))).size == (24, 24)
    # damaged outputs are not mistaken for a complete build
    bigger = dataclasses.replace(OPTIONS, image_size=24)
    next((tmp_path / "train").glob("*.tar")).unlink()
    assert not build(tmp_path, fetch, options=bigger).cached
    assert build(tmp_path, fetch, options=bigger).cached
    assert not build(tmp_path, fetch, options=bigger, force=True).cached
    assert len(fetch.calls) == len(PACKAGES)


def test_fetch_failure_names_packages_and_leaves_no_outputs(tmp_path):
    fetch = FixtureFetch(fail=("tuxpaint-stamps-default", "openmoji"))
    with pytest.raises(EvaclipError) as err:
        build(tmp_path, fetch)
    message = str(err.value)
    assert "tuxpaint-stamps-default" in message and "openmoji" in message and "openclipart-png" not in message
    assert "apt-get download tuxpaint-stamps-default" in message and "\n" not in message
    assert len(fetch.calls) == len(PACKAGES)  # every package was tried
    assert not (tmp_path / "manifest.json").exists() and not (tmp_path / "train").exists()
    assert sorted(p.name for p in (tmp_path / "packages").iterdir()) == sorted(
        n for n in fetch.calls if n not in fetch.fail)  # no half-fetched package folders
    # after the registry recovers, only the missing packages are fetched
    retry = FixtureFetch()
    assert not build(tmp_path, retry).cached
    assert sorted(retry.calls) == ["openmoji", "tuxpaint-stamps-default"]


def test_fluent_styles_option_chooses_styles_and_none_skips_the_package(tmp_path):
    flat = build(tmp_path / "flat", options=PrepareOptions(image_size=16, heldout=2, shard_size=2,
                                                           fluent_styles="flat")).manifest
    assert flat["train"]["by_source"]["fluent"] == 2  # grinning face and dog face; the star copy is dropped
    fetch = FixtureFetch()
    none = build(tmp_path / "none", fetch, options=PrepareOptions(image_size=16, heldout=2, shard_size=2,
                                                                  fluent_styles="")).manifest
    assert "fluentui-emoji" not in fetch.calls and len(fetch.calls) == len(PACKAGES) - 1
    assert "fluent" not in none["train"]["by_source"] and not list((tmp_path / "none" / "train").glob("fluent-*"))
    assert "fluentui-emoji" not in {p["name"] for p in none["packages"]}
    assert "Fluent" not in (tmp_path / "none" / "NOTICE.md").read_text()
    # the other sources' shards do not depend on the Fluent styles, byte for byte
    def other_shards(out):
        return {p.name: p.read_bytes() for p in sorted((out / "train").glob("*.tar")) if not p.name.startswith("fluent")}
    assert other_shards(tmp_path / "none") == other_shards(tmp_path / "flat") and other_shards(tmp_path / "none")


def test_bad_options_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="image size"):
        build(tmp_path, options=PrepareOptions(image_size=2))
    with pytest.raises(ConfigError, match="even size"):
        build(tmp_path, options=PrepareOptions(image_size=17))
    with pytest.raises(ConfigError, match="3 held out of 3 per animation"):
        build(tmp_path, options=PrepareOptions(video_variants=3, video_heldout=3))
    with pytest.raises(ConfigError, match="too few.*at least 8"):
        build(tmp_path, options=PrepareOptions(video_frames=4))
    with pytest.raises(ConfigError, match="unknown Fluent Emoji style.*'3d'.*flat, modern, high-contrast"):
        build(tmp_path, options=PrepareOptions(fluent_styles="flat,3d"))
    assert not tmp_path.joinpath("packages").exists()


def test_cli_prepare_uses_env_var_and_reports(tmp_path, monkeypatch, capsys):
    out = tmp_path / "data"
    build(out, options=PrepareOptions(image_size=16))  # the CLI then finds it up to date: no registry access
    monkeypatch.setenv("EVACLIP_DATA", str(out))
    assert cli_main(["data", "prepare", "--image-size", "16"]) == 0
    text = capsys.readouterr().out
    assert "up to date" in text and "zeroshot/noto: 4 images, 34 classes" in text
    assert "video: 36 training clips, zero-shot 12 clips of 3 classes (MIT; 4 real animations rendered 12 ways)" in text
    # the flags reach the options: a build with the same options is found up to date, not rebuilt
    build(out, options=PrepareOptions(image_size=16, drop_noto_copies=False, fluent_styles="flat"))
    assert cli_main(["data", "prepare", "--image-size", "16", "--keep-noto-lookalikes", "--fluent-styles",
                     "flat", "--out", str(out)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert cli_main(["data", "prepare", "--image-size", "4", "--out", str(out)]) == 2
    assert "image size 4 is out of range" in capsys.readouterr().err
