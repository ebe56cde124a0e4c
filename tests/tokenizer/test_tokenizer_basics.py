"""Hand-checked ids, truncation, decoding, vocabulary layout and input errors of the CLIP tokenizer."""
import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import evaclip.tokenizer as tokenizer_pkg
from evaclip.errors import ConfigError, EvaclipError
from evaclip.tokenizer import (
    EOT_TOKEN_ID, SOT_TOKEN_ID, VOCAB_SIZE, CLIPTokenizer, TokenizerInputError, default_tokenizer, tokenize,
)

PKG_DIR = Path(tokenizer_pkg.__file__).parent


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer()


def _merge_id(token: str) -> int:
    """Id of a merged token read straight from the vocabulary file: 512 byte tokens, then one per merge line."""
    with gzip.open(PKG_DIR / "bpe_simple_vocab_16e6.txt.gz", "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1:48895]
    return 512 + next(i for i, line in enumerate(lines) if "".join(line.split()) == token)


def test_hand_checked_ids(tok):
    # Published CLIP ids, e.g. "a photo of a cat" = SOT a photo of a cat EOT.
    assert tokenize("a photo of a cat")[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
    assert tok.encode("Hello   World") == [3306, 1002]
    assert tok.encode("it's a dog!!") == [585, 568, 320, 1929, 748]
    assert tok.encode("2024") == [273, 271, 273, 275]  # digits are split one by one
    assert tok.encode("&amp;amp;") == tok.encode("&") == [261]  # HTML unescaped twice
    # Cross-check the layout: a single letter is 256 + its rank among visible bytes ('!' = 0x21 first),
    # a merged word is 512 + its line in the merges file.
    assert tok.encode("a") == [256 + ord("a") - 0x21]
    assert tok.encode("2") == [256 + ord("2") - 0x21]
    for word, ids in [("photo", [1125]), ("cat", [2368]), ("hello", [3306]), ("dog", [1929])]:
        assert [_merge_id(word + "</w>")] == ids == tok.encode(word)


def test_vocab_size_and_special_tokens(tok):
    assert tok.vocab_size == VOCAB_SIZE == 49408
    assert (SOT_TOKEN_ID, EOT_TOKEN_ID) == (49406, 49407) == (tok.sot_token_id, tok.eot_token_id)
    assert tok.decode([SOT_TOKEN_ID, EOT_TOKEN_ID]) == "<start_of_text><end_of_text>"
    # The literal special-token text is recognised as the special token, as in the official tokenizer.
    assert tok.encode("x <end_of_text>") == [343, EOT_TOKEN_ID]


def test_shapes_padding_and_default_length():
    out = tokenize(["a dog", "", "a photo of a cat"])
    assert out.shape == (3, 77) and out.dtype == torch.long
    assert out[1, :3].tolist() == [SOT_TOKEN_ID, EOT_TOKEN_ID, 0]
    lengths = (out != 0).sum(dim=1).tolist()
    assert lengths == [4, 2, 7]
    assert out[0, 4:].eq(0).all() and out[2, 7:].eq(0).all()
    assert tokenize([]).shape == (0, 77)
    assert tokenize(("a", "b"), context_length=5).shape == (2, 5)  # any iterable of str


@pytest.mark.parametrize("context_length", [77, 10, 4, 2])
def test_truncation_keeps_eot_last(tok, context_length):
    text = " ".join(f"word{i}" for i in range(200))
    ids = tok.encode(text)
    assert len(ids) > 77
    row = tok([text], context_length=context_length)[0].tolist()
    assert row == [SOT_TOKEN_ID, *ids[: context_length - 2], EOT_TOKEN_ID]


def test_exact_fit_is_not_truncated(tok):
    text = "cat " * 75
    row = tok(text)[0].tolist()
    assert row == [SOT_TOKEN_ID] + [2368] * 75 + [EOT_TOKEN_ID]
    assert tok(text + "cat")[0].tolist() == [SOT_TOKEN_ID] + [2368] * 75 + [EOT_TOKEN_ID]
    assert tok("a", context_length=1)[0].tolist() == [EOT_TOKEN_ID]  # official rule: last token forced to EOT


def test_decode_round_trip_plain_text(tok):
    texts = ["a photo of a cat", "the quick brown fox jumps over the lazy dog", "antidisestablishmentarianism",
             "zebra crossing in the rain at night"]
    for text in texts:
        # Every word is followed by a space in CLIP's decoding (the end-of-word marker becomes a space).
        assert tok.decode(tok.encode(text)) == text + " "
        row = tok(text)[0]
        assert tok.decode(row, skip_special_tokens=True) == text + " "
        assert tok.decode(row.numpy(), skip_special_tokens=True) == text + " "
    assert tok.decode(tok.encode("Café &amp; Crème")) == "café & crème "


def test_shared_singleton_and_pickling():
    assert default_tokenizer() is default_tokenizer()
    restored = pickle.loads(pickle.dumps(default_tokenizer()))
    assert torch.equal(restored(["a cat", "it's"]), tokenize(["a cat", "it's"]))


def test_bad_inputs_raise_clear_errors(tok):
    with pytest.raises(TokenizerInputError, match="texts must be a str or a list of str, got int"):
        tokenize(123)
    with pytest.raises(TokenizerInputError, match=r"texts\[1\] is a int"):
        tokenize(["ok", 5])
    with pytest.raises(TokenizerInputError, match="bytes"):
        tokenize(b"bytes")
    with pytest.raises(TokenizerInputError, match="encode\\(\\) takes a str"):
        tok.encode(["a list"])
    with pytest.raises(ConfigError, match="context_length"):
        tokenize("a", context_length=0)
    with pytest.raises(ConfigError, match="context_length"):
        tokenize("a", context_length=7.5)
    with pytest.raises(TokenizerInputError, match="outside the vocabulary"):
        tok.decode([49408])
    with pytest.raises(TokenizerInputError, match="outside the vocabulary"):
        tok.decode([-1])
    with pytest.raises(TokenizerInputError, match="one sequence"):
        tok.decode(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TokenizerInputError, match="integers"):
        tok.decode(np.zeros(3, dtype=np.float32))
    assert issubclass(TokenizerInputError, EvaclipError)


def test_wrong_vocab_file_is_refused(tmp_path):
    bad = tmp_path / "vocab.txt.gz"
    with gzip.open(bad, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\ni n\nt h\n")
    with pytest.raises(ConfigError, match="line 4: expected a merge rule"):
        CLIPTokenizer(bad)
    with gzip.open(bad, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\ni n\nt h")
    with pytest.raises(ConfigError, match="not the CLIP vocabulary: it gives 516 tokens"):
        CLIPTokenizer(bad)
    (tmp_path / "plain.txt").write_text("not gzip")
    with pytest.raises(ConfigError, match="cannot read the BPE vocabulary"):
        CLIPTokenizer(tmp_path / "plain.txt")
    with pytest.raises(ConfigError, match="cannot read the BPE vocabulary"):
        CLIPTokenizer(tmp_path / "missing.gz")


def test_vocabulary_ships_with_its_licence():
    vocab = PKG_DIR / "bpe_simple_vocab_16e6.txt.gz"
    notice = (PKG_DIR / "LICENSE_bpe_simple_vocab_16e6.txt").read_text()
    assert vocab.stat().st_size == 1356917
    assert "MIT License" in notice and "Copyright (c) 2021 OpenAI" in notice
