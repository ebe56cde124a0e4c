"""A clip's feature is the mean of its frames' features (evaclip.models.clip.video_features), the same in training
and in zero-shot video evaluation; a batch mixing clips and images has the loss of its precomputed features."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from evaclip.models import create_model
from evaclip.models.clip import video_features
from evaclip.train.loss import ClipLoss


def test_the_clip_feature_is_the_mean_of_single_frame_calls_and_the_loss_follows():
    torch.manual_seed(0)
    model = create_model("evaclip-tiny").eval()
    size = model.visual.image_size
    counts = [3, 1, 2, 1]
    frames = torch.randn(sum(counts), 3, size, size)
    tokens = torch.randint(1, 400, (len(counts), model.cfg.text_cfg.context_length))
    with torch.no_grad():
        img, txt, scale = model(frames, tokens, frame_counts=counts)
        singles = [F.normalize(model.encode_image(f[None]), dim=-1)[0] for f in frames]
        want, i = [], 0
        for n in counts:
            want.append(F.normalize(torch.stack(singles[i:i + n]).mean(0), dim=-1))
            i += n
        want = torch.stack(want)
        assert torch.allclose(img, want, atol=1e-5)
        assert torch.allclose(video_features(torch.stack(singles), counts), want, atol=1e-6)
        loss = ClipLoss()(img, txt, scale, tokens)
        assert torch.allclose(loss, ClipLoss()(want, F.normalize(model.encode_text(tokens), dim=-1), scale, tokens),
                              atol=1e-5)
        # an image is a clip of one frame
        assert torch.allclose(img[1], F.normalize(model.encode_image(frames[3:4]), dim=-1)[0], atol=1e-6)
