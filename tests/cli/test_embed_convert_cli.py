"""``evaclip embed`` and ``evaclip convert`` run in-process on real files (images made with PIL, checkpoints
written by torch.save / safetensors) and checked against the model computed directly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import evaclip
from evaclip.cli.main import main
from evaclip.models.checkpoint import export_state_dict, save_file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model with non-default weights, and its checkpoint in the released (flat) layout."""
    torch.manual_seed(0)
    model = evaclip.create_model("evaclip-tiny").eval()
    with torch.no_grad():
        model.visual.head.weight.mul_(1000)
        model.logit_scale.fill_(3.0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_file(export_state_dict(model.state_dict(), "flat"), path)
    return model, path


def make_images(root):
    """A folder of real images of several sizes and modes, one broken file and one non-image file."""
    rng = np.random.default_rng(0)
    (root / "sub" / "deeper").mkdir(parents=True)
    specs = {"b.png": (40, 30, "RGB"), "a.jpg": (32, 32, "RGB"), "sub/c.png": (50, 64, "L"),
             "sub/deeper/d.PNG": (33, 47, "RGBA"), "e.webp": (36, 36, "RGB")}
    for rel, (w, h, mode) in specs.items():
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8).squeeze()
        Image.fromarray(arr, mode=mode).save(root / rel)
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return sorted(specs, key=str)  # the decodable ones, in sorted relative-path order


def expected_image_rows(model, root, rels, normalize=True):
    from evaclip.transforms import image_transform
    preprocess = image_transform(model.visual.image_size, is_train=False)
    batch = torch.stack([preprocess(Image.open(root / rel)) for rel in rels])
    with torch.no_grad():
        return model.encode_image(batch, normalize=normalize).numpy()


