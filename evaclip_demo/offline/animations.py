"""Video-text clips from real vector animations: the useAnimations icon set (npm ``react-useanimations``, MIT).

Each of the package's Lottie animations (``lib/<name>/<name>.json``: a heart filling, a lock opening, a gear
turning...) is rendered with rlottie (PyPI ``rlottie-python``) into several short clips. The motion is the
animation's own keyframes; what varies between the clips of one animation is drawn per clip from a seeded
generator: stroke and background colours, scale and position in the frame, and which part of the timeline is
played. A clip's caption names its icon, e.g. ``heart`` for ``heart``, ``plus to x`` for ``plusToX``;
numbered variants (``menu2``, ``loading3``) are further animations of the same class.

Split: the first ``heldout`` renders of every animation form the zero-shot video classification set (class =
the icon's name), the others the training clips. The evaluation clips are therefore new renders of animations
whose other renders are trained on (new colours, sizes, positions and timing; not new icons): they measure how
well a model learned these animated icons from captioned clips, not transfer to unseen concepts.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from evaclip_demo.offline.clips import encode_clip

# Dark strokes on light backgrounds, so every render keeps the icon legible.
STROKES = {"black": (20, 20, 20), "navy": (20, 40, 120), "dark red": (140, 20, 30), "dark green": (20, 100, 40),
           "purple": (90, 30, 120), "brown": (100, 60, 20), "teal": (0, 100, 110), "grey": (80, 80, 80)}
BACKGROUNDS = {"white": (250, 250, 250), "cream": (250, 240, 215), "light blue": (210, 230, 250),
               "light green": (215, 245, 215), "pink": (250, 220, 230), "light grey": (225, 225, 225)}
CAPTIONS = ("{c}", "an animated {c} icon", "a {fg} {c} icon on a {bg} background", "the {c} symbol, animated",
            "animation of a {c} icon")
TEMPLATES = ("an animated {c} icon.", "a {c} icon.", "the {c} symbol.")
FPS = 12


@dataclass(frozen=True)
class Animation:
    name: str       # the package's name for it (``plusToX``)
    classname: str  # the caption / class phrase (``plus to x``)
    path: Path      # its Lottie JSON


def class_phrase(name: str) -> str:
    """``plusToX`` -> ``plus to x``, ``menu3`` -> ``menu`` (numbered variants share the class)."""
    base = re.sub(r"\d+$", "", name)
    return " ".join(w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]", base))


def list_animations(root: Path) -> list[Animation]:
    """The animations of an unpacked ``react-useanimations`` package (``root/package/lib/<name>/<name>.json``)."""
    lib = Path(root) / "package" / "lib"
    found = sorted(p for p in lib.glob("*/*.json") if p.stem == p.parent.name) if lib.is_dir() else []
    return [Animation(p.stem, class_phrase(p.stem), p) for p in found if class_phrase(p.stem)]


@dataclass(frozen=True)
class Render:
    """How one clip of an animation is drawn (all drawn from ``random.Random((seed, animation, variant))``)."""

    stroke: str
    background: str
    scale: float   # icon side / frame side
    dx: int        # icon offset from the centre, pixels
    dy: int
    start: float   # played part of the timeline, as fractions of it
    end: float
    frames: int

    @classmethod
    def draw(cls, seed: int, animation: str, variant: int, size: int, frames: int) -> "Render":
        rng = random.Random(f"{seed}-video-{animation}-{variant}")
        scale = rng.uniform(0.55, 0.95)
        room = int(size * (1 - scale) / 2)
        return cls(stroke=rng.choice(sorted(STROKES)), background=rng.choice(sorted(BACKGROUNDS)), scale=scale,
                   dx=rng.randint(-room, room), dy=rng.randint(-room, room), start=rng.uniform(0.0, 0.15),
                   end=rng.uniform(0.85, 1.0), frames=frames)


def render_frames(animation: Animation, render: Render, size: int) -> list[np.ndarray]:
    """RGB uint8 frames [size, size, 3] of one render (``size`` even, as the video codecs need)."""
    from rlottie_python import LottieAnimation

    lottie = LottieAnimation.from_data(animation.path.read_text(encoding="utf-8"))
    total = lottie.lottie_animation_get_totalframe()
    side = max(2, int(round(size * render.scale)))
    first, last = render.start * (total - 1), render.end * (total - 1)
    stroke, bg = np.array(STROKES[render.stroke], np.float32), np.array(BACKGROUNDS[render.background], np.float32)
    out = []
    for k in range(render.frames):
        t = int(round(first + (last - first) * k / max(1, render.frames - 1)))
        icon = lottie.render_pillow_frame(frame_num=t, width=side, height=side)
        canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
        canvas.alpha_composite(icon, ((size - side) // 2 + render.dx, (size - side) // 2 + render.dy))
        # The icons are drawn dark on transparent: map white -> background and black -> stroke colour.
        light = np.asarray(canvas.convert("L"), np.float32)[..., None] / 255.0
        out.append(np.clip(light * bg + (1 - light) * stroke + 0.5, 0, 255).astype(np.uint8))
    return out


@dataclass
class Clip:
    animation: Animation
    variant: int
    render: Render
    data: bytes     # the mp4 file
    caption: str

    @property
    def id(self) -> str:
        return f"{self.animation.name}-{self.variant:02d}"

    def meta(self, package: str, licence: str) -> dict:
        return {"source": "useanimations", "id": self.id, "package": package, "licence": licence,
                "animation": self.animation.name, "class": self.animation.classname, "variant": self.variant,
                "fps": FPS, "motion": "the animation's own keyframes (real)",
                "render": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(self.render).items()}}


def render_clips(animations: list[Animation], variants: int, size: int, frames: int, seed: int) -> list[Clip]:
    """``variants`` clips of every animation, in (animation, variant) order; a pure function of its inputs."""
    clips = []
    for a in animations:
        for v in range(variants):
            r = Render.draw(seed, a.name, v, size, frames)
            caption = random.Random(f"{seed}-caption-{a.name}-{v}").choice(CAPTIONS).format(
                c=a.classname, fg=r.stroke, bg=r.background)
            clips.append(Clip(a, v, r, encode_clip(render_frames(a, r, size), fps=FPS), caption))
    return clips


def classes(animations: list[Animation]) -> list[str]:
    return sorted({a.classname for a in animations})

