"""The on-device call parser: agreement with the host reference parser, and its building blocks.

Property (hypothesis draws the seed of each batch of 64 random calls), for a window of token ids
that a rollout would hand over (the last WINDOW tokens of a text):
    device = CallParser(ids, length)    host = protocol.parse_host(decode(ids), MAX_CHARS)
  - device.error == host.error, device.tool == host.tool, device.count == len(host.numbers),
    device.target_image == host.target_image (exactly);
  - device.numbers[:min(count, K)] == float32(host.numbers[:K]) within rtol 1e-6, atol 1e-28
    (inf equal to inf), and device.numbers is zero after them.
The calls vary spacing, quoting, key order, number formats (integers, decimals, negatives,
exponents, long digit strings), extra keys with nested values, repeated keys, text and earlier
calls before the call, and are often damaged (truncated, a character deleted, inserted or replaced,
markers missing, wrong counts, letters in numbers). A seeded generator writes them, 100x faster than
composite strategies; a failure prints the offending text. Non-ASCII characters only appear in
calls of at most MAX_CHARS bytes, read whole by both parsers: the device counts a character split
over byte tokens once per token (device_parser's documented difference), which only matters where
the window starts.
"""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from call_windows import (
    MAX_CHARS,
    ROWS,
    SLOTS,
    TOKENIZER,
    compiled_parser,
    encode_windows,
    parse_on_device,
    window_text,
)
from pixel_jax.tools.errors import ToolError
from pixel_jax.tools.protocols import PROTOCOLS, CallParser, ToolId
from pixel_jax.tools.protocols.device_parser import last_open
from pixel_jax.tools.protocols.chars import (
    OTHER,
    VocabChars,
    char_codes,
    empty_tail,
    push_token,
    tail_ends_with,
    window_chars,
)
from pixel_jax.tools.protocols.json_machine import MAX_DEPTH

EXAMPLES = 60  # batches of ROWS = 64 calls per protocol: 3,840 calls each

SPACES = ["", "", "", " ", "  ", "\n", "\t", " \n  ", "\r\n"]
BLANKS = ["", "", "", " ", "  ", "\t", "\r", " \t"]
NASTY = '{}[],:"\\ .-+eE0123456789xaé\n\t'
STRING_PIECES = ["a", "b", "Z", "0", "7", " ", "_", "-", ".", ":", "{", "]", ",", "\\n", "\\t",
                 '\\"', "\\\\", "\\/", "\\u0041", "\\u00e9", "\\u0032", "é", "中"]
PREFIXES = ["", "", "I will zoom in on the sign.\n", "<think>The text is small.</think>\n"]


