"""Reading a tool call from token ids on device: one loop over its body's characters, no host trip.

The rollout hands the parser a window of a row's tokens that ends with the call-close marker
(`token_ids [L]`, the first `length` real), e.g. the row's last L tokens. The parser
1. turns the window into its last `max_chars` characters through the vocabulary tables
   (`chars.window_chars`);
2. finds the LAST call-open marker among them, comparing every position at once (`last_open`);
3. runs the protocol's grammar over the body only, the characters between that marker and the
   final close marker, in a `lax.while_loop`;
4. finishes the grammar into a fixed-shape `ParsedCall` (tool, numbers, count, target image, error).

Step 3 costs what the body costs: a call of ~100 characters takes ~100 grammar steps, not
`max_chars` (vmapped over rows, the loop runs for the longest body of the batch). Each step is
~220 small kernels on CPU: in `benchmarks/rollout.py` (16 rows, max_chars 768) a `lax.scan` over
all characters launched 175k of them per rollout, 40–50 ms of a 0.65 s rollout, against 21k for
the 95 steps of the body loop; `parse_batch` alone takes 0.9 ms instead of 5.9.

The result equals the protocol's `parse_host` on the decoded text of the same tokens (the property
test checks this on thousands of random calls), with one documented difference: `max_chars` counts
characters per token, and a multi-byte character split over byte tokens counts once per token. The
body is found with `call_body` semantics: last open marker within the last `max_chars` characters,
text ending with the close marker; anything else is MALFORMED_CALL.

Everything is static-shaped, jit-compatible and vmaps over rows (`parse_batch`).
"""

from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pixel_jax.processing.tokenizer import Tokenizer
from pixel_jax.tools.errors import ToolError
from pixel_jax.tools.protocols.base import ToolId, ToolProtocol
from pixel_jax.tools.protocols.chars import VocabChars, char_codes, window_chars
from pixel_jax.tools.protocols.json_machine import where_tree


@flax.struct.dataclass
class ParsedCall:
    """A call read on device (fields as `base.HostCall`; zeros when MALFORMED or UNKNOWN_TOOL)."""

    tool: jax.Array  # int32 ToolId
    numbers: jax.Array  # [K] float32 the first K numbers of the list argument, zeros after
    count: jax.Array  # int32 numbers written (may exceed K)
    target_image: jax.Array  # int32 crop_image's target_image, 0 if absent or not an integer
    error: jax.Array  # int32 ToolError


class Grammar(Protocol):
    """A protocol's reader of a call body, one character code at a time (all jnp, traceable)."""

    def start(self) -> Any:
        """The state before the body's first character."""

    def step(self, state: Any, char: jax.Array) -> Any:
        """The state after one more character."""

    def finish(self, state: Any) -> ParsedCall:
        """The call read, once the body has ended."""


def last_open(chars: jax.Array, readable_from, readable_to, marker: str):
    """Where the body after the last `marker` starts: (found bool, index int32 into chars [C]).

    Only occurrences lying entirely in chars[readable_from:readable_to] count, as `str.rfind` on
    that slice (overlapping occurrences included); `index` is readable_to when there is none.
    """
    size = len(marker)
    starts = jnp.arange(chars.shape[0] - size + 1)  # [C - M + 1] where an occurrence may start
    matches = jnp.all(
        jnp.stack([chars[offset : offset + starts.shape[0]] == code
                   for offset, code in enumerate(char_codes(marker))]),
        axis=0,
    )  # [C - M + 1]
    inside = matches & (starts >= readable_from) & (starts + size <= readable_to)
    found = jnp.any(inside)
    last = jnp.max(jnp.where(inside, starts, -1))
    return found, jnp.where(found, last + size, readable_to).astype(jnp.int32)


def _failed(num_slots: int, error) -> ParsedCall:
    zero = jnp.int32(0)
    return ParsedCall(zero, jnp.zeros(num_slots, jnp.float32), zero, zero, jnp.int32(error))


@flax.struct.dataclass
class CallParser:
    """The on-device call parser of one protocol and vocabulary (a pytree: pass it to jit)."""

    vocab: VocabChars
    grammar: Any = flax.struct.field(pytree_node=False)
    call_open: str = flax.struct.field(pytree_node=False)
    call_close: str = flax.struct.field(pytree_node=False)
    max_chars: int = flax.struct.field(pytree_node=False)
    num_slots: int = flax.struct.field(pytree_node=False)

    @classmethod
    def build(
        cls, protocol: ToolProtocol, tok: Tokenizer, *, max_chars: int = 512, num_slots: int = 8
    ) -> "CallParser":
        """Tables for `tok`'s vocabulary; reads the last `max_chars` characters of a window and
        keeps the first `num_slots` numbers of a list argument."""
        markers = (protocol.call_open, protocol.call_close)
        if not all(marker.isascii() for marker in markers):
            raise ValueError(f"call markers {markers} must be ASCII")
        if max_chars <= len(protocol.call_open) + len(protocol.call_close):
            raise ValueError(f"max_chars={max_chars} cannot hold the call markers {markers}")
        if num_slots < 1:
            raise ValueError(f"num_slots must be positive, got {num_slots}")
        return cls(
            vocab=VocabChars.from_tokenizer(tok),
            grammar=protocol.device_grammar(num_slots),
            call_open=protocol.call_open,
            call_close=protocol.call_close,
            max_chars=max_chars,
            num_slots=num_slots,
        )

    def __call__(self, token_ids: jax.Array, length) -> ParsedCall:
        """The call that `token_ids[:length]` ([L] int32) ends with."""
        chars, valid, total = window_chars(self.vocab, token_ids, length, self.max_chars)  # [C]
        close_size = len(self.call_close)
        body_end = self.max_chars - close_size  # the final close marker's characters are not read
        closes = (total >= close_size) & jnp.all(
            chars[-close_size:] == jnp.asarray(char_codes(self.call_close))
        )
        first_char = self.max_chars - jnp.sum(valid)  # the window's text is right-aligned
        opened, body_start = last_open(chars, first_char, body_end, self.call_open)

        def read(carry):
            index, state = carry
            return index + 1, self.grammar.step(state, chars[index])

        _, state = jax.lax.while_loop(
            lambda carry: carry[0] < body_end, read, (body_start, self.grammar.start())
        )
        call = self.grammar.finish(state)
        error = jnp.where(opened & closes, call.error, ToolError.MALFORMED_CALL)
        failed = (error == ToolError.MALFORMED_CALL) | (error == ToolError.UNKNOWN_TOOL)
        return where_tree(failed, _failed(self.num_slots, error), call.replace(error=error))

    def parse_batch(self, token_ids: jax.Array, lengths: jax.Array) -> ParsedCall:
        """`self` over rows: token_ids [B, L], lengths [B] → fields with a leading [B]."""
        return jax.vmap(self.__call__)(token_ids, lengths)


def tool_name_table(names: dict[str, ToolId], words) -> np.ndarray:
    """[M + 1] int32: the ToolId of word w at index w + 1 (index 0: no word matched → NONE)."""
    tools = [ToolId.NONE] + [names.get(word, ToolId.NONE) for word in words.words]
    return np.array(tools, np.int32)
