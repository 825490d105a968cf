"""Reading a tool call from token ids on device: one `lax.scan` over its characters, no host trip.

The rollout hands the parser a window of a row's tokens that ends with the call-close marker
(`token_ids [L]`, the first `length` real), e.g. the row's last L tokens. The parser
1. turns the window into its last `max_chars` characters through the vocabulary tables
   (`chars.window_chars`);
2. scans them once: a matcher for the call-open marker restarts the protocol's grammar after every
   occurrence, so the grammar reads exactly the body after the LAST open marker; characters of the
   final close marker are not read;
3. finishes the grammar into a fixed-shape `ParsedCall` (tool, numbers, count, target image, error).

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


def _marker_step(marker: tuple[int, ...], matched, char):
    """Progress of a search for `marker` (a pattern with no proper prefix that is also a suffix,
    so a mismatch only needs to retry the first character); returns (matched, completed)."""
    codes = jnp.asarray(marker, jnp.int32)
    advanced = jnp.where(char == codes[matched], matched + 1, jnp.where(char == codes[0], 1, 0))
    completed = advanced == len(marker)
    return jnp.where(completed, 0, advanced), completed


def _has_border(pattern: str) -> bool:
    return any(pattern[:size] == pattern[-size:] for size in range(1, len(pattern)))


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
        if not all(marker.isascii() for marker in markers) or _has_border(protocol.call_open):
            raise ValueError(
                f"call markers {markers} must be ASCII and the open marker must not start with "
                "its own suffix"
            )
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
        in_body = valid & (jnp.arange(self.max_chars) < self.max_chars - close_size)  # [C]
        closes = (total >= close_size) & jnp.all(
            chars[-close_size:] == jnp.asarray(char_codes(self.call_close))
        )
        open_codes = tuple(char_codes(self.call_open))
        fresh = self.grammar.start()

        def read(carry, inputs):
            matched, opened, state = carry
            char, readable = inputs
            next_matched, completed = _marker_step(open_codes, matched, char)
            restart = readable & completed  # the body starts after this character
            stepped = self.grammar.step(state, char)
            state = where_tree(restart, fresh, where_tree(readable, stepped, state))
            return (jnp.where(readable, next_matched, matched), opened | restart, state), None

        start = (jnp.int32(0), jnp.bool_(False), fresh)
        (_, opened, state), _ = jax.lax.scan(read, start, (chars, in_body))
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
