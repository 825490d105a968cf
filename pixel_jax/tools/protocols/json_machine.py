"""A JSON reader on device: one character code (`chars`) at a time, with events for a grammar.

`JsonState` reads a JSON text exactly as Python's `json.loads` accepts it, except NaN/Infinity
(never valid here) and nesting deeper than MAX_DEPTH (rejected); the container stack is a bit mask
in an int32. Every step also reports `JsonEvents` (a value starts, a key or value ends, the decoded
character of a string), which a protocol's grammar (`hermes`, `groundlight`) turns into the call's
fields, e.g. through `NumberList`, the numbers of one array argument (a box, a keypoint, frames).
Pure `(state, char) -> (state, events)` on scalars: traceable inside `lax.scan`, vmappable.
"""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pixel_jax.tools.protocols.chars import NO_CHAR, NUM_CODES, OTHER
from pixel_jax.tools.protocols.literals import NumberState, Words, lookup

MAX_DEPTH = 24  # deepest container nesting accepted (the stack is a bit mask in an int32)


def where_tree(condition, if_true, if_false):
    """`jnp.where(condition, a, b)` leaf by leaf over two pytrees of the same structure."""
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), if_true, if_false)


# --------------------------------------------------------------------------------------------- JSON

# Modes. The first six read structure; the others are inside a string, number or literal.
VALUE, VALUE_OR_CLOSE, KEY_OR_CLOSE, KEY, COLON, AFTER = range(6)
STRING, ESCAPE, UNICODE, NUMBER, LITERAL, ERROR = range(6, 12)
# Kinds of values, reported when one starts.
OBJECT, ARRAY, TEXT, NUMERIC, CONSTANT = range(5)

_C_SPACE, _C_LBRACE, _C_RBRACE, _C_LBRACKET, _C_RBRACKET, _C_QUOTE = range(6)
_C_COLON, _C_COMMA, _C_NUMBER, _C_LITERAL, _C_OTHER = range(6, 11)
_CLASS = np.full(NUM_CODES, _C_OTHER, np.int32)
for _chars, _class in [(" \t\n\r", _C_SPACE), ("{", _C_LBRACE), ("}", _C_RBRACE),
                       ("[", _C_LBRACKET), ("]", _C_RBRACKET), ('"', _C_QUOTE), (":", _C_COLON),
                       (",", _C_COMMA), ("-0123456789", _C_NUMBER), ("tfn", _C_LITERAL)]:
    _CLASS[[ord(char) for char in _chars]] = _class

# Actions of the structural modes ("lexical" modes read their characters themselves).
(_A_LEXICAL, _A_ERROR, _A_SKIP, _A_OPEN_OBJECT, _A_OPEN_ARRAY, _A_OPEN_STRING, _A_OPEN_KEY,
 _A_OPEN_NUMBER, _A_OPEN_LITERAL, _A_CLOSE_OBJECT, _A_CLOSE_ARRAY, _A_COLON, _A_COMMA) = range(13)
_VALUE_ACTIONS = {_C_SPACE: _A_SKIP, _C_LBRACE: _A_OPEN_OBJECT, _C_LBRACKET: _A_OPEN_ARRAY,
                  _C_QUOTE: _A_OPEN_STRING, _C_NUMBER: _A_OPEN_NUMBER, _C_LITERAL: _A_OPEN_LITERAL}
_STRUCTURE = {
    VALUE: _VALUE_ACTIONS,
    VALUE_OR_CLOSE: {**_VALUE_ACTIONS, _C_RBRACKET: _A_CLOSE_ARRAY},  # just after '['
    KEY_OR_CLOSE: {_C_SPACE: _A_SKIP, _C_QUOTE: _A_OPEN_KEY, _C_RBRACE: _A_CLOSE_OBJECT},
    KEY: {_C_SPACE: _A_SKIP, _C_QUOTE: _A_OPEN_KEY},  # after ',' in an object
    COLON: {_C_SPACE: _A_SKIP, _C_COLON: _A_COLON},
    AFTER: {_C_SPACE: _A_SKIP, _C_COMMA: _A_COMMA, _C_RBRACKET: _A_CLOSE_ARRAY,
            _C_RBRACE: _A_CLOSE_OBJECT},
}
_ACTION = np.full((12, len(_CLASS)), _A_LEXICAL, np.int32)  # [mode, class]
for _mode, _actions in _STRUCTURE.items():
    _ACTION[_mode] = _A_ERROR
    for _class, _action in _actions.items():
        _ACTION[_mode, _class] = _action

def _table(entries: dict[int, int], size: int, default: int) -> np.ndarray:
    table = np.full(size, default, np.int32)
    table[list(entries)] = list(entries.values())
    return table


# Mode after an action (-1: the same mode; after a comma it depends on the container).
_NEXT_MODE = _table({_A_ERROR: ERROR, _A_OPEN_OBJECT: KEY_OR_CLOSE, _A_OPEN_ARRAY: VALUE_OR_CLOSE,
                     _A_OPEN_STRING: STRING, _A_OPEN_KEY: STRING, _A_OPEN_NUMBER: NUMBER,
                     _A_OPEN_LITERAL: LITERAL, _A_CLOSE_OBJECT: AFTER, _A_CLOSE_ARRAY: AFTER,
                     _A_COLON: VALUE}, size=13, default=-1)
