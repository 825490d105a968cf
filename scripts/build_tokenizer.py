"""Builds the offline tokenizer of the embedded default model into `pixel_jax/assets/tokenizer/`.

A small byte-level BPE with exactly Qwen2's pipeline (NFC normaliser, Qwen2's pre-tokenisation
regex split then byte-level mapping, byte-level decoder; one token per digit), Qwen2.5-VL's added
tokens in Qwen's order at the end of the vocabulary, and a chat template with the semantics of
Qwen2.5-VL's. The output loads with `transformers.AutoTokenizer.from_pretrained(folder)`, like a
real checkpoint's tokenizer.

The training corpus is generated here from a fixed seed, and the BPE trainer is deterministic, so
running the script twice writes byte-identical files:

    python scripts/build_tokenizer.py [--out_dir DIR]
"""

import argparse
import json
import pathlib
import random
from collections.abc import Iterator

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

DEFAULT_OUT_DIR = pathlib.Path(__file__).resolve().parents[1] / "pixel_jax" / "assets" / "tokenizer"
TOTAL_VOCAB_SIZE = 2000  # byte alphabet + BPE merges + added tokens
CORPUS_SEED = 0
CORPUS_DOCUMENTS = 6000
MODEL_MAX_LENGTH = 131072  # Qwen2.5-VL's value; sequence budgets live in the configs.

# Qwen2's pre-tokenisation regex (transformers/models/qwen2/tokenization_qwen2.py).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Byte-level mapping after the regex split (so no regex of its own), no prefix space, raw offsets.
BYTE_LEVEL_OPTIONS = dict(add_prefix_space=False, trim_offsets=False, use_regex=False)

# Qwen2.5-VL's added tokens, in Qwen's order; (content, special). `<tool_call>` / `</tool_call>` are
# not special: they survive `decode(..., skip_special_tokens=True)`.
ADDED_TOKENS = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Same output as Qwen2-VL / Qwen2.5-VL's chat template: a default system turn when the conversation
# does not open with one; `<|im_start|>role\n...<|im_end|>\n` per message; each image (video) item
# as `<|vision_start|><|image_pad|><|vision_end|>` (`<|video_pad|>`), optionally numbered with
# `add_vision_id`; `<|im_start|>assistant\n` with `add_generation_prompt`.
CHAT_TEMPLATE = "".join((
    "{% set counts = namespace(image=0, video=0) %}",
    "{% for message in messages %}",
    "{% if loop.first and message['role'] != 'system' %}",
    "<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n",
    "{% endif %}",
    "<|im_start|>{{ message['role'] }}\n",
    "{% if message['content'] is string %}",
    "{{ message['content'] }}",
    "{% else %}",
    "{% for item in message['content'] %}",
    "{% if item['type'] == 'image' or 'image' in item or 'image_url' in item %}",
    "{% set counts.image = counts.image + 1 %}",
    "{% if add_vision_id %}Picture {{ counts.image }}: {% endif %}",
    "<|vision_start|><|image_pad|><|vision_end|>",
    "{% elif item['type'] == 'video' or 'video' in item %}",
    "{% set counts.video = counts.video + 1 %}",
    "{% if add_vision_id %}Video {{ counts.video }}: {% endif %}",
    "<|vision_start|><|video_pad|><|vision_end|>",
    "{% elif 'text' in item %}",
    "{{ item['text'] }}",
    "{% endif %}",
    "{% endfor %}",
    "{% endif %}",
    "<|im_end|>\n",
    "{% endfor %}",
    "{% if add_generation_prompt %}",
    "<|im_start|>assistant\n",
    "{% endif %}",
))


# ---------------------------------------------------------------------------------------------
# Corpus: English about images, both tool-call protocols, JSON, YAML, numbers, system prompts.
# ---------------------------------------------------------------------------------------------

