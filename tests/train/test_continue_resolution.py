"""Continuing a run at a higher resolution (the "+" stages: model.pretrained + model.image_size): the position
embedding is interpolated on load as the official ``resize_evaclip_pos_embed`` does, and RoPE tables are those
of the official ``VisionRotaryEmbeddingFast`` on the new grid (intp_freq), both restated here from
baaivision/EVA (EVA-CLIP/rei/eva_clip/utils.py and rope.py)."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from evaclip.train.config import apply_overrides
from evaclip.train.recipes import get_recipe
from evaclip.train.tasks import ClipTask
from evaclip.train.trainer import train


def official_resize_pos_embed(pos_embed_checkpoint: torch.Tensor, num_patches: int) -> torch.Tensor:
    """resize_evaclip_pos_embed, for one model with one extra (cls) token."""
    embedding_size = pos_embed_checkpoint.shape[-1]
    num_extra_tokens = 1
    orig_size = int((pos_embed_checkpoint.shape[-2] - num_extra_tokens) ** 0.5)
    new_size = int(num_patches ** 0.5)
    extra_tokens = pos_embed_checkpoint[:, :num_extra_tokens]
    pos_tokens = pos_embed_checkpoint[:, num_extra_tokens:]
    pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, embedding_size).permute(0, 3, 1, 2)
    pos_tokens = F.interpolate(pos_tokens, size=(new_size, new_size), mode="bicubic", align_corners=False)
    pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((extra_tokens, pos_tokens), dim=1)


def official_rope_tables(dim: int, pt_seq_len: int, ft_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionRotaryEmbeddingFast(dim=head_dim // 2, pt_seq_len, ft_seq_len), freqs_for='lang'."""
    freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    t = torch.arange(ft_seq_len) / ft_seq_len * pt_seq_len
    freqs = torch.einsum("..., f -> ... f", t, freqs)
    freqs = freqs.repeat_interleave(2, dim=-1)  # repeat('... n -> ... (n r)', r=2)
    a = freqs[:, None, :].expand(ft_seq_len, ft_seq_len, freqs.shape[-1])  # broadcat
    b = freqs[None, :, :].expand(ft_seq_len, ft_seq_len, freqs.shape[-1])
    freqs = torch.cat((a, b), dim=-1)
    return freqs.cos().view(-1, freqs.shape[-1]), freqs.sin().view(-1, freqs.shape[-1])


def tiny(out_dir, *extra: str):
    return apply_overrides(get_recipe("tiny"), [f"out_dir={out_dir}", "steps=3", "schedule.warmup_steps=1",
                                                "data.batch_size=16", "checkpoint_every=0", "tensorboard=false",
                                                "progress=false", *extra])


@pytest.mark.parametrize("model", ["evaclip-tiny", "evaclip-tiny-18b"])  # RoPE + abs pos; abs pos only (8B/18B)
def test_a_tiny_run_continued_at_a_higher_resolution(tmp_path, model):
    train(tiny(tmp_path / "224", f"model.name={model}"))
    first = load_file(tmp_path / "224" / "final.safetensors")
    # lr 0: the continued run's exported weights are exactly what it loaded
    cont = tiny(tmp_path / "448", f"model.name={model}", f"model.pretrained={tmp_path / '224' / 'final.safetensors'}",
                "model.image_size=48", "optim.lr=0", "steps=2")
    train(cont)
    second = load_file(tmp_path / "448" / "final.safetensors")
    old = first["visual.pos_embed"]
    assert old.shape[1] == 1 + 4 * 4 and second["visual.pos_embed"].shape[1] == 1 + 6 * 6
    torch.testing.assert_close(second["visual.pos_embed"], official_resize_pos_embed(old, 36), rtol=0, atol=1e-6)
    for key, value in first.items():
        if key != "visual.pos_embed":
            assert torch.equal(second[key], value), key
    config = json.loads((tmp_path / "448" / "model_config.json").read_text())
    assert config["vision_cfg"]["image_size"] == 48

    model_ = ClipTask(cont).build(torch.device("cpu"))
    vc = model_.visual.cfg
    if vc.rope:  # tables rebuilt for the 6x6 grid on the 4x4 grid's positions, as the official intp_freq
        cos, sin = official_rope_tables(vc.width // vc.heads // 2, 4, 6)
        torch.testing.assert_close(model_.visual.rope.freqs_cos, cos, rtol=0, atol=1e-6)
        torch.testing.assert_close(model_.visual.rope.freqs_sin, sin, rtol=0, atol=1e-6)
    with torch.no_grad():
        out = model_.encode_image(torch.randn(2, 3, 48, 48))
    assert out.shape == (2, model_.cfg.embed_dim) and torch.isfinite(out).all()


def test_a_rope_tower_without_intp_freq_keeps_its_trained_positions(tmp_path):
    from evaclip.models import get_model_config

    cfg = get_model_config("evaclip-tiny")
    cfg.vision_cfg.intp_freq = False  # its RoPE table is fixed to the 4x4 grid it was trained on
    path = tmp_path / "fixed-rope.json"
    path.write_text(json.dumps(cfg.to_dict()))
    task = ClipTask(tiny(tmp_path / "run", f"model.name={path}", "model.image_size=48"))
    vc = task.model_cfg.vision_cfg
    assert (vc.image_size, vc.intp_freq, vc.pt_hw_seq_len) == (48, True, 4)
    model = task.build(torch.device("cpu"))
    cos, _ = official_rope_tables(vc.width // vc.heads // 2, 4, 6)
    torch.testing.assert_close(model.visual.rope.freqs_cos, cos, rtol=0, atol=1e-6)