# Kind of the value an action starts (-1: none).
_KIND = _table({_A_OPEN_OBJECT: OBJECT, _A_OPEN_ARRAY: ARRAY, _A_OPEN_STRING: TEXT,
                _A_OPEN_NUMBER: NUMERIC, _A_OPEN_LITERAL: CONSTANT}, size=13, default=-1)

_ESCAPED = np.full(NUM_CODES, NO_CHAR, np.int32)  # '\c' -> decoded character code
for _char, _decoded in zip('"\\/bfnrt', '"\\/\b\f\n\r\t'):
    _ESCAPED[ord(_char)] = ord(_decoded)
_HEX = np.full(NUM_CODES, -1, np.int32)
for _index, _char in enumerate("0123456789abcdef"):
    _HEX[ord(_char)] = _HEX[ord(_char.upper())] = _index
_LITERALS = ("true", "false", "null")
_LITERAL_OF = np.zeros(NUM_CODES, np.int32)
_LITERAL_OF[[ord(word[0]) for word in _LITERALS]] = np.arange(len(_LITERALS))
_LITERAL_TABLE = Words(_LITERALS).table()  # [3, 6]


@flax.struct.dataclass
class JsonEvents:
    """What one character did, for the grammar reading the values."""

    value_start: jax.Array  # bool: a value of kind `kind` starts
    kind: jax.Array  # int32 OBJECT / ARRAY / TEXT / NUMERIC / CONSTANT
    depth: jax.Array  # int32 containers around the value or key that starts or ends here
    in_array: jax.Array  # bool: the innermost of them is an array
    string_start: jax.Array  # bool: a string (key or value) starts
    string_char: jax.Array  # int32 decoded character of a string, NO_CHAR if none
    key_end: jax.Array  # bool: an object key ends
    text_end: jax.Array  # bool: a string value ends
    number_end: jax.Array  # bool: a number ends; it is `number`
    number: NumberState