OBJECTS = (
    "car", "sign", "person", "dog", "cat", "bird", "tree", "building", "window", "door", "clock",
    "bottle", "cup", "book", "phone", "laptop", "chair", "table", "boat", "bus", "truck", "bicycle",
    "flower", "shirt", "hat", "bag", "ball", "lamp", "poster", "label", "screen", "plate", "square",
    "circle", "triangle", "star", "digit", "letter", "word", "number", "shape", "object", "target",
)
COLORS = (
    "red", "green", "blue", "yellow", "black", "white", "orange", "purple", "pink", "brown", "gray",
    "cyan", "magenta",
)
PLACES = (
    "top left", "top right", "bottom left", "bottom right", "center", "left side", "right side",
    "upper half", "lower half", "middle", "background", "foreground", "corner", "edge",
)
QUESTIONS = (
    "What is the color of the {obj} in the {place} of the image?",
    "How many {obj}s are there in the image?",
    "What is written on the {obj}?",
    "Which {obj} is closer to the {place}?",
    "Is the {color} {obj} to the left or to the right of the {obj2}?",
    "What number is shown on the small {obj} near the {place}?",
    "Can you read the text on the {color} {obj}?",
    "Describe the {obj} in the {place}.",
    "Where is the {color} {obj} located?",
    "Which frame shows the {color} {obj}?",
    "What is the {obj} holding?",
    "Is there a {color} {obj} in this picture?",
)
REASONING = (
    "The image shows a {color} {obj} in the {place}.",
    "I need to look more closely at the {place} of the image.",
    "The {obj} is too small to read, so I will zoom in on it.",
    "Let me zoom in on the {place} region to see the details.",
    "The cropped image shows the {obj} clearly.",
    "The crop does not contain the {obj}; I should look at another region.",
    "Now I can see that the {obj} is {color}.",
    "This question can be answered from the whole image without zooming.",
    "First, I describe the whole image. Then I check the {place}.",
    "There are {n} {obj}s: {n2} are {color} and the rest are {color2}.",
    "Looking at frames {n} and {n2}, the {obj} moves toward the {place}.",
    "So the answer is {n}.",
    "Therefore, the {obj} is {color}.",
)
ANSWER_FORMS = (
    "The answer is \\boxed{{{answer}}}.",
    "\\boxed{{{answer}}}",
    "<answer>{answer}</answer>",
    "Answer: {answer}",
    "(A) {answer}\n(B) {other}\n(C) none of the above",
)
SYSTEM_PROMPTS = (
    DEFAULT_SYSTEM_PROMPT,
    "You are a helpful assistant that reasons about images step by step before answering.",
    "A conversation between a user and an assistant. The user asks a question about an image, and "
    "the assistant answers it. The assistant first thinks in <think> </think> tags, may call the "
    "zoom tool in <tool> </tool> tags, and gives the final answer in <answer> </answer> tags.",
    "Guidelines: Understand the given visual information and the user query. Determine if it is "
    "beneficial to employ the given visual operations (tools). For a video, we can look closer by "
    "selecting frames. For an image, we can look closer by zooming in on a region. Reason with the "
    "visual information step by step, and put your final answer within \\boxed{}.",
)
TOOL_SCHEMAS = (
    {
        "type": "function",
        "function": {
            "name": "crop_image",
            "description": "Zoom in on the image based on the bounding box coordinates.",
            "parameters": {
                "type": "object",
                "properties": {
                    "bbox_2d": {
                        "type": "array",
                        "description": "coordinates for the bounding box of the area to zoom in on",
                        "items": {"type": "number"},
                    },
                    "target_image": {
                        "type": "number",
                        "description": "the index of the image to crop, starting from 1",
                    },
                },
                "required": ["bbox_2d", "target_image"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "select_frames",
            "description": "Select frames from a video.",
            "parameters": {
                "type": "object",
                "properties": {
                    "target_frames": {
                        "type": "array",
                        "description": "list of frame indices to select",
                        "items": {"type": "integer"},
                    }
                },
                "required": ["target_frames"],
            },
        },
    },
)
TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
)
TOOLS_POSTAMBLE = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
COMMON_WORDS = tuple("""
the of and to in is that it for on with as was at by this be from or are an have not but they
which one you all were we when there can been has more if will their what so about would into
them some could time these two may then do first any like now my such make over our even most
after also made many before must through back years where much your way well down should because
each just those people how too little state good very world still own see men work long get here
between both life being under never same another know while last might us great old year off
come since against go came right used take three small large big bright dark light heavy left
top bottom near far above below behind front inside outside around across along during without
within again once always often sometimes usually clearly likely probably exactly almost only
visible hidden blurry sharp tiny huge round flat tall short wide narrow thick thin empty full
open closed new different similar other next previous final correct wrong true false answer
question image picture photo video frame region area detail details text sign board label
caption title chart graph table figure diagram map page look looks looking seen sees show shows
shown find found count counted read reads zoom zooming crop cropped select selected compare
compared check checked notice noticed identify determine describe describes explain observe
observed contains contain appears appear seems located position surface background person man
woman child children group crowd street road sidewalk car cars vehicle vehicles house houses
wall roof sky cloud clouds water river lake sea beach mountain hill grass field garden park
forest tree trees leaf leaves flower animal animals horse cow sheep dog cat bird fish elephant
giraffe zebra bear food pizza cake fruit apple banana orange sandwich kitchen room bed sofa desk
computer keyboard mouse television game player team sport ball tennis baseball soccer skateboard
surfboard kite umbrella clothes jacket shoe shoes glasses hair face hand hands head eye eyes arm
legs body wearing holding sitting standing walking running playing riding carrying pointing
facing waiting parked moving morning evening night day summer winter weather snow rain sunny
cloudy store shop market price menu brand logo name letters digits numbers percent total amount
value date month week hour minute second third fourth fifth several few number digit percentage
step reasoning think thinking therefore however although thus hence finally overall result
results option options choice choices yes no maybe none either neither please provide given
following based according using use need needs want wants help helps assistant user system tool
tools function functions call calls argument arguments parameter parameters object array string
integer boolean required description type properties items
""".split())
NEWLINES = ("\n", "\n\n", "\r\n", " \n", "\n\n\n", "\t\n", "  ")


def _number(rng: random.Random) -> str:
    """A number written the way model outputs write numbers: int, decimal, negative, size."""
    kind = rng.randrange(5)
    if kind == 0:
        return str(rng.randrange(10 ** rng.randrange(1, 6)))
    if kind == 1:
        return f"{rng.random():.{rng.randrange(1, 4)}f}"
    if kind == 2:
        return f"-{rng.uniform(0, 100):.2f}"
    if kind == 3:
        return f"{rng.randrange(28, 4096)}x{rng.randrange(28, 4096)}"
    return f"{rng.randrange(1, 1000):,}"


def _fill(rng: random.Random, template: str, answer: str = "") -> str:
    return template.format(
        obj=rng.choice(OBJECTS), obj2=rng.choice(OBJECTS), color=rng.choice(COLORS),
        color2=rng.choice(COLORS), place=rng.choice(PLACES), n=rng.randrange(1, 20),
        n2=rng.randrange(1, 20), answer=answer, other=rng.choice(COLORS),
    )


def _hermes_call(rng: random.Random) -> str:
    """A Pixel Reasoner tool call: Hermes JSON inside <tool_call> tags."""
    if rng.random() < 0.75:
        if rng.random() < 0.5:
            box = sorted(round(rng.random(), rng.randrange(1, 4)) for _ in range(4))
        else:
            box = sorted(rng.randrange(0, 2048) for _ in range(4))
        arguments = {"bbox_2d": box, "target_image": rng.randrange(1, 5)}
        call = {"name": "crop_image", "arguments": arguments}
    else:
        frames = sorted(rng.sample(range(1, 33), rng.randrange(1, 9)))
        call = {"name": "select_frames", "arguments": {"target_frames": frames}}
    return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"


def _groundlight_call(rng: random.Random) -> str:
    """A Groundlight tool call: YAML inside <tool> tags."""
    return f"<tool>\nname: zoom\nkeypoint: [{rng.randrange(2048)}, {rng.randrange(2048)}]\n</tool>"


def _tool_result(rng: random.Random) -> str:
    if rng.random() < 0.8:
        width, height = rng.randrange(28, 1024), rng.randrange(28, 1024)
        return f"\nHere is the cropped image (Image Size: {width}x{height}):"
    reason = rng.choice((
        "the bounding box is too small", "target_image index out of range",
        "invalid JSON in the tool call", "each side of the crop must exceed 28 pixels",
    ))
    return f"\nExecution error:\n{reason}\n"


def _trajectory(rng: random.Random) -> str:
    """An assistant response: reasoning, optional tool calls and results, a final answer."""
    parts = [_fill(rng, rng.choice(REASONING)) for _ in range(rng.randrange(1, 4))]
    for _ in range(rng.randrange(3)):
        parts.append(_hermes_call(rng) if rng.random() < 0.6 else _groundlight_call(rng))
        parts.append(_tool_result(rng))
        parts.append(_fill(rng, rng.choice(REASONING)))
    answer = rng.choice((rng.choice(COLORS), rng.choice(OBJECTS), _number(rng), "yes", "no"))
    parts.append(_fill(rng, rng.choice(ANSWER_FORMS), answer=answer))
    return rng.choice(NEWLINES).join(parts)


def _json_document(rng: random.Random) -> str:
    record = {
        "question": _fill(rng, rng.choice(QUESTIONS)),
        "answer": rng.choice(COLORS),
        "bbox": [rng.randrange(1024) for _ in range(4)],
        "score": round(rng.random(), 3),
        "image_size": [rng.randrange(28, 4096), rng.randrange(28, 4096)],
    }
    return json.dumps(record, indent=rng.choice((None, 2, 4)))


def _yaml_document(rng: random.Random) -> str:
    lines = [f"name: {rng.choice(('zoom', 'crop_image', 'select_frames'))}"]
    lines.append(f"keypoint: [{rng.randrange(2048)}, {rng.randrange(2048)}]")
    lines.append(f"size: {rng.randrange(100, 800)}")
    lines.append("items:")
    lines.extend(f"  - {rng.choice(OBJECTS)}: {_number(rng)}" for _ in range(rng.randrange(1, 4)))
    return "\n".join(lines)


def _numbers_document(rng: random.Random) -> str:
    separators = (", ", " ", "; ", "\n", " + ", " * ", " = ", "/", ":")
    return rng.choice(separators).join(_number(rng) for _ in range(rng.randrange(3, 12)))


def _system_document(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(SYSTEM_PROMPTS)
    schemas = "\n".join(json.dumps(schema) for schema in TOOL_SCHEMAS)
    return rng.choice(SYSTEM_PROMPTS[1:]) + "\n\n" + TOOLS_PREAMBLE + schemas + TOOLS_POSTAMBLE


def _prose_document(rng: random.Random) -> str:
    """Sentences of common English words, with capitals and punctuation."""
    sentences = []
    for _ in range(rng.randrange(1, 5)):
        words = [rng.choice(COMMON_WORDS) for _ in range(rng.randrange(3, 16))]
        words[0] = words[0].capitalize()
        sentences.append(" ".join(words) + rng.choice((".", "?", "!", ":", ";", ",", "...")))
    return " ".join(sentences)


def _question_document(rng: random.Random) -> str:
    return _fill(rng, rng.choice(QUESTIONS)) + rng.choice(NEWLINES) + _trajectory(rng)


DOCUMENT_KINDS = (
    _question_document, _question_document, _trajectory, _prose_document, _prose_document,
    _json_document, _yaml_document, _numbers_document, _system_document,
)


def corpus(seed: int = CORPUS_SEED, documents: int = CORPUS_DOCUMENTS) -> Iterator[str]:
    """The deterministic training corpus: `documents` texts drawn from a RNG seeded with `seed`."""
    rng = random.Random(seed)
    for _ in range(documents):
        yield rng.choice(DOCUMENT_KINDS)(rng)


# ---------------------------------------------------------------------------------------------
# Tokenizer and files.
# ---------------------------------------------------------------------------------------------

def train_tokenizer() -> Tokenizer:
    """Qwen2's byte-level BPE pipeline trained on `corpus()`, with the added tokens appended."""
    tokenizer = Tokenizer(models.BPE())  # no unknown token: every byte is in the alphabet
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(**BYTE_LEVEL_OPTIONS),
    ])
    tokenizer.post_processor = processors.ByteLevel(**BYTE_LEVEL_OPTIONS)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOTAL_VOCAB_SIZE - len(ADDED_TOKENS),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    tokenizer.add_tokens([
        AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False,
                   single_word=False)
        for content, special in ADDED_TOKENS
    ])
    return tokenizer


