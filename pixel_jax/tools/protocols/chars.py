"""Token ids → characters on device: the vocabulary tables the tool-call parser reads through.

Every token's decoded text (`Tokenizer.token_strings()`) becomes a row of character codes, built
once on the host: 0..127 for an ASCII character, OTHER for any other character (a byte-level token
holding part of a multi-byte UTF-8 character decodes to U+FFFD, also OTHER). Tool-call syntax is
ASCII, so every non-ASCII character plays the same role: it is never whitespace, punctuation or
part of a known key or tool name. The parser therefore sees exactly the characters of the decoded
text, whatever the tokenization (`": [`, ` 0.`, `]\\n` or `>\\n` as one token are all handled alike).
"""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pixel_jax.processing.tokenizer import Tokenizer

OTHER = 128  # code of every non-ASCII character
NUM_CODES = 129  # codes are 0..128
NO_CHAR = -1  # "no character" in per-step outputs


def char_codes(text: str) -> list[int]:
    """The codes of `text`'s characters: the code point if ASCII, else OTHER."""
    return [ord(char) if ord(char) < 128 else OTHER for char in text]


@flax.struct.dataclass
class VocabChars:
    """Characters of every token: `codes[v, :lengths[v]]` are token v's character codes."""

    codes: jax.Array  # [V, W] uint8, left-aligned, 0-padded; W = longest token text
    lengths: jax.Array  # [V] int32

    @classmethod
    def from_tokenizer(cls, tok: Tokenizer) -> "VocabChars":
        texts = tok.token_strings()
        width = max(1, max(len(text) for text in texts))
        codes = np.zeros((len(texts), width), np.uint8)  # [V, W]
        for token_id, text in enumerate(texts):
            codes[token_id, : len(text)] = char_codes(text)
        lengths = np.array([len(text) for text in texts], np.int32)  # [V]
        return cls(codes=jnp.asarray(codes), lengths=jnp.asarray(lengths))


def window_chars(vocab: VocabChars, token_ids: jax.Array, length, num_chars: int):
    """The last `num_chars` characters of the text of `token_ids[:length]`, right-aligned.

    token_ids [L] int32 (ids outside the vocabulary count as empty text); length: how many are
    real. Returns (chars [C] int32, valid [C] bool, total int32): `chars[j]` is character
    total − C + j of the text, `valid[j]` False for the slots before its first character.
    """
    num_tokens = token_ids.shape[0]
    lengths = jnp.take(vocab.lengths, token_ids, mode="fill", fill_value=0)  # [L]
    lengths = jnp.where(jnp.arange(num_tokens) < length, lengths, 0)
    ends = jnp.cumsum(lengths)  # [L] end of each token's text
    total = ends[-1]
    position = total - num_chars + jnp.arange(num_chars)  # [C] position in the text
    token = jnp.minimum(jnp.searchsorted(ends, position, side="right"), num_tokens - 1)  # [C]
    offset = position - (ends[token] - lengths[token])  # [C] position inside that token
    width = vocab.codes.shape[1]
    chars = vocab.codes[
        jnp.clip(token_ids[token], 0, vocab.codes.shape[0] - 1), jnp.clip(offset, 0, width - 1)
    ].astype(jnp.int32)  # [C]
    return chars, position >= 0, total


def push_token(vocab: VocabChars, tail: jax.Array, token_id) -> jax.Array:
    """`tail` [W] (the last W characters of a text, NO_CHAR-padded on the left) after `token_id`.

    Lets the rollout detect a multi-token stop string such as `</tool>` on the text, whatever the
    tokenization: `tail_ends_with(tail, "</tool>")` after every sampled token.
    """
    width = tail.shape[0]
    in_vocab = (token_id >= 0) & (token_id < vocab.lengths.shape[0])
    safe_id = jnp.clip(token_id, 0, vocab.lengths.shape[0] - 1)
    count = jnp.where(in_vocab, vocab.lengths[safe_id], 0)
    joined = jnp.concatenate([tail, vocab.codes[safe_id].astype(tail.dtype)])  # [W + T]
    return joined[count + jnp.arange(width)]  # the last W characters of tail + token text


def empty_tail(width: int) -> jax.Array:
    """A tail of `width` characters before any text: [W] int32 of NO_CHAR."""
    return jnp.full((width,), NO_CHAR, jnp.int32)


def tail_ends_with(tail: jax.Array, text: str) -> jax.Array:
    """Whether the text whose last characters are `tail` [W] ends with `text` (len ≤ W)."""
    if not 0 < len(text) <= tail.shape[0]:
        raise ValueError(f"text {text!r} must be non-empty and at most {tail.shape[0]} characters")
    return jnp.all(tail[-len(text):] == jnp.asarray(char_codes(text), tail.dtype))
