"""The CLIP wrapper: ``visual`` + ``text`` + ``logit_scale`` (the official ``CustomCLIP`` layout)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from evaclip.models.config import CLIPConfig
from evaclip.models.text import TextTransformer
from evaclip.models.vision import EVAVisionTransformer

LOGIT_SCALE_MAX = math.log(100.0)  # temperature >= 0.01, the value the paper fixes


def build_text_tower(cfg: CLIPConfig) -> nn.Module:
    if cfg.text_cfg.is_hf:
        from evaclip.models.hf_text import HFTextEncoder  # optional dependency: transformers
        return HFTextEncoder(cfg.text_cfg, cfg.embed_dim)
    return TextTransformer(cfg.text_cfg, cfg.embed_dim, quick_gelu=cfg.quick_gelu)


class CLIP(nn.Module):
    """An EVA-CLIP model. ``forward(images, tokens)`` returns normalised features and ``exp(logit_scale)``.

    ``logit_scale`` has shape (1,), not (), so that FSDP2 / ZeRO-3 can shard it like any other parameter;
    checkpoints with a 0-d value load either way.
    """

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.visual = EVAVisionTransformer(cfg.vision_cfg, cfg.embed_dim)
        self.text = build_text_tower(cfg)
        self.logit_scale = nn.Parameter(torch.full((1,), float(cfg.init_logit_scale)),
                                        requires_grad=cfg.learn_logit_scale)
        # Only the sigmoid (SigLIP) loss uses a bias; CLIP checkpoints do not have one.
        self.logit_bias = None
        if cfg.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.full((1,), float(cfg.init_logit_bias)))

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter and buffer (used after building on the meta device + ``to_empty``)."""
        self.visual.init_weights()
        self.text.init_weights()
        self.logit_scale.fill_(self.cfg.init_logit_scale)
        if self.logit_bias is not None:
            self.logit_bias.fill_(self.cfg.init_logit_bias)

    def init_buffers(self) -> None:
        self.visual.init_buffers()
        self.text.init_buffers()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        names = {"logit_scale"}
        names |= {f"visual.{n}" for n in self.visual.no_weight_decay()}
        names |= {f"text.{n}" for n in self.text.no_weight_decay()}
        return names

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """The official post-step clamp to [0, ln 100]."""
        self.logit_scale.clamp_(0, LOGIT_SCALE_MAX)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.text(tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, frame_counts: list[int] | None = None):
        """Normalised image and text features and the logit scale. With ``frame_counts`` (one per sample),
        ``images`` holds every frame of the batch's clips (images count 1) and sample i's feature is
        :func:`video_features` of its frames: all frames go through the vision tower as one batch."""
        image_features = self.encode_image(images, normalize=True)
        if frame_counts is not None:
            image_features = video_features(image_features, frame_counts)
        text_features = self.encode_text(tokens, normalize=True)
        return image_features, text_features, self.logit_scale.exp()


def video_features(frame_features: torch.Tensor, frame_counts: list[int]) -> torch.Tensor:
    """A clip's feature: the mean of its frames' L2-normalised features, renormalised (the paper: "the mean of
    all [CLS] embeddings serves as the representation for the video"). ``frame_features`` [sum(counts), D] in
    clip order -> [len(counts), D]. One function for training and zero-shot video evaluation."""
    counts = torch.as_tensor(frame_counts, device=frame_features.device)
    owner = torch.repeat_interleave(torch.arange(len(frame_counts), device=frame_features.device), counts)
    normed = F.normalize(frame_features, dim=-1)
    sums = normed.new_zeros(len(frame_counts), normed.shape[-1]).index_add(0, owner, normed)
    return F.normalize(sums / counts.unsqueeze(1).to(normed.dtype), dim=-1)
