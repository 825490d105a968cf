"""Number literals and words, read one character code (`chars`) at a time on device.

Two of the small machines the on-device call parser (`device_parser`) is built from; each is a pure
`(state, char) -> state` function on scalars (traceable, vmappable):
- `NumberState`: one JSON number literal, -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, with its
  float32 value and, for an integer literal, its value as int32 saturated at ±SATURATED_INT;
- `WordMatch`: which of a fixed tuple of `Words` (keys, tool names) the characters so far spell.
"""

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pixel_jax.tools.protocols.chars import NO_CHAR, NUM_CODES

SATURATED_INT = 2**30  # integer values are clipped to ±SATURATED_INT
MAX_SIGNIFICANT_DIGITS = 9  # digits kept in the float32 mantissa; later ones only scale it
_MAX_EXPONENT = 100_000  # explicit exponents saturate here, far beyond float32's range
_POW10 = np.array([10.0**k for k in range(39)] + [np.inf], np.float32)  # correctly rounded 10^k


def lookup(table: np.ndarray, *indices) -> jax.Array:
    """`table[indices]` for a constant numpy table and traced indices."""
    return jnp.asarray(table)[indices]


# ------------------------------------------------------------------------------------------ numbers

N_START, N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_EXP, N_EXP_SIGN, N_EXP_DIGITS = range(9)
_K_ZERO, _K_DIGIT, _K_MINUS, _K_PLUS, _K_DOT, _K_EXP, _K_OTHER = range(7)

_NUMBER_CLASS = np.full(NUM_CODES, _K_OTHER, np.int32)
_NUMBER_CLASS[ord("0")] = _K_ZERO
_NUMBER_CLASS[ord("1") : ord("9") + 1] = _K_DIGIT
for _char, _class in [("-", _K_MINUS), ("+", _K_PLUS), (".", _K_DOT), ("e", _K_EXP), ("E", _K_EXP)]:
    _NUMBER_CLASS[ord(_char)] = _class

_NUMBER_NEXT = np.full((9, 7), -1, np.int32)  # [state, class] -> next state, -1: not a continuation
for _state, _class, _next in [
    (N_START, _K_MINUS, N_MINUS), (N_START, _K_ZERO, N_ZERO), (N_START, _K_DIGIT, N_INT),
    (N_MINUS, _K_ZERO, N_ZERO), (N_MINUS, _K_DIGIT, N_INT),
    (N_ZERO, _K_DOT, N_DOT), (N_ZERO, _K_EXP, N_EXP),
    (N_INT, _K_ZERO, N_INT), (N_INT, _K_DIGIT, N_INT),
    (N_INT, _K_DOT, N_DOT), (N_INT, _K_EXP, N_EXP),
    (N_DOT, _K_ZERO, N_FRAC), (N_DOT, _K_DIGIT, N_FRAC),
    (N_FRAC, _K_ZERO, N_FRAC), (N_FRAC, _K_DIGIT, N_FRAC), (N_FRAC, _K_EXP, N_EXP),
    (N_EXP, _K_MINUS, N_EXP_SIGN), (N_EXP, _K_PLUS, N_EXP_SIGN),
    (N_EXP, _K_ZERO, N_EXP_DIGITS), (N_EXP, _K_DIGIT, N_EXP_DIGITS),
    (N_EXP_SIGN, _K_ZERO, N_EXP_DIGITS), (N_EXP_SIGN, _K_DIGIT, N_EXP_DIGITS),
    (N_EXP_DIGITS, _K_ZERO, N_EXP_DIGITS), (N_EXP_DIGITS, _K_DIGIT, N_EXP_DIGITS),
]:
    _NUMBER_NEXT[_state, _class] = _next
_NUMBER_COMPLETE = np.isin(np.arange(9), [N_ZERO, N_INT, N_FRAC, N_EXP_DIGITS])
_NUMBER_INTEGER = np.isin(np.arange(9), [N_ZERO, N_INT])


