"""Id-for-id parity of evaclip's CLIP tokenizer with the reference tokenizer on thousands of varied strings.

The reference is open_clip's ``tokenizer.py`` (a copy of OpenAI's CLIP tokenizer, the one the official EVA-CLIP
code also copies), loaded by file path: ``import open_clip`` would run its package ``__init__``, which imports
torchvision. At module level that file imports only the standard library, ftfy, numpy, regex and torch (its
nltk / transformers / fsspec imports sit inside functions) and has no relative imports, so it loads as a
stand-alone module without any shim.
"""
import html
import importlib.util
import random
import unicodedata

import pytest
import torch

from evaclip.tokenizer import CLIPTokenizer, clean_text, clean_words


def _load_reference():
    spec = importlib.util.find_spec("open_clip")  # finds the package without running its __init__
    # `make test` installs the reference; without it the parity tests must fail, not pass by skipping.
    assert spec is not None and spec.submodule_search_locations, \
        "the reference tokenizer is missing: pip install --no-deps open_clip_torch==3.3.0"
    path = f"{list(spec.submodule_search_locations)[0]}/tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("_reference_clip_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ref():
    return _load_reference()


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer()


WORDS = ["a", "photo", "of", "the", "cat", "Dog", "RUNNING", "on", "beach", "with", "red", "ball", "in", "its",
         "mouth", "Hello", "world", "tokenizer", "antidisestablishmentarianism", "pneumonoultramicroscopic",
         "xyzzy", "qwertyuiop", "EVA-CLIP", "ViT-L/14", "e-mail", "snake_case", "camelCase", "URL",
         "https://example.com/a?b=c&d=e", "user@example.org", "#hashtag", "@mention", "C++", "C#", "node.js"]
CONTRACTIONS = ["it's", "don't", "we'll", "I'M", "they're", "you've", "he'd", "can't", "'tis", "O'Neil",
                "rock'n'roll", "'S", "'LL", "'ſ", "'ſt", "dogs'", "''"]
NUMBERS = ["0", "7", "42", "2024", "3.14159", "1,000,000", "42nd", "1st", "-5", "+7", "1e10", "0x1F", "50%",
           "$5.99", "€10", "¾", "²", "٣", "१२३", "Ⅻ", "①", "１２３"]
PUNCT = ["!", "?!", "...", "--", "—", "–", "(", ")", "[", "]", "{", "}", ",", ";", ":", "\"", "'", "`", "~",
         "*", "/", "\\", "|", "^", "<", ">", "<b>", "</b>", "<br/>", "=", "+", "_", "…", "·", "•", "¡", "¿",
         "«", "»", "“", "”", "‘", "’", "„", "‹", "›"]
HTML = ["&amp;", "&amp;amp;", "&amp;amp;amp;", "&lt;b&gt;", "&quot;", "&#39;", "&#x27;", "&#x1F600;", "&nbsp;",
        "&eacute;", "&copy;", "&hellip;", "&amp", "&notanentity;", "&#0;", "&#65;", "&AMP;", "&lt;", "&gt;&gt;"]
SPACES = [" ", "  ", "   ", "\t", "\n", "\r\n", "\r", "\x0b", "\x0c", "\u00a0", "\u3000", "\u2028", "\u2029",
          "\u2009", "\u200b", "\x1c", "\x1f", "\x85", "\u180e", "\ufeff"]
ACCENTS = ["café", "naïve", "Zoë", "façade", "résumé", "cafe\u0301", "Ångström", "São Paulo", "Straße", "ẞ",
           "İstanbul", "ǅ", "ﬁne", "ﬂour", "Œuvre", "æsir", "Ðð", "Þorn", "ĳ", "ŉ", "K", "Å", "Ω", "µ"]
SCRIPTS = ["日本語", "中文字符", "東京タワー", "한국어", "ひらがな", "カタカナ", "Привет", "МОСКВА", "Ωμέγα",
           "ΟΔΟΣ", "ΣΟΦΙΑ ΣΣ", "σς", "مرحبا", "שלום", "नमस्ते", "สวัสดี", "ქართული", "Ελληνικά", "ꙮ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
           "𝐁𝐨𝐥𝐝", "ＡＢＣ", "ｈａｌｆ", "ｶﾀｶﾅ"]
EMOJI = ["🐱", "🐶🐶", "👍🏽", "👨‍👩‍👧", "🇯🇵", "❤️", "☃", "✨✨✨", "🤖", "🏳️‍🌈", "😀😃😄", "🫠", "©", "™", "°C",
         "→", "∑", "√2", "∞", "≠", "♪"]
MOJIBAKE = ["cafÃ©", "donâ€™t", "â€œquotedâ€\x9d", "Ã¼ber", "ÐŸÑ€Ð¸Ð²ÐµÑ‚", "schÃ¶n", "Ã\xa0 la", "â€”",
            "Ã©tÃ©", "The Mona Lisa doesnÃƒÂ¢Ã¢â€šÂ¬Ã¢â€žÂ¢t have eyebrows."]
CONTROL = ["\x00", "\x01", "\x07", "\x08", "\x1b[31m", "\x1b[0m", "\x7f", "\x80", "\x9d", "\u200e", "\u202e",
           "\u2066", "\ufff9", "\x1b", "\ud83d", "x\udc80y"]
