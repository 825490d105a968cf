"""Test helpers for the on-device call parser: one parser size, so one compilation per protocol.

Texts are handed to the parser as a rollout would: the last WINDOW tokens of each, ROWS rows.
"""

import functools

import jax
import numpy as np

from pixel_jax.processing.tokenizer import load_tokenizer
from pixel_jax.tools.protocols import PROTOCOLS, CallParser

TOKENIZER = load_tokenizer()
MAX_CHARS = 384  # characters of a window the parser reads
SLOTS = 6  # numbers of a list argument it keeps
ROWS = 64
WINDOW = 192  # tokens


def encode_windows(texts):
    """ids [ROWS, WINDOW] int32 (each text's last WINDOW tokens, real tokens first) and lengths
    [ROWS] int32; rows after the texts are empty."""
    if len(texts) > ROWS:
        raise ValueError(f"{len(texts)} texts do not fit in {ROWS} rows")
    ids = np.zeros((ROWS, WINDOW), np.int32)
    lengths = np.zeros(ROWS, np.int32)
    for row, text in enumerate(texts):
        tokens = TOKENIZER.encode(text)[-WINDOW:]
        ids[row, : len(tokens)], lengths[row] = tokens, len(tokens)
    return ids, lengths


def window_text(text: str) -> str:
    """The decoded text of the last WINDOW tokens of `text`: what the host parser is given."""
    return TOKENIZER.decode(TOKENIZER.encode(text)[-WINDOW:])


@functools.lru_cache(maxsize=None)
def compiled_parser(protocol: str):
    """(parser, jitted parse_batch) for the packaged tokenizer."""
    parser = CallParser.build(
        PROTOCOLS.get(protocol), TOKENIZER, max_chars=MAX_CHARS, num_slots=SLOTS
    )
    return parser, jax.jit(CallParser.parse_batch)


def parse_on_device(protocol: str, texts):
    """The device parser's reading of each text (fields as numpy arrays with a leading [ROWS])."""
    parser, parse = compiled_parser(protocol)
    return jax.device_get(parse(parser, *encode_windows(texts)))