@flax.struct.dataclass
class NumberState:
    """A number literal read so far: value = ±mantissa · 10^(scale ± exponent)."""

    state: jax.Array  # int32 N_*
    negative: jax.Array  # bool
    mantissa: jax.Array  # float32, at most MAX_SIGNIFICANT_DIGITS significant digits
    significant: jax.Array  # int32 significant digits in mantissa
    scale: jax.Array  # int32 power of ten from the decimal point and dropped digits
    exponent: jax.Array  # int32 |explicit exponent|, saturated
    exponent_negative: jax.Array  # bool
    integer: jax.Array  # int32 |integer part|, saturated at SATURATED_INT

    @classmethod
    def start(cls) -> "NumberState":
        zero = jnp.int32(0)
        return cls(jnp.int32(N_START), jnp.bool_(False), jnp.float32(0), zero, zero, zero,
                   jnp.bool_(False), zero)

    def step(self, char) -> tuple["NumberState", jax.Array]:
        """The number after `char`, and whether `char` continues it (else self is returned)."""
        kind = lookup(_NUMBER_CLASS, char)
        next_state = lookup(_NUMBER_NEXT, self.state, kind)
        accepted = next_state >= 0
        digit = char - ord("0")
        is_digit = accepted & ((kind == _K_ZERO) | (kind == _K_DIGIT))
        int_digit = is_digit & ((next_state == N_ZERO) | (next_state == N_INT))
        frac_digit = is_digit & (next_state == N_FRAC)
        kept = (int_digit | frac_digit) & (self.significant < MAX_SIGNIFICANT_DIGITS)
        mantissa = jnp.where(kept, self.mantissa * 10 + digit.astype(jnp.float32), self.mantissa)
        integer = jnp.where(
            self.integer > (SATURATED_INT - digit) // 10, SATURATED_INT, self.integer * 10 + digit
        )
        exponent = jnp.minimum(self.exponent * 10 + digit, _MAX_EXPONENT)
        minus = accepted & (kind == _K_MINUS)
        new = NumberState(
            state=jnp.where(accepted, next_state, self.state),
            negative=self.negative | (minus & (self.state == N_START)),
            mantissa=mantissa,
            significant=self.significant + (kept & (mantissa > 0)),
            scale=self.scale + (int_digit & ~kept) - (frac_digit & kept),
            exponent=jnp.where(is_digit & (next_state == N_EXP_DIGITS), exponent, self.exponent),
            exponent_negative=self.exponent_negative | (minus & (self.state == N_EXP)),
            integer=jnp.where(int_digit, integer, self.integer),
        )
        return new, accepted

    @property
    def complete(self) -> jax.Array:
        """Whether the characters so far form a whole number literal."""
        return lookup(_NUMBER_COMPLETE, self.state)

    @property
    def is_integer(self) -> jax.Array:
        """Whether they form an integer literal (no fraction, no exponent), as json gives an int."""
        return lookup(_NUMBER_INTEGER, self.state)

    @property
    def value(self) -> jax.Array:
        """float32 value (±inf beyond float32's range, as float32(float(literal)))."""
        power = self.scale + jnp.where(self.exponent_negative, -self.exponent, self.exponent)
        factor = lookup(_POW10, jnp.minimum(jnp.abs(power), _POW10.shape[0] - 1))
        magnitude = jnp.where(power >= 0, self.mantissa * factor, self.mantissa / factor)
        magnitude = jnp.where(self.mantissa == 0, 0.0, magnitude)
        return jnp.where(self.negative, -magnitude, magnitude)

    @property
    def integer_value(self) -> jax.Array:
        """int32 value of an integer literal, clipped to ±SATURATED_INT."""
        return jnp.where(self.negative, -self.integer, self.integer)


# -------------------------------------------------------------------------------------------- words


@dataclasses.dataclass(frozen=True)
class Words:
    """A fixed tuple of distinct ASCII words to recognise (keys, tool names)."""

    words: tuple[str, ...]

    def __post_init__(self):
        valid = all(word and word.isascii() for word in self.words)
        if not valid or len(set(self.words)) != len(self.words):
            raise ValueError(f"words must be distinct non-empty ASCII strings, got {self.words}")

    def index(self, word: str) -> int:
        """Position of `word` (what `WordMatch.result` returns when it is spelled)."""
        return self.words.index(word)

    def table(self) -> np.ndarray:
        """[M, W + 1] int32 character codes, padded with NO_CHAR (so every word ends in NO_CHAR)."""
        width = max(len(word) for word in self.words) + 1
        table = np.full((len(self.words), width), NO_CHAR, np.int32)
        for row, word in enumerate(self.words):
            table[row, : len(word)] = [ord(char) for char in word]
        return table


@flax.struct.dataclass
class WordMatch:
    """Which words are still spelled by the characters read so far."""

    alive: jax.Array  # [M] bool, word m starts with the characters read
    position: jax.Array  # int32 characters read

    @classmethod
    def start(cls, words: Words) -> "WordMatch":
        return cls(alive=jnp.ones(len(words.words), bool), position=jnp.int32(0))

    def step(self, words: Words, char, kill=False) -> "WordMatch":
        """After one more character; `kill` (bool) makes every word fail (e.g. inner whitespace)."""
        table = jnp.asarray(words.table())  # [M, W + 1]
        column = jnp.minimum(self.position, table.shape[1] - 1)
        alive = self.alive & (table[:, column] == char) & jnp.logical_not(kill)
        return WordMatch(alive=alive, position=self.position + 1)

    def result(self, words: Words) -> jax.Array:
        """int32 index of the word spelled exactly, -1 if none."""
        table = jnp.asarray(words.table())  # [M, W + 1]
        column = jnp.minimum(self.position, table.shape[1] - 1)
        exact = self.alive & (table[:, column] == NO_CHAR)  # alive words are never overrun
        return jnp.where(jnp.any(exact), jnp.argmax(exact), -1).astype(jnp.int32)
