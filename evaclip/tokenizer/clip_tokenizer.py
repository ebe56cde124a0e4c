"""The OpenAI CLIP tokenizer (byte-level BPE, 49,408 tokens), id-for-id identical to the official one."""
import functools
import operator
import threading
from itertools import chain
from pathlib import Path
from typing import Any, Iterable, Sequence

import regex
import torch

from evaclip.errors import ConfigError, EvaclipError
from evaclip.tokenizer.bpe import (
    END_OF_WORD, EOT_TEXT, SOT_TEXT, VOCAB_FILE, build_vocab, byte_encoder, load_merges, merge_word,
)
from evaclip.tokenizer.clean import clean_words

DEFAULT_CONTEXT_LENGTH = 77
SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
PAD_TOKEN_ID = 0
VOCAB_SIZE = 49408

# Pre-tokenization into words: a special token, an English contraction suffix, a run of letters, a single
# digit, or a run of other non-space characters. IGNORECASE is part of the official rule and matters even on
# lowercased text: simple case folding lets "'ſ" (long s) match the contraction "'s".
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_WORD_PATTERN = regex.compile(
    "|".join([regex.escape(SOT_TEXT), regex.escape(EOT_TEXT), *_CONTRACTIONS,
              r"\p{L}+", r"\p{N}", r"[^\s\p{L}\p{N}]+"]),
    regex.IGNORECASE,
)


class TokenizerInputError(EvaclipError, TypeError, ValueError):
    """Text or token ids given to the tokenizer have the wrong type or are out of range."""


