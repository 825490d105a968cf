"""The packaged offline tokenizer, its build script and the `Tokenizer` wrapper."""

import importlib.util
import pathlib
import unicodedata

import pytest
import tokenizers
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from pixel_jax.processing.tokenizer import (
    PACKAGED_TOKENIZER_DIR,
    SpecialTokenIds,
    Tokenizer,
    load_tokenizer,
)

BUILD_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "build_tokenizer.py"
ASSET_FILES = ("tokenizer.json", "tokenizer_config.json")

# Qwen2.5-VL's added tokens in Qwen's order, the last 16 ids of the vocabulary.
QWEN_ADDED_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>",
)
FRAGMENTS = (
    "<|im_end|>", "<tool_call>", "</tool_call>", "\r\n", "\n\n", "  ", "2246x1582", "e\u0301",
    "\u00e9", "日本語", "🙂", "'s", "{\"bbox_2d\": [0.1, 0.2]}", "\t",
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return load_tokenizer()


def _load_build_script():
    spec = importlib.util.spec_from_file_location("build_tokenizer", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_packaged_asset_loads_through_auto_tokenizer_as_qwen2():
    hf = transformers.AutoTokenizer.from_pretrained(PACKAGED_TOKENIZER_DIR)
    assert isinstance(hf, transformers.Qwen2Tokenizer)
    assert len(hf) == 2000
    assert hf.convert_ids_to_tokens(list(range(1984, 2000))) == list(QWEN_ADDED_TOKENS)
    assert (hf.eos_token, hf.eos_token_id) == ("<|im_end|>", 1986)
    assert (hf.pad_token, hf.pad_token_id) == ("<|endoftext|>", 1984)
    assert hf.bos_token is None


def test_loaded_tokenizer_encodes_like_the_tokenizer_json_pipeline(tok):
    raw = tokenizers.Tokenizer.from_file(str(PACKAGED_TOKENIZER_DIR / "tokenizer.json"))
    text = "".join(FRAGMENTS) + " Let's zoom in: the sign reads 'STOP'.\n\n\n  done  "
    assert tok.encode(text) == raw.encode(text).ids


def test_wrapper_exposes_vocab_size_and_special_ids(tok):
    assert tok.vocab_size == 2000
    assert tok.special == SpecialTokenIds(
        im_start=1985, im_end=1986, endoftext=1984, vision_start=1993, vision_end=1994,
        image_pad=1996, video_pad=1997, tool_call_start=1998, tool_call_end=1999,
    )


def test_special_ids_are_none_where_the_vocabulary_lacks_the_token():
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "<unk>": 1}, "<unk>"))
    backend.add_special_tokens(["<|im_end|>"])
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=backend)
    special = Tokenizer(hf).special
    assert special.im_end == 2
    assert special.image_pad is None and special.tool_call_end is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=40), st.sampled_from(FRAGMENTS)), max_size=8))
def test_decode_inverts_encode_up_to_nfc(tok, pieces):
    text = "".join(pieces)
    assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFC", text)


def test_each_digit_is_one_token(tok):
    digit_ids = {digit: tok.encode(digit) for digit in "0123456789"}
    assert all(len(ids) == 1 for ids in digit_ids.values())
    assert len(set(map(tuple, digit_ids.values()))) == 10
    expected = [
        *digit_ids["2"], *digit_ids["2"], *digit_ids["4"], *digit_ids["6"], *tok.encode("x"),
        *digit_ids["1"], *digit_ids["5"], *digit_ids["8"], *digit_ids["2"],
    ]
    assert tok.encode("2246x1582") == expected
    assert all(sum(char.isdigit() for char in text) <= 1 for text in tok.token_strings())


@pytest.mark.parametrize("token", QWEN_ADDED_TOKENS)
def test_each_added_token_is_one_id_in_context(tok, token):
    token_id = tok.hf.convert_tokens_to_ids(token)
    assert tok.encode(token) == [token_id]
    ids = tok.encode(f'x"}}}}\n{token}\nabc')
    assert ids.count(token_id) == 1
    assert tok.decode(ids) == f'x"}}}}\n{token}\nabc'


def test_tool_call_tags_survive_skip_special_tokens(tok):
    text = '<|im_start|>assistant\n<tool_call>\n{"name": "crop_image"}\n</tool_call><|im_end|>'
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == (
        'assistant\n<tool_call>\n{"name": "crop_image"}\n</tool_call>'
    )


def test_token_strings_are_what_each_id_contributes_to_decoded_text(tok):
    strings = tok.token_strings()
    assert len(strings) == tok.vocab_size
    assert strings[tok.special.im_end] == "<|im_end|>"
    assert strings[tok.special.tool_call_end] == "</tool_call>"
    text = 'Here is the cropped image (Image Size: 224x168):\n{"target_image": 1}'
    assert "".join(strings[token_id] for token_id in tok.encode(text)) == text


def test_a_saved_checkpoint_folder_loads_the_same_tokenizer(tok, tmp_path):
    tok.hf.save_pretrained(tmp_path)
    reloaded = load_tokenizer(tmp_path)
    text = "".join(FRAGMENTS)
    assert reloaded.encode(text) == tok.encode(text)
    assert reloaded.special == tok.special


def test_missing_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(FileNotFoundError, match="no_such_checkpoint.*does not exist"):
        load_tokenizer(missing)


def test_folder_without_tokenizer_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path.name}.*has no tokenizer"):
        load_tokenizer(tmp_path)


def test_build_script_is_deterministic_and_matches_the_packaged_asset(tmp_path):
    build = _load_build_script().build_tokenizer_files
    build(tmp_path / "first")
    build(tmp_path / "second")
    for name in ASSET_FILES:
        built = (tmp_path / "first" / name).read_bytes()
        assert built == (tmp_path / "second" / name).read_bytes()
        assert built == (PACKAGED_TOKENIZER_DIR / name).read_bytes()