class CallWriter:
    """Random tool-call texts, well-formed or damaged, from one seeded random generator."""

    def __init__(self, rng: random.Random, ascii_only: bool):
        self.rng, self.ascii_only = rng, ascii_only

    def chance(self, probability: float) -> bool:
        return self.rng.random() < probability


    def number(self, integer: bool = False) -> str:
        rng = self.rng
        whole = rng.choice(["0", str(rng.randint(1, 10 ** rng.randint(1, 12)))])
        text = rng.choice(["", "", "-"]) + whole
        if integer:
            return text
        if self.chance(0.5):
            text += "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 12)))
        if self.chance(0.25):
            # Positive exponents stay small: values keep far from float32's overflow boundary.
            sign = rng.choice(["", "+", "-"])
            text += rng.choice("eE") + sign + str(rng.randint(0, 40 if sign == "-" else 15))
        return text

    def string(self) -> str:
        pieces = [self.rng.choice(STRING_PIECES) for _ in range(self.rng.randint(0, 6))]
        return '"' + "".join(p for p in pieces if p.isascii() or not self.ascii_only) + '"'

    def key(self, word: str) -> str:
        return '"' + (word.replace("a", "\\u0061") if self.chance(0.1) else word) + '"'

    def value(self, depth: int = 0):
        """A random JSON value tree: literal text, ("array", items) or ("object", members)."""
        kind = self.rng.choice(["number", "string", "literal"] + ["array", "object"] * (depth < 2))
        if kind == "number":
            return self.number()
        if kind == "string":
            return self.string()
        if kind == "literal":
            return self.rng.choice(["true", "false", "null"])
        size = self.rng.randint(0, 3)
        if kind == "array":
            return ("array", [self.value(depth + 1) for _ in range(size)])
        return ("object", [(self.string(), self.value(depth + 1)) for _ in range(size)])

    def render(self, value, spaces=tuple(SPACES)) -> str:
        """JSON text of a value tree, with whitespace from `spaces` around every token."""
        if isinstance(value, str):
            return value
        kind, items = value
        space = lambda: self.rng.choice(spaces)  # noqa: E731
        parts = []
        for item in items:
            if kind == "object":
                text = item[0] + space() + ":" + space() + self.render(item[1], spaces)
            else:
                text = self.render(item, spaces)
            parts.append(space() + text + space())
        opening, closing = ("{", "}") if kind == "object" else ("[", "]")
        return opening + ",".join(parts) + space() + closing

    def hermes_body(self) -> str:
        rng = self.rng
        tool = rng.choice(["crop_image_normalized"] * 4 + ["crop_image"] * 2 + ["select_frames"] * 4
                          + ["zoom", "Crop_image"])
        arguments = []
        if self.chance(0.9):
            box = [self.number() for _ in range(rng.choice([4, 4, 4, 4, 3, 5, 0]))]
            if self.chance(0.1):
                box.insert(rng.randint(0, len(box)), self.value())
            arguments.append((self.key("bbox_2d"), ("array", box)))
        if self.chance(0.9):
            target = rng.choice([self.number(integer=True), '"' + self.number(integer=True) + '"',
                                 "1", "2", "1", '"1"', '" 2"', "2.0", "1e0", '"x"', "null", "[1]"])
            arguments.append((self.key("target_image"), target))
        if self.chance(0.75):
            frames = [rng.choice([self.number(integer=True), str(rng.randint(1, 16))])
                      for _ in range(rng.randint(0, SLOTS + 2))]
            if self.chance(0.15):
                frames.append(rng.choice(["2.5", '"3"', "1e1", "[4]"]))
            arguments.append((self.key("target_frames"), ("array", frames)))
        for _ in range(rng.randint(0, 2)):  # extra keys, sometimes repeating a known one
            key = rng.choice([self.string(), self.key("bbox_2d"), self.key("target_image")])
            arguments.append((key, self.value()))
        rng.shuffle(arguments)
        members = [(self.key("name"), f'"{tool}"' if self.chance(0.95) else "7"),
                   (self.key("arguments"), ("object", arguments))]
        if self.chance(0.3):
            key = rng.choice([self.string()] * 3 + [self.key("name"), self.key("arguments")])
            members.append((key, self.value()))
        rng.shuffle(members)
        return self.rng.choice(SPACES) + self.render(("object", members)) + self.rng.choice(SPACES)

    def groundlight_body(self) -> str:
        rng = self.rng

        def line(key, value):
            separator = rng.choice([": "] * 6 + [":", ":  "])
            return "".join([rng.choice(BLANKS), key, rng.choice(BLANKS), separator,
                            rng.choice(BLANKS), value, rng.choice(BLANKS)])

        size = rng.choice([2, 2, 2, 1, 3, 0])
        keypoint = rng.choice([
            ("array", [self.number(integer=self.chance(0.5)) for _ in range(size)]),
            ("array", [self.number(integer=True) for _ in range(2)]),
            ("array", [self.number(integer=True) for _ in range(2)]),
            self.value(),
        ])
        name = rng.choice(["zoom"] * 12 + ["Zoom", "crop", "zo om", "zoom x"])
        # A newline inside the keypoint's JSON would end its line: mostly one-line JSON.
        spaces = SPACES if self.chance(0.1) else [" ", "", "", "\t", "  "]
        lines = [line("name", name), line("keypoint", self.render(keypoint, spaces))]
        lines += rng.sample(["", "", "  ", "some text", "foo: bar", "key point: [1, 2]",
                            "keypoint:[1, 2]", "name:zoom", "name: zoom", "keypoint: [3, 4]",
                            ": x", "a:: b", "name :zoom"], rng.choice([0, 0, 0, 1, 2]))
        rng.shuffle(lines)
        if self.chance(0.1):
            lines = lines[1:]  # a missing line
        return rng.choice(["\n", "", " \n"]) + "\n".join(lines) + rng.choice(["\n", "", "\n\n"])

    def mutated(self, text: str) -> str:
        """`text` unchanged (most often) or with one random defect."""
        kind = self.rng.choice(["none"] * 9 + ["truncate", "delete", "insert", "replace"])
        if kind == "none" or not text:
            return text
        at = self.rng.randrange(len(text))
        if kind == "truncate":
            return text[:at]
        if kind == "delete":
            return text[:at] + text[at + 1:]
        char = self.rng.choice([c for c in NASTY if c.isascii() or not self.ascii_only])
        return text[:at] + char + text[at + (kind == "replace"):]

    def call(self, protocol) -> str:
        """prefix + open marker + body + close marker, any part possibly damaged."""
        body = self.hermes_body if protocol.name == "hermes" else self.groundlight_body
        text = protocol.call_open + self.mutated(body()) + protocol.call_close
        if not self.ascii_only:  # bytes bound the device's characters: both parsers read it all
            return text if len(text.encode()) <= MAX_CHARS else self.call(protocol)
        prefix = self.rng.choice(PREFIXES)
        if self.chance(0.2):  # an earlier call: the last one must win
            prefix += protocol.call_open + body() + protocol.call_close + " Now again: "
        if self.chance(0.15):  # long text before the call: only the window's end is read
            prefix = "filler " * self.rng.randint(5, 60) + prefix
        text = prefix + text
        return self.mutated(text) if self.chance(0.12) else text


