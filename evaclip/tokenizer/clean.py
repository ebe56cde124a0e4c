"""Text cleaning applied before BPE, identical to OpenAI CLIP's.

The reference pipeline is: ``ftfy.fix_text``, ``html.unescape`` twice, strip, collapse whitespace runs to one
space, lowercase. ``ftfy.fix_text`` costs ~12 us per caption and dominates tokenization time, so plain ASCII
text that ftfy provably leaves unchanged skips it (see :data:`_NEEDS_FULL_CLEAN`).
"""
import html

import ftfy
import regex

# ftfy changes ASCII text in exactly three ways: it unescapes HTML entities (needs '&'), strips terminal escape
# sequences (need ESC, 0x1b) and deletes control characters 0x00-0x08, 0x0b, 0x0e-0x1f, 0x7f. Some of those
# (0x0b, 0x1c-0x1f) are whitespace for str.split, so deleting them differs from collapsing them. Its mojibake
# repair never fires on pure ASCII. Text made only of printable ASCII other than '&', plus tab, newline,
# form feed and carriage return (whitespace that ftfy keeps), is therefore a fixed point of ftfy and of
# html.unescape; anything else takes the full path. tests/tokenizer checks this equivalence directly.
_NEEDS_FULL_CLEAN = regex.compile(r"[^\t\n\x0c\r\x20-\x25\x27-\x7e]")


def clean_words(text: str) -> list[str]:
    """The cleaned, lowercased text split at whitespace: ``clean_text(text) == " ".join(clean_words(text))``."""
    if _NEEDS_FULL_CLEAN.search(text) is not None:
        text = ftfy.fix_text(text)
        # Twice on purpose: captions scraped from the web are often escaped twice ("&amp;amp;").
        text = html.unescape(html.unescape(text))
    # The official order is collapse-then-lowercase; lowercasing first is the same because no lowercase
    # mapping creates or removes whitespace and whitespace is never case-ignorable (Greek final sigma sees
    # the same context). tests/tokenizer checks both claims.
    return text.lower().split()


def clean_text(text: str) -> str:
    """Return ``text`` cleaned exactly as the OpenAI CLIP tokenizer cleans it (lowercased, single-spaced)."""
    return " ".join(clean_words(text))