@flax.struct.dataclass
class JsonState:
    """A JSON text read so far."""

    mode: jax.Array  # int32
    depth: jax.Array  # int32 open containers
    stack: jax.Array  # int32 bit d-1 set when the container at depth d is an array
    is_key: jax.Array  # bool, the open string is an object key
    literal: jax.Array  # int32 index into _LITERALS of the open literal
    literal_index: jax.Array  # int32 characters of it read
    unicode_digits: jax.Array  # int32 hex digits of a \uXXXX escape read
    unicode_code: jax.Array  # int32 their value
    number: NumberState  # the open number

    @classmethod
    def start(cls) -> "JsonState":
        zero = jnp.int32(0)
        return cls(jnp.int32(VALUE), zero, zero, jnp.bool_(False), zero, zero, zero, zero,
                   NumberState.start())

    @property
    def complete(self) -> jax.Array:
        """Whether the characters so far are one whole JSON value (plus whitespace)."""
        number_open = (self.mode == NUMBER) & self.number.complete
        return ((self.mode == AFTER) | number_open) & (self.depth == 0)

    def step(self, char) -> tuple["JsonState", JsonEvents]:
        # A number ends at the first character that cannot continue it; that character is then
        # read as the character after a complete value.
        number, continues = self.number.step(char)
        number_ends = (self.mode == NUMBER) & ~continues
        mode = jnp.where(number_ends, AFTER, self.mode)
        action = lookup(_ACTION, mode, lookup(_CLASS, char))
        top_bit = (self.stack >> jnp.maximum(self.depth - 1, 0)) & 1
        top_is_array = (self.depth > 0) & (top_bit == 1)

        # Structure: open and close containers, keys and values.
        opens = (action == _A_OPEN_OBJECT) | (action == _A_OPEN_ARRAY)
        closes = (action == _A_CLOSE_OBJECT) | (action == _A_CLOSE_ARRAY)
        structure_error = (
            (action == _A_ERROR)
            | (opens & (self.depth >= MAX_DEPTH))
            | ((action == _A_CLOSE_ARRAY) & ~top_is_array)
            | ((action == _A_CLOSE_OBJECT) & ((self.depth == 0) | top_is_array))
            | ((action == _A_COMMA) & (self.depth == 0))
            | (number_ends & ~self.number.complete)
        )
        array_bit = (action == _A_OPEN_ARRAY).astype(jnp.int32) << self.depth
        stack = jnp.where(opens, (self.stack & ~(1 << self.depth)) | array_bit, self.stack)
        next_mode = lookup(_NEXT_MODE, action)
        next_mode = jnp.where(action == _A_COMMA, jnp.where(top_is_array, VALUE, KEY), next_mode)
        next_mode = jnp.where(next_mode < 0, mode, next_mode)
        structure_mode = jnp.where(structure_error, ERROR, next_mode)

        # Inside strings, escapes and literals.
        quote, backslash = char == ord('"'), char == ord("\\")
        escaped, hex_digit = lookup(_ESCAPED, char), lookup(_HEX, char)
        literal_ok = char == lookup(_LITERAL_TABLE, self.literal, self.literal_index)
        literal_done = lookup(_LITERAL_TABLE, self.literal, self.literal_index + 1) == NO_CHAR
        unicode_code = self.unicode_code * 16 + hex_digit
        unicode_done = (mode == UNICODE) & (hex_digit >= 0) & (self.unicode_digits == 3)
        lexical_mode = jnp.select(
            [
                (mode == STRING) & quote,
                (mode == STRING) & backslash,
                ((mode == STRING) & (char < 0x20)) | (mode == ERROR),
                mode == STRING,
                (mode == ESCAPE) & (char == ord("u")),
                (mode == ESCAPE) & (escaped >= 0),
                (mode == UNICODE) & (hex_digit >= 0),
                mode == NUMBER,
                (mode == LITERAL) & literal_ok,
            ],
            [
                jnp.where(self.is_key, COLON, AFTER),
                ESCAPE,
                ERROR,
                STRING,
                UNICODE,
                STRING,
                jnp.where(unicode_done, STRING, UNICODE),
                NUMBER,
                jnp.where(literal_done, AFTER, LITERAL),
            ],
            ERROR,
        )
        string_char = jnp.select(
            [
                (mode == STRING) & ~quote & ~backslash & (char >= 0x20),
                (mode == ESCAPE) & (escaped >= 0),
                unicode_done,
            ],
            [char, escaped, jnp.where(unicode_code < 128, unicode_code, OTHER)],
            NO_CHAR,
        )

        opened_number, _ = NumberState.start().step(char)
        starts_escape = (mode == ESCAPE) & (char == ord("u"))
        state = JsonState(
            mode=jnp.where(action == _A_LEXICAL, lexical_mode, structure_mode),
            depth=self.depth + opens - closes,
            stack=stack,
            is_key=jnp.where(action == _A_OPEN_KEY, True, (action != _A_OPEN_STRING) & self.is_key),
            literal=jnp.where(action == _A_OPEN_LITERAL, lookup(_LITERAL_OF, char), self.literal),
            literal_index=jnp.where(
                action == _A_OPEN_LITERAL, 1, self.literal_index + (mode == LITERAL)
            ),
            unicode_digits=jnp.where(starts_escape, 0, self.unicode_digits + (mode == UNICODE)),
            unicode_code=jnp.where(
                starts_escape, 0, jnp.where(mode == UNICODE, unicode_code, self.unicode_code)
            ),
            number=where_tree(
                action == _A_OPEN_NUMBER,
                opened_number,
                where_tree(mode == NUMBER, number, self.number),
            ),
        )
        kind = lookup(_KIND, action)
        events = JsonEvents(
            value_start=kind >= 0,
            kind=kind,
            depth=self.depth,
            in_array=top_is_array,
            string_start=(action == _A_OPEN_STRING) | (action == _A_OPEN_KEY),
            string_char=string_char,
            key_end=(mode == STRING) & quote & self.is_key,
            text_end=(mode == STRING) & quote & ~self.is_key,
            number_end=number_ends & self.number.complete,
            number=self.number,
        )
        return state, events


# ------------------------------------------------------------------------------------ number lists


@flax.struct.dataclass
class NumberList:
    """One list argument of a call, e.g. `"bbox_2d": [0.1, 0.2, 0.5, 0.9]` or `[500, 400]`."""

    given: jax.Array  # bool, the argument was written
    is_array: jax.Array  # bool, its value is a JSON array
    non_number: jax.Array  # bool, an element is not a number
    non_integer: jax.Array  # bool, a number element is not an integer literal
    count: jax.Array  # int32 number elements (may exceed the slots)
    values: jax.Array  # [K] float32 the first K number elements, zeros after

    @classmethod
    def absent(cls, slots: int) -> "NumberList":
        false = jnp.bool_(False)
        return cls(false, false, false, false, jnp.int32(0), jnp.zeros(slots, jnp.float32))

    def read(self, events: JsonEvents, depth, active) -> "NumberList":
        """The list after one JSON step. Its value sits at `depth`; `active` (bool) says that the
        value at `depth` now being read, if any, is this argument's."""
        starts = active & events.value_start & (events.depth == depth)
        fresh = NumberList.absent(self.values.shape[0])
        started = fresh.replace(given=jnp.bool_(True), is_array=events.kind == ARRAY)
        current = where_tree(starts, started, self)
        element = active & events.in_array & (events.depth == depth + 1)
        not_number = element & events.value_start & (events.kind != NUMERIC)
        number = events.number
        appended = element & events.number_end
        slot = jnp.arange(self.values.shape[0]) == current.count  # [K]
        return current.replace(
            non_number=current.non_number | not_number,
            non_integer=current.non_integer | (appended & ~number.is_integer),
            count=current.count + appended,
            values=jnp.where(appended & slot, number.value, current.values),
        )
