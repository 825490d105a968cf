"""The tokenizer of a Qwen2.5-VL-style model, loaded the same way for every checkpoint.

`load_tokenizer()` reads the packaged offline tokenizer of the embedded default model
(`pixel_jax/assets/tokenizer/`, built by `scripts/build_tokenizer.py`); `load_tokenizer(folder)`
reads a local Hugging Face checkpoint's. Both go through `transformers.AutoTokenizer`, so all
downstream code has one code path.
"""

import dataclasses
import pathlib

import transformers

PACKAGED_TOKENIZER_DIR = pathlib.Path(__file__).resolve().parents[1] / "assets" / "tokenizer"

# Field of `SpecialTokenIds` -> the token's text in Qwen2.5-VL's vocabulary.
SPECIAL_TOKEN_TEXT = {
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "endoftext": "<|endoftext|>",
    "vision_start": "<|vision_start|>",
    "vision_end": "<|vision_end|>",
    "image_pad": "<|image_pad|>",
    "video_pad": "<|video_pad|>",
    "tool_call_start": "<tool_call>",
    "tool_call_end": "</tool_call>",
}


@dataclasses.dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the chat-format and vision tokens; None where the vocabulary lacks the token."""

    im_start: int | None
    im_end: int | None
    endoftext: int | None
    vision_start: int | None
    vision_end: int | None
    image_pad: int | None
    video_pad: int | None
    tool_call_start: int | None
    tool_call_end: int | None


class Tokenizer:
    """A thin wrapper around a Hugging Face tokenizer: ids of special tokens, exact round trips."""

    def __init__(self, hf_tokenizer: transformers.PreTrainedTokenizerBase):
        self.hf = hf_tokenizer
        vocab = hf_tokenizer.get_vocab()  # includes the added tokens
        self.special = SpecialTokenIds(
            **{field: vocab.get(text) for field, text in SPECIAL_TOKEN_TEXT.items()}
        )

    @property
    def vocab_size(self) -> int:
        """Size of the full vocabulary, added tokens included."""
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token text becomes its single id; no BOS/EOS is added."""
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of `ids`; `decode(encode(t))` is the NFC normal form of `t`."""
        return self.hf.decode(
            list(ids), skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
        )

    def token_strings(self) -> list[str]:
        """Decoded text of every id, alone: what that token contributes to decoded text.

        A byte-level token holding part of a multi-byte UTF-8 character decodes to U+FFFD.
        """
        return self.hf.batch_decode(
            [[token_id] for token_id in range(self.vocab_size)],
            skip_special_tokens=False,
            clean_up_tokenization_spaces=False,
        )


def _has_tokenizer_files(folder: pathlib.Path) -> bool:
    return (folder / "tokenizer.json").is_file() or all(
        (folder / name).is_file() for name in ("vocab.json", "merges.txt")
    )


def load_tokenizer(path: str | pathlib.Path | None = None) -> Tokenizer:
    """Loads the packaged offline tokenizer (`path=None`) or a local checkpoint folder's."""
    folder = PACKAGED_TOKENIZER_DIR if path is None else pathlib.Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {str(folder)!r} does not exist")
    if not _has_tokenizer_files(folder):
        raise FileNotFoundError(
            f"tokenizer folder {str(folder)!r} has no tokenizer "
            "(expected tokenizer.json, or vocab.json and merges.txt)"
        )
    return Tokenizer(transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True))