def test_embed_images(tiny, tmp_path, capsys):
    model, ckpt = tiny
    root = tmp_path / "imgs"
    root.mkdir()
    rels = make_images(root)
    out = tmp_path / "out" / "img.npy"
    rc = main(["embed", "--model", "evaclip-tiny", "--pretrained", str(ckpt), "--images", str(root),
               "--out", str(out), "--batch-size", "2"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "skipped 1 undecodable" in err
    arr = np.load(out)
    assert arr.dtype == np.float32 and arr.shape == (5, 64)
    listed = out.with_suffix(".txt").read_text().splitlines()
    assert listed == sorted(rels) == ["a.jpg", "b.png", "e.webp", "sub/c.png", "sub/deeper/d.PNG"]
    np.testing.assert_allclose(arr, expected_image_rows(model, root, listed), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, rtol=1e-5)
    assert not list(out.parent.glob("*.tmp"))

    raw = tmp_path / "raw.npy"
    assert main(["embed", "--model", "evaclip-tiny", "--pretrained", str(ckpt), "--images", str(root),
                 "--out", str(raw), "--no-normalize", "--batch-size", "3"]) == 0
    raw_arr = np.load(raw)
    np.testing.assert_allclose(raw_arr, expected_image_rows(model, root, listed, normalize=False),
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw_arr, axis=1), 1.0)


def test_embed_texts(tiny, tmp_path):
    model, ckpt = tiny
    texts = ["a photo of a cat", "", "  a dog on the beach  ", "日本語のテキスト 🐱", "x" * 500]
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "txt.npy"
    assert main(["embed", "--model", "evaclip-tiny", "--pretrained", str(ckpt), "--texts", str(src),
                 "--out", str(out), "--batch-size", "2"]) == 0
    kept = [t.strip() for t in texts if t.strip()]
    assert out.with_suffix(".txt").read_text(encoding="utf-8").splitlines() == kept
    from evaclip.tokenizer import tokenize
    with torch.no_grad():
        want = model.encode_text(tokenize(kept), normalize=True).numpy()
    arr = np.load(out)
    assert arr.shape == (4, 64) and arr.dtype == np.float32
    np.testing.assert_allclose(arr, want, rtol=1e-5, atol=1e-6)


def test_embed_bad_inputs(tiny, tmp_path, capsys):
    _, ckpt = tiny
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    base = ["embed", "--model", "evaclip-tiny", "--pretrained", str(ckpt)]
    cases = [
        (["--images", str(empty), "--out", str(tmp_path / "a.npy")], "no image files"),
        (["--images", str(tmp_path / "nope"), "--out", str(tmp_path / "a.npy")], "not a folder"),
        (["--texts", str(tmp_path / "none.txt"), "--out", str(tmp_path / "a.npy")], "not found"),
        (["--texts", str(ckpt), "--out", str(tmp_path / "a.npy")], "utf-8"),
        (["--images", str(empty), "--out", str(tmp_path / "a.csv")], ".npy"),
    ]
    for extra, fragment in cases:
        capsys.readouterr()
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment.lower() in err.lower(), err
    only_broken = tmp_path / "broken"
    only_broken.mkdir()
    (only_broken / "x.png").write_bytes(b"garbage")
    assert main(base + ["--images", str(only_broken), "--out", str(tmp_path / "b.npy")]) == 2
    assert "could be decoded" in capsys.readouterr().err
    assert main(["embed", "--model", "no-such-model", "--texts", str(ckpt), "--out", str(tmp_path / "c.npy")]) == 2
    # --images and --texts together is a usage error (argparse exits with code 2)
    with pytest.raises(SystemExit) as info:
        main(base + ["--images", str(empty), "--texts", str(ckpt), "--out", str(tmp_path / "d.npy")])
    assert info.value.code == 2


def test_embed_bf16_and_nonfinite_weights(tiny, tmp_path, capsys):
    """bf16 weights get bf16 inputs (one cast, in evaclip.eval.features); a checkpoint with an inf weight is
    refused unless --allow-nonfinite, and then embedded with one warning line naming the tensor."""
    model, ckpt = tiny
    src = tmp_path / "texts.txt"
    src.write_text("a cat\n")
    root = tmp_path / "imgs"
    root.mkdir()
    rels = make_images(root)
    out = tmp_path / "bf16.npy"
    assert main(["embed", "--model", "evaclip-tiny", "--pretrained", str(ckpt), "--images", str(root),
                 "--out", str(out), "--precision", "bf16"]) == 0
    want = expected_image_rows(model, root, rels)
    assert (np.load(out) * want).sum(1).min() > 0.98  # cosine to the fp32 embeddings
    state = evaclip.create_model("evaclip-tiny").state_dict()
    state["text.ln_final.weight"][0] = float("inf")
    torch.save(state, tmp_path / "inf.pt")
    base = ["embed", "--model", "evaclip-tiny", "--pretrained", str(tmp_path / "inf.pt"), "--texts", str(src),
            "--out", str(tmp_path / "t.npy")]
    capsys.readouterr()
    assert main(base) == 2 and not (tmp_path / "t.npy").exists()
    assert "non-finite" in capsys.readouterr().err
    assert main(base + ["--allow-nonfinite"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]  # not the progress bar
    assert len(err) == 1 and "NaN or inf" in err[0] and "text.ln_final.weight" in err[0]


def test_embed_out_is_checked_before_the_model_is_built(tiny, tmp_path, capsys, monkeypatch):
    import os
    _, ckpt = tiny
    src = tmp_path / "texts.txt"
    src.write_text("a cat\n")
    (tmp_path / "target.npy").write_bytes(b"keep")
    os.symlink(tmp_path / "target.npy", tmp_path / "link.npy")
    (tmp_path / "side.npy").write_bytes(b"")
    os.symlink(tmp_path / "target.npy", tmp_path / "side.txt")  # the sidecar's name
    monkeypatch.setattr(evaclip, "create_model_and_transforms", lambda *a, **kw: pytest.fail("model built"))
    for out, fragment in (("link.npy", "symbolic link"), ("side.npy", "symbolic link"),
                          ("target.npy/x.npy", "not a folder")):
        assert main(["embed", "--model", "evaclip-tiny", "--pretrained", str(ckpt), "--texts", str(src),
                     "--out", str(tmp_path / out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err, err
    assert (tmp_path / "target.npy").read_bytes() == b"keep"


# ---------------------------------------------------------------------------------------------------------
# convert
# ---------------------------------------------------------------------------------------------------------
def deepspeed_flat_file(model, path):
    """A released-style file: flat text keys, DeepSpeed wrapper and prefixes, RoPE tables, 0-d logit_scale."""
    sd = export_state_dict(model.state_dict(), "flat")
    head_dim = model.cfg.vision_cfg.head_width
    sd["visual.rope.freqs_cos"] = torch.randn(16, head_dim)
    sd["visual.blocks.0.attn.rope.freqs_sin"] = torch.randn(16, head_dim)
    torch.save({"module": {"module." + k: v.clone() for k, v in sd.items()}, "global_steps": 7}, path)
    return path


def test_convert_every_layout(tiny, tmp_path, capsys):
    model, _ = tiny
    src = deepspeed_flat_file(model, tmp_path / "mp_rank_00_model_states.pt")
    images = torch.randn(2, 3, 32, 32)
    tokens = evaclip.get_tokenizer("evaclip-tiny")(["a cat", "two dogs"])
    with torch.no_grad():
        want_img, want_txt = model.encode_image(images), model.encode_text(tokens)

    out = tmp_path / "converted.safetensors"
    assert main(["convert", str(src), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "flat layout" in printed and "ignored 2" in printed and "freqs" in printed
    assert "training layout" in printed
    sd = load_file(str(out))
    ref = model.state_dict()
    assert set(sd) == set(ref)
    assert all(torch.equal(sd[k].reshape(ref[k].shape), ref[k]) for k in ref)
    assert sd["logit_scale"].ndim == 0  # written as the official code stores it
    loaded = evaclip.create_model("evaclip-tiny", pretrained=str(out)).eval()
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), want_img)
        assert torch.equal(loaded.encode_text(tokens), want_txt)
    assert not list(tmp_path.glob("*.tmp"))

    flat = tmp_path / "flat.safetensors"
    assert main(["convert", str(out), str(flat), "--layout", "flat"]) == 0
    flat_keys = set(load_file(str(flat)))
    assert "transformer.resblocks.0.attn.in_proj_weight" in flat_keys
    assert not any(k.startswith("text.") for k in flat_keys)
    assert evaclip.load_checkpoint(evaclip.create_model("evaclip-tiny"), flat).ok

    vision = tmp_path / "vision.safetensors"
    assert main(["convert", str(src), str(vision), "--layout", "vision"]) == 0
    vkeys = set(load_file(str(vision)))
    assert "blocks.0.attn.q_proj.weight" in vkeys and "logit_scale" not in vkeys
    assert not any(k.startswith(("visual.", "text.", "transformer.")) for k in vkeys)
    fresh = evaclip.create_model("evaclip-tiny").eval()
    evaclip.load_checkpoint(fresh.visual, vision)
    with torch.no_grad():
        assert torch.equal(fresh.encode_image(images), want_img)


def test_convert_bad_inputs(tiny, tmp_path, capsys):
    model, ckpt = tiny
    vision_only = tmp_path / "mim.pt"
    torch.save(export_state_dict(model.state_dict(), "vision") | {"mask_token": torch.zeros(1, 1, 64)}, vision_only)
    cases = [
        ([str(vision_only), str(tmp_path / "o.safetensors")], "--layout vision"),
        ([str(ckpt), str(tmp_path / "o.pt")], ".safetensors"),
        ([str(tmp_path / "missing.pt"), str(tmp_path / "o.safetensors")], "not found"),
        ([str(ckpt), str(ckpt)], "same file"),
    ]
    for args, fragment in cases:
        capsys.readouterr()
        assert main(["convert", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "o.pt").exists()
    # the MIM file converts fine in the vision layout; its mask token is reported as ignored
    assert main(["convert", str(vision_only), str(tmp_path / "v.safetensors"), "--layout", "vision"]) == 0
    assert "mask_token" in capsys.readouterr().out
    assert "mask_token" not in load_file(str(tmp_path / "v.safetensors"))