SPECIAL = ["<start_of_text>", "<end_of_text>", "<START_OF_TEXT>", "<start_of_text", "end_of_text>",
           "<|endoftext|>", "</w>", "<unk>"]

POOLS = [WORDS, WORDS, WORDS, CONTRACTIONS, NUMBERS, PUNCT, HTML, ACCENTS, SCRIPTS, EMOJI, MOJIBAKE, CONTROL,
         SPECIAL]
# Code-point ranges for random characters: Latin-1, Latin Extended, Greek, Cyrillic, Arabic, Devanagari,
# general punctuation, symbols, CJK, Hangul, fullwidth forms, emoji, and astral letters.
RANGES = [(0x20, 0x7E), (0xA0, 0xFF), (0x100, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x600, 0x6FF),
          (0x900, 0x97F), (0x2000, 0x206F), (0x2100, 0x22FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00),
          (0xFF00, 0xFFEF), (0x1F300, 0x1F6FF), (0x1D400, 0x1D4FF)]


def _random_chars(rng: random.Random) -> str:
    lo, hi = rng.choice(RANGES)
    # The ranges hold no surrogates; lone ones are in CONTROL (ftfy turns them into U+FFFD).
    return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8)))


def _random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 14)):
        parts.append(_random_chars(rng) if rng.random() < 0.15 else rng.choice(rng.choice(POOLS)))
        parts.append(rng.choice(SPACES) if rng.random() < 0.3 else rng.choice([" ", "", " ", ","]))
    text = "".join(parts)
    if rng.random() < 0.2:
        text = text.upper()
    if rng.random() < 0.1:
        text = unicodedata.normalize(rng.choice(["NFD", "NFKC"]), text)
    if rng.random() < 0.05:
        text = html.escape(text)
    return text


def varied_strings(n: int = 3000, seed: int = 1234) -> list[str]:
    """Deterministic varied strings, plus edge cases and long texts that must truncate."""
    rng = random.Random(seed)
    texts = ["", " ", "   \t\n  ", "a", "A", ".", "&amp;amp;", "&&&", "'s", "<start_of_text>", "\x00", "🐱",
             "a" * 500, "ab" * 300, "1" * 200, "日本" * 100, " ".join(["word"] * 200), "!" * 100]
    texts += [_random_text(rng) for _ in range(n)]
    for _ in range(60):  # long texts of every kind, most longer than 77 tokens
        texts.append(" ".join(_random_text(rng) for _ in range(rng.randint(10, 40))))
    return texts


TEXTS = varied_strings()


def test_encode_matches_reference(tok, ref):
    ref_tok = ref.SimpleTokenizer()
    mismatches = [t for t in TEXTS if tok.encode(t) != ref_tok.encode(t)]
    assert not mismatches, f"{len(mismatches)} of {len(TEXTS)} differ, e.g. {mismatches[:3]!r}"


@pytest.mark.parametrize("context_length", [77, 5, 1, 300])
def test_batched_tokenize_matches_reference(tok, ref, context_length):
    ours = tok(TEXTS, context_length=context_length)
    theirs = ref.tokenize(TEXTS, context_length=context_length)
    assert ours.dtype == theirs.dtype == torch.long
    assert ours.shape == theirs.shape == (len(TEXTS), context_length)
    assert torch.equal(ours, theirs)


def test_some_texts_truncate_and_all_scripts_occur(tok):
    # Guards the generator itself: the parity tests above must exercise truncation and non-ASCII text.
    ids_lengths = [len(tok.encode(t)) for t in TEXTS[-60:]]
    assert sum(n > 75 for n in ids_lengths) >= 40
    assert sum(not t.isascii() for t in TEXTS) > len(TEXTS) // 2
    assert sum("&" in t for t in TEXTS) > 100


def test_decode_matches_reference(tok, ref):
    ref_tok = ref.SimpleTokenizer()
    for text in TEXTS[:1000]:
        ids = ref_tok.encode(text)
        assert tok.decode(ids) == ref_tok.decode(ids)
    row = ref.tokenize(["a photo of a cat"])[0].tolist()  # special tokens and padding are written out too
    assert tok.decode(row) == ref_tok.decode(row)


def test_fast_ascii_cleaning_equals_ftfy_pipeline(ref):
    # evaclip skips ftfy for ASCII text that ftfy cannot change; check that claim on ASCII strings heavy in
    # the characters ftfy does touch (controls, escapes, entities) and with every ASCII character.
    rng = random.Random(7)
    alphabet = [chr(i) for i in range(128)] + ["&amp;", "&lt;", "&#39;", "\x1b[1m", "<", ">", " ", "a", "B"] * 8
    samples = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(3000)]
    samples += [chr(i) for i in range(128)] + [f"x{chr(i)}y" for i in range(128)]
    for text in samples:
        expected = ref.whitespace_clean(ref.basic_clean(text)).lower()
        assert clean_text(text) == expected, repr(text)
        assert clean_words(text) == expected.split()


def test_lowercasing_never_creates_or_removes_whitespace():
    # clean_words lowercases before splitting at whitespace; this is the same as the official
    # split-join-lowercase only if lowercasing maps whitespace to itself and nothing else to whitespace.
    for cp in range(0x110000):
        ch = chr(cp)
        lowered = ch.lower()
        if ch.isspace():
            assert lowered == ch, hex(cp)
        else:
            assert not any(c.isspace() for c in lowered), hex(cp)
