"""EVA ViT building blocks against references written out here from the raw weights.

Attention vs an explicit softmax, RMSNorm vs its closed form, RoPE vs a naive per-position rotation, the two
block formulas (pre-norm and res-post-norm), the MLPs, and patch dropout. Everything runs in float64 where the
reference is meant to be exact, so tolerances are tight.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import evaclip
from evaclip.models.layers import Attention, Block, Mlp, RMSNorm, SwiGLU, VisionRope, apply_rope, patch_dropout

# ---------------------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------------------


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (biases and norm weights included) a random non-trivial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return module


def ref_layernorm(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def ref_rmsnorm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


# Exact float64 comparisons where the code under test is float64 throughout. RMSNorm computes its mean square
# in fp32 (as the official code does, even for float64 input) and the RoPE tables are built in fp32, so
# anything through them agrees to fp32 precision only; a wrong formula is off by O(1).
EXACT = dict(rtol=1e-10, atol=1e-10)
FP32 = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # the random inputs below are then the same on every run


def ref_norm(module, x):
    if isinstance(module, RMSNorm):
        return ref_rmsnorm(x, module.weight, module.eps)
    return ref_layernorm(x, module.weight, module.bias, module.eps)


def naive_rope(x: torch.Tensor, positions: list[tuple[float, float]]) -> torch.Tensor:
    """Rotate x (..., n, head_dim) token by token: pair (2i, 2i+1) of the first half by pos_row * f_i, of the
    second half by pos_col * f_i, with f_i = 10000^(-2i / (head_dim / 2))."""
    out = x.clone()
    d = x.shape[-1]
    half = d // 2
    for n, (pr, pc) in enumerate(positions):
        for i in range(half // 2):
            f = 10000.0 ** (-2 * i / half)
            for base, pos in ((0, pr), (half, pc)):
                a, b = base + 2 * i, base + 2 * i + 1
                c, s = math.cos(pos * f), math.sin(pos * f)
                x0, x1 = x[..., n, a], x[..., n, b]
                out[..., n, a] = x0 * c - x1 * s
                out[..., n, b] = x0 * s + x1 * c
    return out


def grid_positions(grid: int, pt_seq_len: int) -> list[tuple[float, float]]:
    """(row, col) positions of the grid*grid patches in row-major order, rescaled onto pt_seq_len."""
    return [(r / grid * pt_seq_len, c / grid * pt_seq_len) for r in range(grid) for c in range(grid)]


def ref_attention(attn: Attention, x: torch.Tensor, positions=None) -> torch.Tensor:
    """Explicit-softmax multi-head attention from the raw weights; k has no bias; RoPE skips token 0."""
    B, N, C = x.shape
    h = attn.heads
    d = C // h
    if attn.subln:
        q, k, v = x @ attn.q_proj.weight.T, x @ attn.k_proj.weight.T, x @ attn.v_proj.weight.T
    else:
        w = attn.qkv.weight
        q, k, v = x @ w[:C].T, x @ w[C:2 * C].T, x @ w[2 * C:].T
    if attn.q_bias is not None:
        q = q + attn.q_bias
        v = v + attn.v_bias
    out = torch.empty_like(x)
    for b in range(B):
        for head in range(h):
            sl = slice(head * d, (head + 1) * d)
            qh, kh, vh = q[b, :, sl], k[b, :, sl], v[b, :, sl]
            if positions is not None:
                qh = torch.cat((qh[:1], naive_rope(qh[1:], positions[b])))
                kh = torch.cat((kh[:1], naive_rope(kh[1:], positions[b])))
            logits = qh @ kh.T / math.sqrt(d)
            e = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)
            out[b, :, sl] = (e / e.sum(dim=-1, keepdim=True)) @ vh
    if attn.subln:
        out = ref_norm(attn.inner_attn_ln, out)
    return out @ attn.proj.weight.T + attn.proj.bias


# ---------------------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("subln,qkv_bias,norm", [
    (False, True, "layernorm"), (False, False, "rmsnorm"), (True, True, "layernorm"), (True, True, "rmsnorm"),
])
def test_attention_matches_explicit_softmax(subln, qkv_bias, norm):
    attn = randomize_(Attention(32, 4, qkv_bias=qkv_bias, subln=subln, norm=norm, eps=1e-6)).double()
    assert (attn.q_bias is not None) == qkv_bias
    assert hasattr(attn, "q_proj") == subln and hasattr(attn, "qkv") != subln
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    torch.testing.assert_close(attn(x), ref_attention(attn, x), **(FP32 if norm == "rmsnorm" and subln else EXACT))


def test_attention_uses_q_and_v_bias_but_no_k_bias(monkeypatch):
    attn = randomize_(Attention(16, 2, qkv_bias=True, subln=False, norm="layernorm", eps=1e-6)).double()
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    seen = {}
    orig = F.linear

    def spy(inp, weight, bias=None):
        if weight is attn.qkv.weight:
            seen["bias"] = bias
        return orig(inp, weight, bias)

    # The fused projection's bias must be (q_bias, 0, v_bias): capture the call to see it.
    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    attn(x)
    monkeypatch.undo()
    bias = seen["bias"]
    assert torch.equal(bias[:16], attn.q_bias) and torch.equal(bias[32:], attn.v_bias)
    assert torch.count_nonzero(bias[16:32]) == 0
    # And the biases matter: zeroing v_bias changes the output (so the reference test above can fail).
    before = attn(x)
    with torch.no_grad():
        attn.v_bias.zero_()
    assert not torch.allclose(before, attn(x))


# ---------------------------------------------------------------------------------------------------------
# RMSNorm
# ---------------------------------------------------------------------------------------------------------
def test_rmsnorm_closed_form_fp32_and_fp64():
    for dtype in (torch.float32, torch.float64):
        norm = randomize_(RMSNorm(48, eps=1e-6)).to(dtype)
        x = torch.randn(3, 5, 48, dtype=dtype) * 3
        expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
        torch.testing.assert_close(norm(x), expected, **FP32)
    # eps is inside the square root: a zero vector maps to zero, not NaN.
    assert torch.equal(RMSNorm(4)(torch.zeros(1, 4)), torch.zeros(1, 4))


def test_rmsnorm_bf16_computes_the_variance_in_fp32():
    norm = randomize_(RMSNorm(64, eps=1e-6)).to(torch.bfloat16)
    # Large values with a spread: squaring and averaging in bf16 would lose several bits.
    x = (torch.randn(4, 64) * 200 + 300).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    xf = x.float()
    expected = (xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16) * norm.weight
    assert torch.equal(out, expected)
    bf16_variance = x.pow(2).mean(-1, keepdim=True)  # what a naive bf16 implementation would use
    naive = (x * torch.rsqrt(bf16_variance + 1e-6)) * norm.weight
    assert not torch.equal(out, naive)  # so the check above can tell the two apart


# ---------------------------------------------------------------------------------------------------------
# RoPE
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid,pt", [(4, 4), (3, 16), (5, 2)])
def test_rope_matches_naive_rotation(grid, pt):
    head_dim = 16
    rope = VisionRope(head_dim, pt_seq_len=pt, ft_seq_len=grid).double()
    x = torch.randn(2, 3, grid * grid, head_dim, dtype=torch.float64)
    expected = naive_rope(x, grid_positions(grid, pt))
    torch.testing.assert_close(apply_rope(x, rope.tables()), expected, **FP32)


def test_rope_without_ft_uses_the_pretraining_grid():
    rope = VisionRope(8, pt_seq_len=3).double()
    x = torch.randn(1, 1, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(apply_rope(x, rope.tables()), naive_rope(x, grid_positions(3, 3)), **FP32)


def test_rope_with_patch_dropout_keep_indices_gathers_per_sample():
    grid, pt, head_dim = 4, 16, 8
    rope = VisionRope(head_dim, pt_seq_len=pt, ft_seq_len=grid).double()
    keep = torch.tensor([[5, 0, 15, 9], [3, 12, 1, 7]])  # different subsets, in random order
    x = torch.randn(2, 2, 4, head_dim, dtype=torch.float64)
    pos = grid_positions(grid, pt)
    out = apply_rope(x, rope.tables(keep))
    for b in range(2):
        expected = naive_rope(x[b], [pos[i] for i in keep[b].tolist()])
        torch.testing.assert_close(out[b], expected, **FP32)


def test_attention_with_rope_skips_the_cls_token():
    grid, pt, dim, heads = 3, 16, 32, 2
    rope = VisionRope(dim // heads, pt_seq_len=pt, ft_seq_len=grid).double()
    for subln in (False, True):
        attn = randomize_(Attention(dim, heads, True, subln, "layernorm", 1e-6)).double()
        x = torch.randn(2, 1 + grid * grid, dim, dtype=torch.float64)
        pos = grid_positions(grid, pt)
        torch.testing.assert_close(attn(x, rope.tables()), ref_attention(attn, x, [pos, pos]), **FP32)
        # with keep indices (after patch dropout): 1 cls + 4 kept patches per sample
        keep = torch.tensor([[8, 2, 4, 0], [1, 3, 5, 7]])
        xk = torch.randn(2, 5, dim, dtype=torch.float64)
        positions = [[pos[i] for i in row.tolist()] for row in keep]
        torch.testing.assert_close(attn(xk, rope.tables(keep)), ref_attention(attn, xk, positions), **FP32)
    # RoPE changes the result (so the comparison above can fail); a rotation at position 0 is the identity,
    # so "cls not rotated" is the same as "cls at position (0, 0)", and patches must start at row/col 0.
    x = torch.randn(1, 1 + grid * grid, dim, dtype=torch.float64)
    assert not torch.allclose(attn(x, rope.tables()), ref_attention(attn, x, None))
    shifted = [[(r + 1, c) for r, c in pos]]
    assert not torch.allclose(attn(x, rope.tables()), ref_attention(attn, x, shifted))


def test_tower_with_patch_dropout_rotates_each_kept_patch_by_its_own_position():
    """The tower computes the RoPE tables once, after patch dropout; each block must still see every kept
    patch rotated by the position it came from (checked block by block against the naive rotation)."""
    grid, pt = 4, 16
    cfg = evaclip.get_model_config({"embed_dim": 16, "vision_cfg": {
        "image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16, "rope": True,
        "pt_hw_seq_len": pt, "intp_freq": True, "subln": True, "naiveswiglu": True, "patch_dropout": 0.5},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}})
    tower = evaclip.create_model(cfg).visual.double().train()
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    torch.manual_seed(7)
    out = tower.forward_features(images)

    # The reference: the same kept patches (same seed), then each block by hand with naive rotations.
    x = tower.embed(images)
    x = torch.cat((tower.cls_token.expand(3, -1, -1), x), dim=1) + tower.pos_embed
    torch.manual_seed(7)
    x, keep = patch_dropout(x, 0.5)
    assert len({tuple(sorted(k)) for k in keep.tolist()}) > 1  # the samples kept different patches
    pos = grid_positions(grid, pt)
    positions = [[pos[i] for i in row] for row in keep.tolist()]
    for blk in tower.blocks:
        a = ref_attention(blk.attn, blk.norm1(x), positions)
        x = x + a
        x = x + blk.mlp(blk.norm2(x))
    torch.testing.assert_close(out, tower.norm(x[:, 0]), **FP32)


# ---------------------------------------------------------------------------------------------------------
# MLPs and blocks
# ---------------------------------------------------------------------------------------------------------
def test_mlp_and_swiglu_formulas():
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    mlp = randomize_(Mlp(16, 40, subln=True)).double()
    h = x @ mlp.fc1.weight.T + mlp.fc1.bias
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
    h = ref_layernorm(h, mlp.ffn_ln.weight, mlp.ffn_ln.bias, 1e-5)  # the official Mlp's default-eps sub-LN
    torch.testing.assert_close(mlp(x), h @ mlp.fc2.weight.T + mlp.fc2.bias, **EXACT)

    for norm in ("layernorm", "rmsnorm"):
        sw = randomize_(SwiGLU(16, 40, subln=True, norm=norm, eps=1e-6)).double()
        a = x @ sw.w1.weight.T + sw.w1.bias
        g = a * torch.sigmoid(a) * (x @ sw.w2.weight.T + sw.w2.bias)
        g = ref_norm(sw.ffn_ln, g)
        tol = FP32 if norm == "rmsnorm" else EXACT
        torch.testing.assert_close(sw(x), g @ sw.w3.weight.T + sw.w3.bias, **tol)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_pre_norm_and_res_post_norm_blocks(norm):
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    kw = dict(qkv_bias=True, norm=norm, eps=1e-6, subln=False, swiglu=False, drop_path=0.0,
              ls_init_value=None)
    pre = randomize_(Block(32, 4, 64, postnorm=False, **kw), seed=1).double()
    post = randomize_(Block(32, 4, 64, postnorm=True, **kw), seed=1).double()
    # pre-norm: x + attn(norm1(x)), then + mlp(norm2(.))
    h = x + pre.attn(ref_norm(pre.norm1, x))
    expected_pre = h + pre.mlp(ref_norm(pre.norm2, h))
    tol = FP32 if norm == "rmsnorm" else EXACT
    torch.testing.assert_close(pre(x), expected_pre, **tol)
    # res-post-norm: x + norm1(attn(x)), then + norm2(mlp(.)); the residual stream itself is never normalised
    h = x + ref_norm(post.norm1, post.attn(x))
    expected_post = h + ref_norm(post.norm2, post.mlp(h))
    torch.testing.assert_close(post(x), expected_post, **tol)
    assert not torch.allclose(pre(x), post(x))  # same weights, different formulas


# ---------------------------------------------------------------------------------------------------------
# patch dropout
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,prob", [(16, 0.5), (16, 0.3), (10, 0.99), (49, 0.75)])
def test_patch_dropout_keeps_cls_and_the_right_count(n, prob):
    x = torch.randn(3, 1 + n, 8)
    out, keep = patch_dropout(x, prob, generator=torch.Generator().manual_seed(0))
    n_keep = max(1, int(n * (1 - prob)))
    assert out.shape == (3, 1 + n_keep, 8) and keep.shape == (3, n_keep)
    assert torch.equal(out[:, 0], x[:, 0])
    for b in range(3):
        assert len(set(keep[b].tolist())) == n_keep and keep[b].max() < n
        assert torch.equal(out[b, 1:], x[b, 1:][keep[b]])
    assert not torch.equal(keep[0], keep[1]) or n_keep == 1  # each sample draws its own subset


def _tiny_clip(name: str, **vision):
    cfg = evaclip.get_model_config(name)
    for k, v in vision.items():
        setattr(cfg.vision_cfg, k, v)
    torch.manual_seed(0)
    return evaclip.create_model(cfg)


def _block_input_lengths(model) -> list[int]:
    lengths = []
    model.visual.blocks[0].register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    return lengths


@pytest.mark.parametrize("name", ["evaclip-tiny", "evaclip-tiny-18b"])
def test_patch_dropout_only_in_training(name):
    model = _tiny_clip(name, patch_dropout=0.5)
    reference = _tiny_clip(name, patch_dropout=0.0)  # same seed: same weights
    lengths = _block_input_lengths(model)
    images = torch.randn(2, 3, 32, 32)
    n = (32 // 8) ** 2
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), reference.eval().encode_image(images), rtol=0, atol=0)
        model.train()
        torch.manual_seed(1)
        a = model.encode_image(images)
        torch.manual_seed(2)
        b = model.encode_image(images)
    assert lengths == [1 + n, 1 + max(1, int(n * 0.5)), 1 + max(1, int(n * 0.5))]
    assert not torch.allclose(a, b)  # different random subsets

    # p = 0: training mode gives exactly the eval output (nothing dropped, no other randomness).
    reference.train()
    with torch.no_grad():
        torch.testing.assert_close(reference.encode_image(images), model.eval().encode_image(images), rtol=0, atol=0)


def test_patch_dropout_output_equals_running_on_the_kept_tokens_in_order():
    """With RoPE, tokens carry their positions through the shuffle: the cls output under patch dropout equals
    a run on the same kept patches sorted back into grid order (attention is permutation-equivariant)."""
    model = _tiny_clip("evaclip-tiny", patch_dropout=0.5).double().train()
    vis = model.visual
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    n = vis.cfg.num_patches
    torch.manual_seed(7)
    with torch.no_grad():
        out = vis(images)
    torch.manual_seed(7)
    keep = torch.randn(3, n).topk(max(1, int(n * 0.5)), dim=-1).indices  # the same draw as patch_dropout's
    keep_sorted = keep.sort(dim=-1).values
    with torch.no_grad():
        tokens = torch.cat((vis.cls_token.expand(3, -1, -1), vis.patch_embed(images)), dim=1) + vis.pos_embed
        patches = torch.stack([tokens[b, 1:][keep_sorted[b]] for b in range(3)])
        x = torch.cat((tokens[:, :1], patches), dim=1)
        rope = vis.rope.tables(keep_sorted)
        for blk in vis.blocks:
            x = blk(x, rope)
        expected = vis.head(vis.norm(x[:, 0]))
    torch.testing.assert_close(out, expected, **EXACT)


# ---------------------------------------------------------------------------------------------------------
# whole towers, composed from the references above
# ---------------------------------------------------------------------------------------------------------
def ref_mlp(mlp, x):
    if isinstance(mlp, SwiGLU):
        a = x @ mlp.w1.weight.T + mlp.w1.bias
        h = a * torch.sigmoid(a) * (x @ mlp.w2.weight.T + mlp.w2.bias)
        if not isinstance(mlp.ffn_ln, torch.nn.Identity):
            h = ref_norm(mlp.ffn_ln, h)
        return h @ mlp.w3.weight.T + mlp.w3.bias
    h = x @ mlp.fc1.weight.T + mlp.fc1.bias
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    if not isinstance(mlp.ffn_ln, torch.nn.Identity):
        h = ref_norm(mlp.ffn_ln, h)
    return h @ mlp.fc2.weight.T + mlp.fc2.bias


def ref_vision(vis, images):
    """cls + patches + pos -> blocks -> norm of the cls token -> head, from the raw weights."""
    cfg = vis.cfg
    p, g = cfg.patch_size, cfg.grid_size
    B = images.shape[0]
    # patch embedding as an explicit matmul over flattened p x p patches (channel-major, like Conv2d)
    patches = images.unfold(2, p, p).unfold(3, p, p)  # (B, 3, g, g, p, p)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(B, g * g, 3 * p * p)
    x = patches @ vis.patch_embed.proj.weight.reshape(cfg.width, -1).T + vis.patch_embed.proj.bias
    x = torch.cat((vis.cls_token.expand(B, -1, -1), x), dim=1) + vis.pos_embed
    positions = [grid_positions(g, cfg.pt_hw_seq_len if cfg.intp_freq else g)] * B if cfg.rope else None
    for blk in vis.blocks:
        if blk.postnorm:
            x = x + ref_norm(blk.norm1, ref_attention(blk.attn, x, positions))
            x = x + ref_norm(blk.norm2, ref_mlp(blk.mlp, x))
        else:
            x = x + ref_attention(blk.attn, ref_norm(blk.norm1, x), positions)
            x = x + ref_mlp(blk.mlp, ref_norm(blk.norm2, x))
    out = ref_norm(vis.norm, x[:, 0]) @ vis.head.weight.T
    return out + vis.head.bias if vis.head.bias is not None else out


EVA01_STYLE = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8,
                                               "mlp_ratio": 4.3637, "patch_size": 8, "fusedLN": True},
               "text_cfg": {"context_length": 16, "vocab_size": 300, "width": 32, "heads": 4, "layers": 2}}


@pytest.mark.parametrize("name", ["evaclip-tiny", "evaclip-tiny-18b", "EVA01"])
def test_vision_tower_against_the_composed_reference(name):
    cfg = evaclip.get_model_config(EVA01_STYLE if name == "EVA01" else name)
    model = randomize_(evaclip.create_model(cfg, device="meta").to_empty(device="cpu"), seed=3).double().eval()
    model.init_buffers()  # RoPE tables
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        tol = FP32 if cfg.vision_cfg.norm_type == "rmsnorm" or cfg.vision_cfg.rope else EXACT
        torch.testing.assert_close(model.encode_image(images), ref_vision(model.visual, images), **tol)


def ref_text(text, tokens):
    """CLIP's text tower written with nn.MultiheadAttention (as the official code) and an explicit causal mask."""
    x = text.token_embedding.weight[tokens] + text.positional_embedding[: tokens.shape[1]]
    L = tokens.shape[1]
    mask = torch.full((L, L), float("-inf"), dtype=x.dtype).triu(1)
    for blk in text.transformer.resblocks:
        mha = torch.nn.MultiheadAttention(x.shape[-1], blk.attn.heads, dtype=x.dtype)
        with torch.no_grad():
            mha.in_proj_weight.copy_(blk.attn.in_proj_weight)
            mha.in_proj_bias.copy_(blk.attn.in_proj_bias)
            mha.out_proj.weight.copy_(blk.attn.out_proj.weight)
            mha.out_proj.bias.copy_(blk.attn.out_proj.bias)
        h = ref_layernorm(x, blk.ln_1.weight, blk.ln_1.bias, 1e-5).transpose(0, 1)  # LND, as the official code
        x = x + mha(h, h, h, need_weights=False, attn_mask=mask)[0].transpose(0, 1)
        h = ref_layernorm(x, blk.ln_2.weight, blk.ln_2.bias, 1e-5) @ blk.mlp.c_fc.weight.T + blk.mlp.c_fc.bias
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        x = x + h @ blk.mlp.c_proj.weight.T + blk.mlp.c_proj.bias
    x = ref_layernorm(x, text.ln_final.weight, text.ln_final.bias, 1e-5)
    eot = tokens.argmax(dim=-1)  # the end-of-text token has the highest id
    return torch.stack([x[b, eot[b]] for b in range(len(tokens))]) @ text.text_projection


def test_text_tower_against_multihead_attention_reference():
    cfg = evaclip.get_model_config(EVA01_STYLE)
    model = randomize_(evaclip.create_model(cfg), seed=4).double().eval()
    tokens = torch.randint(1, 298, (3, 16))
    tokens[0, 5], tokens[1, 15], tokens[2, 9] = 299, 299, 299  # EOT at different places; padding after it
    tokens[0, 6:], tokens[2, 10:] = 0, 0
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), ref_text(model.text, tokens), **EXACT)
        # shorter sequences use the first positions
        torch.testing.assert_close(model.encode_text(tokens[:, :10]), ref_text(model.text, tokens[:, :10]), **EXACT)
