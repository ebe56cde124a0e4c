"""Configuration of the training data: sources mixed by weight, batching, workers, limits."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from evaclip.data.decode import DEFAULT_MAX_IMAGE_PIXELS
from evaclip.errors import ConfigError

SOURCE_KINDS = ("auto", "webdataset", "csv", "folder")


@dataclass
class DataSource:
    """One source of image-text pairs.

    `urls` is a webdataset shard spec (`;`-joined paths or fsspec URLs with brace patterns, or a list of them),
    a `.csv`/`.tsv` file with image-path and caption columns, or a folder of images with `.txt` captions.
    `kind="auto"` tells them apart by the suffix and by whether the path is a folder.
    `weight` is the share of samples drawn from this source (weights are normalised over all sources), e.g.
    the paper's Merged-2B: ``[DataSource(laion, 1.6, "laion2b"), DataSource(coyo, 0.4, "coyo700m")]``.
    """

    urls: str | list[str]
    weight: float = 1.0
    name: str = ""
    kind: str = "auto"


@dataclass
class DataConfig:
    """How to read training data. `batch_size` is per rank; batches are always full (no partial batch)."""

    sources: list[DataSource] = field(default_factory=list)
    # Mixing weights in the order of `sources`, replacing the sources' own (`data.weights=1.6,0.4` next to
    # `data.sources=A::B` on the command line); None keeps each source's weight.
    weights: list[float] | None = None
    batch_size: int = 32
    # The batch of one step over all ranks; when set it wins over batch_size, which becomes
    # global_batch_size / world_size. A run with it set trains on the same samples on any world size that
    # divides both it and canonical_streams (see evaclip.data.order).
    global_batch_size: int | None = None
    # The global sample order is read from this many canonical streams, whatever the number of ranks and
    # workers that serve them (MosaicML Streaming's canonical nodes): world sizes must divide it. 120 = 2^3*3*5
    # divides 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 24, 30, 40, 60, 120; a 360-GPU run sets 360 or 720.
    canonical_streams: int = 120
    num_workers: int = 2
    # Shards drawn with replacement, each worker with its own seed (the paper's --dataset-resampled); False
    # reads the shards in per-epoch permutations split over ranks and workers.
    resampled: bool = True
    seed: int = 0
    context_length: int = 77
    # Shards each canonical stream reads at once (per source), samples mixed among them. One: the canonical
    # streams already mix that many shards, and every stream's open shards and windows are held in memory.
    interleave: int = 1
    shuffle_window: int = 64     # samples of one shard shuffled together (memory: window x interleave samples)
    samples_per_epoch: int | None = None  # virtual epoch over all ranks; None = one endless epoch
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # also the limit on a video frame's pixels
    # Video samples (.mp4/.webm/.mkv/.avi/.mov members): frames sampled uniformly per clip (the paper's 8), each
    # through the train transform with one crop per clip; longer clips are skipped before decoding.
    video_frames: int = 8
    max_video_seconds: float = 600.0
    max_caption_chars: int = 4096
    max_member_bytes: int = 256 << 20
    csv_image_key: str = ""      # CSV column names; "" = look for image/path/filepath and caption/title/text
    csv_caption_key: str = ""
    timeout_s: float = 0.0       # DataLoader timeout per batch (0 = wait forever)
    prefetch_factor: int = 2
    pin_memory: bool = False     # page-locked batches for faster host-to-GPU copies
    # Area fraction of the training RandomResizedCrop (EVA-CLIP trains with (0.9, 1.0)); lower = stronger
    # augmentation. MIM keeps its own (0.2, 1.0).
    crop_scale: tuple[float, float] = (0.9, 1.0)

    def validate(self) -> None:
        """Raise ConfigError for impossible values (before any worker starts).

        Sources may also be given as a spec string (`"A::B"`, see :func:`parse_sources`) or as dicts with
        DataSource's fields, as a recipe file or a command-line override would write them; they are
        normalised to DataSource objects here.
        """
        self.sources = normalize_sources(self.sources)
        if not self.sources:
            raise ConfigError("data config has no source; set data.sources (shard pattern, CSV file or image folder)")
        if self.weights is not None:
            if len(self.weights) != len(self.sources):
                raise ConfigError(f"{len(self.weights)} weights given for {len(self.sources)} data sources "
                                  "(data.weights lists one weight per source of data.sources)")
            for source, w in zip(self.sources, self.weights):
                source.weight = w
        for s in self.sources:
            if s.kind not in SOURCE_KINDS:
                raise ConfigError(f"data source kind {s.kind!r} is not one of {', '.join(SOURCE_KINDS)}")
            if not (isinstance(s.weight, (int, float)) and not isinstance(s.weight, bool) and math.isfinite(s.weight)):
                raise ConfigError(f"data source {s.name or s.urls!r} has weight {s.weight!r}; weights must be finite "
                                  "numbers > 0")
            if s.weight <= 0:
                raise ConfigError(f"data source {s.name or s.urls!r} has weight {s.weight!r}; weights must be > 0")
        if self.global_batch_size is not None and (not isinstance(self.global_batch_size, int)
                                                   or isinstance(self.global_batch_size, bool)
                                                   or self.global_batch_size < 1):
            raise ConfigError(f"data.global_batch_size must be a positive integer or None, got "
                              f"{self.global_batch_size!r}")
        positive = {"batch_size": self.batch_size, "canonical_streams": self.canonical_streams,
                    "interleave": self.interleave,
                    "shuffle_window": self.shuffle_window, "context_length": self.context_length,
                    "max_image_pixels": self.max_image_pixels, "max_caption_chars": self.max_caption_chars,
                    "max_member_bytes": self.max_member_bytes, "prefetch_factor": self.prefetch_factor,
                    "video_frames": self.video_frames}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"data.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be an integer >= 0, got {self.num_workers!r}")
        epoch = self.samples_per_epoch
        if epoch is not None and (not isinstance(epoch, int) or epoch < 1):
            raise ConfigError(f"data.samples_per_epoch must be a positive integer or None, got {epoch!r}")
        if not self.max_video_seconds > 0:
            raise ConfigError(f"data.max_video_seconds must be > 0, got {self.max_video_seconds!r}")
        if self.timeout_s < 0:
            raise ConfigError(f"data.timeout_s must be >= 0, got {self.timeout_s!r}")
        lo_hi = tuple(self.crop_scale) if isinstance(self.crop_scale, (list, tuple)) else ()
        if len(lo_hi) != 2 or not all(isinstance(v, (int, float)) for v in lo_hi) or not 0 < lo_hi[0] <= lo_hi[1] <= 1:
            raise ConfigError(f"data.crop_scale must be two numbers 0 < low <= high <= 1, got {self.crop_scale!r}")
        self.crop_scale = (float(lo_hi[0]), float(lo_hi[1]))


    def global_batch(self, world_size: int) -> int:
        """The samples of one step over all ranks."""
        return self.global_batch_size if self.global_batch_size is not None else self.batch_size * world_size

    def rank_batch(self, world_size: int) -> int:
        """This rank's share of a step's batch; ConfigError when ``world_size`` cannot serve the global order
        (it must divide the global batch and ``canonical_streams``), naming the sizes that can."""
        batch = self.global_batch(world_size)
        fits = math.gcd(batch, self.canonical_streams)
        if fits % world_size:
            sizes = [n for n in range(1, fits + 1) if fits % n == 0]
            shown = ", ".join(map(str, sizes[:16])) + (", ..." if len(sizes) > 16 else "")
            raise ConfigError(f"{world_size} processes cannot share the global batch of {batch} read from "
                              f"data.canonical_streams={self.canonical_streams} streams evenly; run on {shown} "
                              "processes, or set data.canonical_streams (and data.global_batch_size) to a multiple "
                              f"of {world_size}")
        return batch // world_size


def parse_sources(spec: str, weights: str | list[float] | None = None) -> list[DataSource]:
    """`"A::B"` (with optional weights `"1.6::0.4"`) -> [DataSource(A, 1.6), DataSource(B, 0.4)].

    `::` separates sources (as in open_clip); `;` inside a source separates its shard patterns.
    """
    parts = [p.strip() for p in spec.split("::") if p.strip()]
    if not parts:
        raise ConfigError(f"data source spec {spec!r} is empty; give a shard pattern, CSV file or image folder")
    if weights is None:
        ws = [1.0] * len(parts)
    else:
        raw = weights.split("::") if isinstance(weights, str) else list(weights)
        try:
            ws = [float(w) for w in raw]
        except ValueError:
            raise ConfigError(f"data source weights {weights!r} are not numbers; write them like 1.6::0.4") from None
        if len(ws) != len(parts):
            raise ConfigError(f"{len(parts)} data sources but {len(ws)} weights; give one weight per source")
    return [DataSource(urls=p, weight=w, name=f"source{i}") for i, (p, w) in enumerate(zip(parts, ws))]


def normalize_sources(sources) -> list[DataSource]:
    """A spec string, a DataSource, a dict, or a list of those -> list[DataSource]."""
    if isinstance(sources, str):
        return parse_sources(sources)
    if isinstance(sources, (DataSource, dict)):
        sources = [sources]
    out = []
    for s in sources or []:
        if isinstance(s, DataSource):
            out.append(s)
        elif isinstance(s, dict):
            unknown = set(s) - {"urls", "weight", "name", "kind"}
            if unknown or "urls" not in s:
                raise ConfigError(f"data source {s!r} needs 'urls' and only urls/weight/name/kind keys")
            out.append(DataSource(**s))
        elif isinstance(s, str):
            out.extend(parse_sources(s))
        else:
            raise ConfigError(f"data source {s!r} is not a DataSource, dict or path string")
    return out