class CLIPTokenizer:
    """OpenAI CLIP BPE tokenizer.

    ``tok(texts, context_length=77)`` gives a LongTensor ``[N, context_length]``: start token, BPE ids, end
    token, zero padding; texts that are too long are cut and end with the end token. BPE results are kept in
    LRU caches of ``cache_size`` entries, per word and per space-separated chunk of cleaned text, so repeated
    words cost one dict lookup.
    """

    sot_token_id = SOT_TOKEN_ID
    eot_token_id = EOT_TOKEN_ID
    pad_token_id = PAD_TOKEN_ID

    def __init__(self, vocab_file: str | Path = VOCAB_FILE, cache_size: int = 1 << 18) -> None:
        self.vocab_file = Path(vocab_file)
        self.cache_size = cache_size
        merges = load_merges(self.vocab_file)
        self._vocab = build_vocab(merges)
        self._ids = {token: i for i, token in enumerate(self._vocab)}
        # A later duplicate of a rule would win, as in the official dict(zip(merges, range(...))).
        self._ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._special = {SOT_TEXT: SOT_TOKEN_ID, EOT_TEXT: EOT_TOKEN_ID}
        if len(self._vocab) != VOCAB_SIZE or self._ids[SOT_TEXT] != SOT_TOKEN_ID:
            raise ConfigError(f"{self.vocab_file} is not the CLIP vocabulary: it gives {len(self._vocab)} tokens, "
                              f"expected {VOCAB_SIZE}; pass the bpe_simple_vocab_16e6.txt.gz file")
        encoder = byte_encoder()
        # str.translate tables: Latin-1 char (= one UTF-8 byte) -> BPE symbol, and back.
        self._to_symbols = encoder
        self._from_symbols = {ord(symbol): byte for byte, symbol in encoder.items()}
        self._word_ids = functools.lru_cache(maxsize=cache_size)(self._bpe_word)
        self._chunk_ids = functools.lru_cache(maxsize=cache_size)(self._bpe_chunk)

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def __reduce__(self) -> tuple[Any, ...]:
        # The LRU cache wraps a bound method and cannot be pickled (DataLoader workers); rebuild instead.
        return (type(self), (self.vocab_file, self.cache_size))

    def __repr__(self) -> str:
        return (f"CLIPTokenizer(vocab_size={self.vocab_size}, sot={SOT_TOKEN_ID}, eot={EOT_TOKEN_ID}, "
                f"pad={PAD_TOKEN_ID})")

    def _bpe_word(self, word: str) -> tuple[int, ...]:
        """Token ids of one pre-tokenized word (uncached)."""
        special = self._special.get(word)
        if special is not None:
            return (special,)
        symbols = list(word.encode("utf-8").decode("latin-1").translate(self._to_symbols))
        symbols[-1] += END_OF_WORD
        ids = self._ids
        return tuple(ids[s] for s in merge_word(symbols, self._ranks))

    def _bpe_chunk(self, chunk: str) -> tuple[int, ...]:
        """Token ids of a space-free chunk of cleaned text (uncached; its words go through the word cache)."""
        return tuple(chain.from_iterable(map(self._word_ids, _WORD_PATTERN.findall(chunk))))

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` after cleaning, without start/end tokens and without truncation."""
        if not isinstance(text, str):
            raise TokenizerInputError(f"encode() takes a str, got {type(text).__name__}; "
                                      "use tokenizer(texts) for a list of texts")
        # No word pattern matches whitespace, so running it on each whitespace-separated chunk gives the same
        # words as on the whole text; caching whole chunks ("dog,", "it's") then skips the regex for most.
        return list(chain.from_iterable(map(self._chunk_ids, clean_words(text))))

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """Text of a sequence of token ids.

        As in the official decoder, every word is followed by a space ("a dog ." -> "a dog . "), and special
        tokens are written out. With ``skip_special_tokens`` start tokens are dropped and the text ends at the
        first end token, so a padded row of :meth:`__call__` decodes to its text only.
        """
        id_list = _as_id_list(ids)
        if skip_special_tokens:
            if EOT_TOKEN_ID in id_list:
                id_list = id_list[: id_list.index(EOT_TOKEN_ID)]
            id_list = [i for i in id_list if i != SOT_TOKEN_ID]
        bad = [i for i in id_list if not 0 <= i < VOCAB_SIZE]
        if bad:
            raise TokenizerInputError(f"token id {bad[0]} is outside the vocabulary [0, {VOCAB_SIZE})")
        symbols = "".join([self._vocab[i] for i in id_list])
        raw = symbols.translate(self._from_symbols).encode("latin-1")
        return raw.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")

    def __call__(self, texts: str | Iterable[str], context_length: int = DEFAULT_CONTEXT_LENGTH) -> torch.Tensor:
        """Tokenize one text or a batch into a LongTensor ``[N, context_length]`` (a str gives N = 1)."""
        text_list = _as_text_list(texts)
        length = _check_context_length(context_length)
        out = torch.zeros((len(text_list), length), dtype=torch.long)
        rows = out.numpy()  # shares memory with `out`: rows are written in place
        for i, text in enumerate(text_list):
            tokens = [SOT_TOKEN_ID, *self.encode(text), EOT_TOKEN_ID]
            if len(tokens) > length:
                tokens = tokens[:length]
                tokens[-1] = EOT_TOKEN_ID
            rows[i, : len(tokens)] = tokens
        return out


def _as_text_list(texts: Any) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)):
        raise TokenizerInputError("texts must be str, got bytes; decode them first, e.g. data.decode('utf-8')")
    try:
        text_list = list(texts)
    except TypeError:
        raise TokenizerInputError(f"texts must be a str or a list of str, got {type(texts).__name__}") from None
    for i, text in enumerate(text_list):
        if not isinstance(text, str):
            raise TokenizerInputError(f"texts[{i}] is a {type(text).__name__}, not a str; "
                                      "convert every text to str before tokenizing")
    return text_list


def _check_context_length(context_length: Any) -> int:
    if isinstance(context_length, bool):
        raise ConfigError(f"context_length must be a positive int, got {context_length!r}")
    try:
        length = operator.index(context_length)
    except TypeError:
        raise ConfigError(f"context_length must be a positive int, got {context_length!r}") from None
    if length < 1:
        raise ConfigError(f"context_length must be a positive int, got {length}; CLIP models use 77")
    return length


def _as_id_list(ids: Any) -> list[int]:
    if isinstance(ids, torch.Tensor) or hasattr(ids, "tolist"):  # torch tensors and numpy arrays
        if getattr(ids, "ndim", 1) != 1:
            raise TokenizerInputError(f"decode() takes one sequence of ids, got an array of shape "
                                      f"{tuple(ids.shape)}; decode rows one by one")
        if getattr(ids, "dtype", None) is not None and "int" not in str(ids.dtype):
            raise TokenizerInputError(f"token ids must be integers, got dtype {ids.dtype}")
        return ids.tolist()
    if isinstance(ids, (str, bytes)):
        raise TokenizerInputError("decode() takes a sequence of int ids, not text")
    try:
        return [operator.index(i) for i in ids]
    except TypeError:
        raise TokenizerInputError("decode() takes a sequence of int ids (list, tuple, 1-D tensor)") from None


_default_tokenizer: CLIPTokenizer | None = None
_default_lock = threading.Lock()


def default_tokenizer() -> CLIPTokenizer:
    """The process-wide shared :class:`CLIPTokenizer` (built on first use, ~0.2 s)."""
    global _default_tokenizer
    if _default_tokenizer is None:
        with _default_lock:
            if _default_tokenizer is None:
                _default_tokenizer = CLIPTokenizer()
    return _default_tokenizer


def tokenize(texts: str | Iterable[str], context_length: int = DEFAULT_CONTEXT_LENGTH) -> torch.Tensor:
    """Tokenize with the shared CLIP tokenizer: LongTensor ``[N, context_length]`` (SOT 49406, EOT 49407, pad 0)."""
    return default_tokenizer()(texts, context_length)
