"""Masked image modeling: student, teacher, loss and the official MIM checkpoint layout."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import evaclip
from evaclip.errors import CheckpointError, ConfigError
from evaclip.models.checkpoint import save_file
from evaclip.models.config import VisionConfig
from evaclip.models.masking import BlockMaskGenerator
from evaclip.models.mim import MIMStudent, MIMTeacher, mim_loss, mim_step_loss
from evaclip.models.vision import EVAVisionTransformer, interpolate_pos_embed

STUDENT = VisionConfig(image_size=32, patch_size=8, width=32, layers=2, head_width=16, mlp_ratio=2.0)
TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}


def student_clip_config(embed_dim=16):
    return {"embed_dim": embed_dim, "vision_cfg": {k: v for k, v in dataclasses.asdict(STUDENT).items()
                                                   if v != getattr(VisionConfig(), k)},
            "text_cfg": TEXT}


@pytest.fixture(scope="module")
def teacher_clip():
    torch.manual_seed(0)
    return evaclip.create_model("evaclip-tiny")  # w64 RoPE(intp_freq) ViT, grid 4, embed 64


def batch(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    mask = BlockMaskGenerator(4)(n, seed)
    return images, mask


def test_loss_matches_naive_cosine_loop():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    naive = 0.0
    for x, y in zip(a.tolist(), b.tolist()):
        dot = sum(p * q for p, q in zip(x, y))
        nx, ny = sum(p * p for p in x) ** 0.5, sum(q * q for q in y) ** 0.5
        naive += dot / (nx * ny)
    assert mim_loss(a, b).item() == pytest.approx(-naive / 7, abs=1e-6)
    low = mim_loss(a.bfloat16(), b.bfloat16())
    assert low.dtype == torch.float32  # computed in fp32 even from bf16 activations
    assert mim_loss(a, 3 * a).item() == pytest.approx(-1.0, abs=1e-6)  # scale-invariant, minimum -1
    with pytest.raises(ValueError, match="no masked patches"):
        mim_loss(a[:0], b[:0])


def test_mask_token_replaces_masked_embeddings_exactly():
    torch.manual_seed(0)
    student = MIMStudent(STUDENT, teacher_dim=8).eval()
    images, mask = batch()
    seen = []
    student.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    out = student(images, mask)
    other = torch.randn_like(images)
    student(other, mask)
    x, y = seen
    emb = student.patch_embed(images)
    expected = torch.where(mask[..., None], student.mask_token.expand_as(emb), emb)
    expected = torch.cat((student.cls_token.expand(3, -1, -1), expected), 1) + student.pos_embed
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
    # Masked rows carry no information about the image; unmasked rows do.
    assert torch.equal(x[:, 1:][mask], y[:, 1:][mask])
    assert not torch.isclose(x[:, 1:][~mask], y[:, 1:][~mask]).all(dim=-1).any()
    assert out.shape == (int(mask.sum()), 8)
    # Predictions are gathered batch-major in grid order: recompute from the full token sequence.
    tokens = student.forward_features(student.mask_embeddings(images, mask), patches_embedded=True,
                                      return_all_tokens=True)
    rows = [student.lm_head(tokens[b, 1 + n]) for b in range(3) for n in range(16) if mask[b, n]]
    torch.testing.assert_close(out, torch.stack(rows))


def test_teacher_targets_are_normed_projected_patches_and_pooled_embedding(teacher_clip):
    teacher = MIMTeacher(teacher_clip.visual, include_cls=True)
    images, _ = batch()
    patch, pooled = teacher(images)
    v = teacher_clip.visual.eval()
    with torch.no_grad():
        x = torch.cat((v.cls_token.expand(3, -1, -1), v.patch_embed(images)), 1) + v.pos_embed
        rope = v.rope.tables() if v.rope is not None else None
        for blk in v.blocks:
            x = blk(x, rope)
        manual = v.norm(x[:, 1:]) @ v.head.weight.T + v.head.bias
        torch.testing.assert_close(patch, manual, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pooled, teacher_clip.encode_image(images), rtol=1e-5, atol=1e-6)
    assert patch.shape == (3, 16, 64) and not patch.requires_grad


def test_gradients_reach_only_the_student_and_teacher_stays_frozen(teacher_clip):
    torch.manual_seed(0)
    student = MIMStudent(STUDENT, teacher_dim=64)
    teacher = MIMTeacher(teacher_clip.visual, include_cls=True)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.train()
    assert not teacher.training and not teacher.visual.training
    assert not any(p.requires_grad for p in teacher.parameters())
    opt = torch.optim.AdamW(list(student.parameters()) + list(teacher.parameters()), lr=1e-2)
    images, mask = batch()
    loss, metrics = mim_step_loss(student, teacher, images, mask)
    loss.backward()
    assert set(metrics) == {"loss", "patch_loss", "cls_loss"}
    assert all(p.grad is None for p in teacher.parameters())
    grads = {n: p.grad for n, p in student.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert grads["mask_token"].abs().sum() > 0 and grads["lm_head.weight"].abs().sum() > 0
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_postnorm_student_zero_inits_block_norms_so_blocks_start_as_identity():
    cfg = evaclip.get_model_config("evaclip-tiny-18b").vision_cfg  # res-post-norm + RMSNorm
    student = MIMStudent(cfg, teacher_dim=8).eval()
    for blk in student.blocks:
        assert torch.equal(blk.norm1.weight, torch.zeros_like(blk.norm1.weight))
        assert torch.equal(blk.norm2.weight, torch.zeros_like(blk.norm2.weight))
    ins, outs = [], []
    student.blocks[0].register_forward_pre_hook(lambda m, a: ins.append(a[0]))
    student.blocks[-1].register_forward_hook(lambda m, a, o: outs.append(o))
    images, mask = batch()
    student(images, mask)
    assert torch.equal(ins[0], outs[0])
    pre_norm = MIMStudent(STUDENT, teacher_dim=8)  # pre-norm blocks keep unit gains
    assert torch.equal(pre_norm.blocks[0].norm1.weight, torch.ones(32))


def test_checkpoint_is_official_mim_layout_and_initialises_a_clip(tmp_path):
    torch.manual_seed(0)
    student = MIMStudent(STUDENT, teacher_dim=64)
    path = tmp_path / "mim.safetensors"
    student.save(path)
    sd = load_file(str(path))
    assert {"mask_token", "lm_head.weight", "lm_head.bias", "cls_token", "pos_embed", "patch_embed.proj.weight",
            "norm.weight", "blocks.1.mlp.fc2.weight"} <= set(sd)
    assert not any(k.startswith(("visual.", "head.")) for k in sd)

    again = MIMStudent(STUDENT, teacher_dim=64)
    again.load(path)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in student.state_dict().items())
    with pytest.raises(CheckpointError, match="does not match"):
        MIMStudent(STUDENT, teacher_dim=32).load(path)

    cfg = student_clip_config()
    torch.manual_seed(5)
    fresh = evaclip.create_model(cfg)
    torch.manual_seed(5)
    clip = evaclip.create_model(cfg, pretrained_image=path)
    for k, v in clip.visual.state_dict().items():
        if k.startswith("head."):
            assert torch.equal(v, fresh.visual.state_dict()[k])  # fresh CLIP head, untouched by the file
        else:
            assert torch.equal(v, sd[k]), k
    assert not torch.equal(clip.visual.blocks[0].attn.qkv.weight, fresh.visual.blocks[0].attn.qkv.weight)


def test_teacher_grid_alignment_resizes_input_and_position_embedding():
    torch.manual_seed(0)
    tcfg = VisionConfig(image_size=32, patch_size=16, width=32, layers=1, head_width=16)  # grid 2
    tower = EVAVisionTransformer(tcfg, embed_dim=24).eval()
    teacher = MIMTeacher(tower, student_grid=4)  # student: 32 px, patch 8 -> grid 4
    assert teacher.image_size == 64
    images, _ = batch()
    out = teacher(images)
    assert out.shape == (3, 16, 24)
    ref = EVAVisionTransformer(dataclasses.replace(tcfg, image_size=64), embed_dim=24).eval()
    sd = dict(tower.state_dict())
    sd["pos_embed"] = interpolate_pos_embed(sd["pos_embed"], 4)
    ref.load_state_dict(sd)
    with torch.no_grad():
        big = F.interpolate(images, size=(64, 64), mode="bicubic", align_corners=False, antialias=True)
        tokens = ref.forward_features(big, return_all_tokens=True)
        torch.testing.assert_close(out, ref.head(tokens[:, 1:]))

    rope = VisionConfig(image_size=32, patch_size=8, width=32, layers=1, head_width=16, rope=True,
                        pt_hw_seq_len=4)  # RoPE without intp_freq: fixed 4x4 table
    with pytest.raises(ConfigError, match="intp_freq"):
        MIMTeacher(EVAVisionTransformer(rope, 8), student_grid=8)


def test_teacher_from_checkpoint_matches_the_clip_tower(tmp_path, teacher_clip):
    path = tmp_path / "teacher.safetensors"
    save_file(teacher_clip.state_dict(), path)
    from_file = MIMTeacher.from_checkpoint("evaclip-tiny", path)
    images, _ = batch()
    torch.testing.assert_close(from_file(images), MIMTeacher(teacher_clip.visual)(images))
    regrid = MIMTeacher.from_checkpoint("evaclip-tiny", path, student_grid=8)  # RoPE with intp_freq: allowed
    assert regrid(torch.randn(2, 3, 64, 64)).shape == (2, 64, 64)


def test_a_few_steps_on_a_fixed_batch_reduce_the_loss(teacher_clip):
    torch.manual_seed(0)
    student = MIMStudent(STUDENT, teacher_dim=64)
    teacher = MIMTeacher(teacher_clip.visual)
    images, mask = batch(n=4, seed=1)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss, _ = mim_step_loss(student, teacher, images, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses  # measured: 0.02 -> -0.61


@pytest.mark.parametrize("cfg", [STUDENT, evaclip.get_model_config("evaclip-tiny-18b").vision_cfg])
def test_meta_build_then_init_weights_gives_a_working_student(cfg):
    with torch.device("meta"):
        student = MIMStudent(cfg, teacher_dim=8)
    student.to_empty(device="cpu")
    with torch.no_grad():
        for p in student.parameters():
            p.fill_(float("nan"))  # what uninitialised memory may hold
    student.init_weights()
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert isinstance(student.head, torch.nn.Identity)
    assert torch.equal(student.lm_head.bias, torch.zeros(8)) and student.mask_token.std() > 0.005
    images, mask = batch()
    assert torch.isfinite(student(images, mask)).all()


def test_student_load_takes_any_wrapper_but_never_resizes(tmp_path):
    """``MIMStudent.load`` goes through the checkpoint fitting: a DeepSpeed-wrapped file with the official RoPE-free
    MIM keys loads exactly, while a student of another grid is refused by name (resuming must not interpolate)."""
    torch.manual_seed(0)
    student = MIMStudent(STUDENT, teacher_dim=24)
    wrapped = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"module." + k: v.clone() for k, v in student.state_dict().items()}}, wrapped)
    again = MIMStudent(STUDENT, teacher_dim=24)
    again.load(wrapped)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in student.state_dict().items())

    other_grid = MIMStudent(dataclasses.replace(STUDENT, image_size=48), teacher_dim=24)
    path = tmp_path / "other.safetensors"
    other_grid.save(path)
    before = again.pos_embed.detach().clone()
    with pytest.raises(CheckpointError, match="pos_embed"):
        again.load(path)
    assert torch.equal(again.pos_embed, before)