def tokenizer_config(tokenizer: Tokenizer) -> dict:
    """`tokenizer_config.json` in the layout of Qwen2.5-VL's, for `AutoTokenizer`."""
    added_tokens_decoder = {
        str(tokenizer.token_to_id(content)): {
            "content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": special,
        }
        for content, special in ADDED_TOKENS
    }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder,
        "additional_special_tokens": [
            content for content, special in ADDED_TOKENS if special and content != "<|endoftext|>"
        ],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def build_tokenizer_files(out_dir: pathlib.Path) -> Tokenizer:
    """Trains the tokenizer and writes `tokenizer.json` and `tokenizer_config.json` to `out_dir`."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    (out_dir / "tokenizer.json").write_text(tokenizer.to_str(pretty=True) + "\n", encoding="utf-8")
    config_text = json.dumps(tokenizer_config(tokenizer), indent=2, ensure_ascii=False)
    (out_dir / "tokenizer_config.json").write_text(config_text + "\n", encoding="utf-8")
    return tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out_dir", type=pathlib.Path, default=DEFAULT_OUT_DIR)
    out_dir = parser.parse_args().out_dir
    tokenizer = build_tokenizer_files(out_dir)
    print(f"wrote a tokenizer of {tokenizer.get_vocab_size()} tokens to {out_dir}")


if __name__ == "__main__":
    main()
