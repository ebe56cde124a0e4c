"""Zero-shot video classification (Table 5): frames decoded with PyAV, encoded as images, averaged.

One frame means the middle frame; N frames are sampled uniformly (the centre of each of N equal segments),
their L2-normalised embeddings are averaged and the zero-shot logits use the renormalised mean. UCF-101 is
scored by top-1, the Kinetics sets by mean(top-1, top-5) (:func:`evaclip.eval.metrics.video_score`).

Layout: ``ROOT/<class>/<video file>`` (UCF-101's and the usual Kinetics layout); folder names that match a
known benchmark's class names (ignoring case, spaces, underscores and punctuation) take its names and order.
As for image folders, a ``classnames.txt`` and a ``templates.txt`` beside the class folders are the set's own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from evaclip.data.video import frame_indices
from evaclip.errors import DatasetError
from evaclip.eval.datasets import Transform, class_folders, folder_labels, own_templates
from evaclip.eval.features import decoded_batches, encode_images, image_loader
from evaclip.eval.metrics import classification_metrics, video_score
from evaclip.models.clip import video_features
from evaclip.eval.zeroshot import Templates, build_zeroshot_classifier, zeroshot_logits

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")


def decode_frames(path: str | Path, num_frames: int = 1) -> list[Image.Image]:
    """``num_frames`` RGB frames of a video file sampled uniformly (PyAV); DatasetError if unreadable."""
    import av  # optional dependency: pip install av

    try:
        with av.open(str(path)) as container:
            total = sum(1 for p in container.demux(video=0) if p.size)  # packets, no decoding
        wanted = frame_indices(total, num_frames)
        if not wanted:
            raise DatasetError(f"{path} has no video frames")
        picked: dict[int, Image.Image] = {}
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    picked[i] = frame.to_image()
                if i >= wanted[-1]:
                    break
    except av.error.FFmpegError as e:
        raise DatasetError(f"cannot decode video {path}: {e}")
    if not picked:
        raise DatasetError(f"cannot decode any frame of {path}")
    last = picked[max(picked)]  # a short decode (fewer frames than packets) repeats the last frame
    return [picked.get(i, last).convert("RGB") for i in wanted]


class VideoDataset(Dataset):
    """(frames [F, 3, H, W], label) for a list of video files."""

    def __init__(self, items: Sequence[tuple[Path, int]], transform: Transform, num_frames: int = 1,
                 templates: list[str] | None = None):
        self.items, self.transform, self.num_frames = list(items), transform, num_frames
        self.templates = templates  # the set's own prompts (ROOT/templates.txt), None for the defaults

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        return torch.stack([self.transform(f) for f in decode_frames(path, self.num_frames)]), label


def load_video_folder(root: str | Path, transform: Transform, dataset: str | None = None,
                      num_frames: int = 1) -> tuple[VideoDataset, list[str]]:
    """A ``ROOT/<class>/<video>`` folder as a dataset, and the class names in label order."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"video dataset {root} does not exist; expected ROOT/<class name>/<video file>")
    # Every class folder keeps its label, empty ones included: dropping them would shift later labels.
    folders = class_folders(root)
    if not any(p.suffix.lower() in VIDEO_EXTENSIONS for d in folders for p in d.iterdir()):
        raise DatasetError(f"no class folders with video files ({', '.join(VIDEO_EXTENSIONS)}) under {root}; "
                           f"expected ROOT/<class name>/<video file>")
    classnames, labels = folder_labels(root, folders, dataset)
    items = [(p, y) for d, y in zip(folders, labels) for p in sorted(d.iterdir())
             if p.suffix.lower() in VIDEO_EXTENSIONS]
    return VideoDataset(items, transform, num_frames, own_templates(root)), classnames


@torch.no_grad()
def encode_videos(model, loader, device="cpu", amp: bool = False,
                  skipped: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the L2-normalised frame embeddings of each video [N, D] (not renormalised), and labels. With
    :func:`~evaclip.eval.features.image_loader`, videos that cannot be decoded are left out and the reasons
    appended to ``skipped``."""
    feats, labels = [], []
    batches = decoded_batches(loader, skipped, what="videos")
    for frames, target in tqdm(batches, total=len(loader), desc="videos", leave=False, dynamic_ncols=True,
                               disable=None):
        b, f = frames.shape[:2]
        emb = encode_images(model, frames.flatten(0, 1), device, amp)
        feats.append(video_features(emb, [f] * b).cpu())  # the training loss's clip feature
        labels.append(torch.as_tensor(target))
    return torch.cat(feats), torch.cat(labels)


def evaluate_video_classification(model, tokenizer, dataset: VideoDataset, classnames: Sequence[str],
                                  templates: Templates, dataset_name: str = "", device="cpu", amp: bool = False,
                                  batch_size: int = 8, workers: int = 0) -> dict[str, float]:
    """``acc1``, ``acc5``, ``mean_per_class_recall`` and ``score`` (Table 5's number for this dataset)."""
    classifier = build_zeroshot_classifier(model, tokenizer, classnames, templates, device=device, amp=amp)
    skipped: list[str] = []
    features, labels = encode_videos(model, image_loader(dataset, batch_size, workers), device=device, amp=amp,
                                     skipped=skipped)
    metrics = classification_metrics(zeroshot_logits(features, classifier), labels)
    metrics["score"] = video_score(metrics["acc1"], metrics["acc5"], dataset_name)
    metrics["num_frames"] = dataset.num_frames
    metrics["num_skipped_files"] = len(skipped)
    return metrics