# --------------------------------------------------------------------------------- property test


@pytest.fixture(scope="module", params=["hermes", "groundlight"])
def protocol(request):
    return PROTOCOLS.get(request.param)


def check_batch(protocol, texts):
    device = parse_on_device(protocol.name, texts)
    for row, text in enumerate(texts):
        host = protocol.parse_host(window_text(text), MAX_CHARS)
        got = jax.tree.map(lambda field: field[row], device)
        context = f"text {text!r}: device {got}, host {host}"
        assert (got.error, got.tool, got.count, got.target_image) == (
            host.error, host.tool, len(host.numbers), host.target_image), context
        kept = min(len(host.numbers), SLOTS)
        with np.errstate(over="ignore"):
            expected = np.asarray(host.numbers[:kept], np.float32)
        np.testing.assert_allclose(got.numbers[:kept], expected, rtol=1e-6, atol=1e-28,
                                   err_msg=context)
        assert not got.numbers[kept:].any(), context


@settings(max_examples=EXAMPLES, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_device_parser_agrees_with_host_parser(protocol, seed):
    rng = random.Random(seed)
    texts = [CallWriter(rng, ascii_only=rng.random() < 0.7).call(protocol) for _ in range(ROWS)]
    check_batch(protocol, texts)


# ------------------------------------------------------------------------------------ unit tests


def _crop_call(arguments: str) -> str:
    return '<tool_call>{"name": "crop_image", "arguments": ' + arguments + "}</tool_call>"


def test_numbers_are_float32_of_their_literals():
    literals = ["0.1", "-0.0", "123456789012", "1.5e-7", "3E+2", "-12.500", "0.000123456789012"]
    text = '<tool_call>{"name": "select_frames", "arguments": {"target_frames": [%s]}}</tool_call>'
    parsed = parse_on_device("hermes", [text % ", ".join(literals)])
    # Not all integers: ARGUMENT_NOT_INTEGER, and the list is still read, value by value.
    assert parsed.error[0] == ToolError.ARGUMENT_NOT_INTEGER and parsed.count[0] == 7
    expected = np.array([float(literal) for literal in literals[:SLOTS]], np.float32)
    np.testing.assert_allclose(parsed.numbers[0], expected, rtol=1e-7)


def test_nesting_deeper_than_max_depth_is_malformed():
    def call(depth):  # the call's two objects, then `depth` - 2 nested arrays
        arrays = "[" * (depth - 2) + "]" * (depth - 2)
        return _crop_call('{"bbox_2d": [1, 2, 3, 4], "target_image": 1, "x": %s}' % arrays)

    texts = [call(MAX_DEPTH), call(MAX_DEPTH + 1)]
    expected = [ToolError.OK, ToolError.MALFORMED_CALL]
    assert [PROTOCOLS.get("hermes").parse_host(text, MAX_CHARS).error for text in texts] == expected
    assert parse_on_device("hermes", texts).error[:2].tolist() == expected


def test_only_the_window_end_is_read():
    filler = " image" * 70  # 420 characters in 70 tokens: the windows hold all tokens
    call = "<tool>\nname: zoom\nkeypoint: [5, 6]\n</tool>"
    long_call = "<tool>\nname: zoom\n" + filler + "\nkeypoint: [5, 6]\n</tool>"
    texts = [filler + call, long_call]  # the second call opens before the last MAX_CHARS
    assert all(window_text(text) == text and len(text) > MAX_CHARS for text in texts)
    groundlight = PROTOCOLS.get("groundlight")
    host = [groundlight.parse_host(text, MAX_CHARS).error for text in texts]
    assert host == [ToolError.OK, ToolError.MALFORMED_CALL]
    parsed = parse_on_device("groundlight", texts)
    assert parsed.error[:2].tolist() == [ToolError.OK, ToolError.MALFORMED_CALL]
    assert parsed.numbers[0, :2].tolist() == [5, 6] and parsed.tool[0] == ToolId.ZOOM


def test_parser_runs_on_device_without_transfers():
    parser, parse = compiled_parser("hermes")
    ids, lengths = jax.device_put(encode_windows([_crop_call('{"bbox_2d": [1, 2, 3, 4], '
                                                             '"target_image": 1}')]))
    jax.block_until_ready(parse(parser, ids, lengths))  # compile outside the guard
    with jax.transfer_guard("disallow"):
        parsed = parse(parser, ids, lengths)
    assert parsed.error[0] == ToolError.OK and parsed.numbers[0, :4].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "text, readable_from, readable_to, marker",
    [
        ("ab<t>xy<t>z", 0, 11, "<t>"),  # the last of two
        ("ab<t>xy<t>z", 0, 9, "<t>"),  # the second ends after readable_to
        ("ab<t>xy<t>z", 3, 8, "<t>"),  # neither lies inside
        ("xababab", 0, 7, "abab"),  # overlapping occurrences: the last one
        ("<tool_call><tool_call>", 1, 22, "<tool_call>"),
    ],
)
def test_last_open_is_rfind_on_the_readable_slice(text, readable_from, readable_to, marker):
    found, index = jax.jit(last_open, static_argnums=3)(
        jnp.asarray(char_codes(text)), readable_from, readable_to, marker)
    position = text[readable_from:readable_to].rfind(marker)
    expected = readable_from + position + len(marker) if position >= 0 else readable_to
    assert (bool(found), int(index)) == (position >= 0, expected)


