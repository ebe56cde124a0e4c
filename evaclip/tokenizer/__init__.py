"""OpenAI CLIP tokenizer (byte-level BPE, 49,408 tokens), id-for-id identical to the official one.

    from evaclip.tokenizer import tokenize, CLIPTokenizer
    tokens = tokenize(["a photo of a cat", "a dog"])   # LongTensor [2, 77]: SOT 49406, ids, EOT 49407, 0 pad
    CLIPTokenizer().decode(tokens[0], skip_special_tokens=True)   # 'a photo of a cat '
"""
from evaclip.tokenizer.clean import clean_text, clean_words
from evaclip.tokenizer.clip_tokenizer import (
    DEFAULT_CONTEXT_LENGTH, EOT_TOKEN_ID, PAD_TOKEN_ID, SOT_TOKEN_ID, VOCAB_SIZE, CLIPTokenizer,
    TokenizerInputError, default_tokenizer, tokenize,
)

__all__ = [
    "CLIPTokenizer", "tokenize", "default_tokenizer", "clean_text", "clean_words", "TokenizerInputError",
    "DEFAULT_CONTEXT_LENGTH", "SOT_TOKEN_ID", "EOT_TOKEN_ID", "PAD_TOKEN_ID", "VOCAB_SIZE",
]
