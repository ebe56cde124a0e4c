"""Byte-level BPE vocabulary of OpenAI CLIP and the merge algorithm.

The vocabulary file lists merge rules, best first. Token ids are laid out as: 256 byte symbols, the same 256
symbols with the end-of-word marker ``</w>``, one token per merge rule (48,894 of them), then the start and
end special tokens: 49,408 ids in all.
"""
import gzip
from pathlib import Path

from evaclip.errors import ConfigError

VOCAB_FILE = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
END_OF_WORD = "</w>"
SOT_TEXT, EOT_TEXT = "<start_of_text>", "<end_of_text>"
# CLIP keeps only the first merges of the file: 49,152 - 256 bytes - 2 specials (lines after are unused).
NUM_MERGES = 49152 - 256 - 2


def byte_encoder() -> dict[int, str]:
    """Map each byte value to the printable symbol that stands for it; the dict order is the id order.

    Bytes that are visible Latin-1 characters stand for themselves and come first; the other 68 bytes
    (controls, space, no-break space, soft hyphen, ...) get the code points 256, 257, ... in byte order, so
    that BPE never sees whitespace or control characters.
    """
    visible = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    hidden = [b for b in range(256) if b not in set(visible)]
    table = {b: chr(b) for b in visible}
    table.update({b: chr(256 + k) for k, b in enumerate(hidden)})
    return table


def load_merges(path: Path = VOCAB_FILE) -> list[tuple[str, str]]:
    """Read the merge rules (pairs of symbols), best first."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise ConfigError(f"cannot read the BPE vocabulary {path}: {e}; it must be a gzipped merges file "
                          "such as bpe_simple_vocab_16e6.txt.gz") from None
    merges = []
    for number, line in enumerate(lines[1 : NUM_MERGES + 1], start=2):  # line 1 is a version header
        pair = line.split()
        if len(pair) != 2:
            raise ConfigError(f"{path}, line {number}: expected a merge rule of two symbols, got {line!r}; "
                              "pass the CLIP vocabulary bpe_simple_vocab_16e6.txt.gz")
        merges.append((pair[0], pair[1]))
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> list[str]:
    """Token strings in id order."""
    symbols = list(byte_encoder().values())
    return symbols + [s + END_OF_WORD for s in symbols] + [a + b for a, b in merges] + [SOT_TEXT, EOT_TEXT]


def merge_word(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges to one word given as a list of symbols; return the final symbols.

    Repeatedly takes the adjacent pair with the best (lowest) rank and fuses every occurrence of it, scanning
    left to right without overlaps ("a a a" with rule "a a" gives "aa a"), until no adjacent pair is a rule.
    """
    while len(symbols) > 1:
        best_rank = None
        best = None
        for pair in zip(symbols, symbols[1:]):
            rank = ranks.get(pair)
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best = rank, pair
        if best is None:
            break
        first, second = best
        fused = first + second
        out: list[str] = []
        i, n = 0, len(symbols)
        while i < n:
            if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
                out.append(fused)
                i += 2
            else:
                out.append(symbols[i])
                i += 1
        symbols = out
    return symbols