def test_build_rejects_bad_sizes():
    with pytest.raises(ValueError, match="cannot hold the call markers"):
        CallParser.build(PROTOCOLS.get("hermes"), TOKENIZER, max_chars=20)
    with pytest.raises(ValueError, match="num_slots must be positive"):
        CallParser.build(PROTOCOLS.get("groundlight"), TOKENIZER, num_slots=0)


def test_vocab_chars_and_window():
    vocab = VocabChars.from_tokenizer(TOKENIZER)
    replacement = TOKENIZER.token_strings().index("\ufffd")  # part of a multi-byte character
    assert vocab.lengths[replacement] == 1 and vocab.codes[replacement, 0] == OTHER
    assert char_codes("a\u00e9") == [97, OTHER]
    text = "keypoint: [500, 400]\n</tool>"
    tokens = TOKENIZER.encode(text)
    ids = jnp.asarray(tokens + [0, 0], jnp.int32)  # two padding ids after the text
    window = jax.jit(window_chars, static_argnums=3)
    chars, valid, total = window(vocab, ids, len(tokens), 40)
    assert total == len(text) and valid.tolist() == [False] * 12 + [True] * 28
    assert chars[12:].tolist() == char_codes(text)
    chars, valid, _ = window(vocab, ids, len(tokens), 10)
    assert chars.tolist() == char_codes(text[-10:]) and bool(valid.all())


@pytest.mark.parametrize("text", ["[1, 2]</tool>", "[1, 2]\n</tool>", "x</answer>", "</tool>"])
def test_tail_sees_stop_strings_whatever_the_tokenization(text):
    vocab = VocabChars.from_tokenizer(TOKENIZER)
    stop = "</tool>" if text.endswith("</tool>") else "</answer>"
    push = jax.jit(push_token)
    tail = empty_tail(10)
    tokens = TOKENIZER.encode(text)
    for token in tokens[:-1]:
        tail = push(vocab, tail, token)
    assert not tail_ends_with(tail, stop)
    tail = push(vocab, tail, tokens[-1])
    assert tail_ends_with(tail, stop) and tail[-len(text):].tolist() == char_codes(text[-10:])
    assert push(vocab, tail, TOKENIZER.vocab_size + 5).tolist() == tail.tolist()  # no text
    with pytest.raises(ValueError, match="at most 10 characters"):
        tail_ends_with(tail, "<|im_end|>\n")
