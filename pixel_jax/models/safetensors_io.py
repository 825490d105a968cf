"""Lazy access to the safetensors files of a Hugging Face checkpoint folder (single or sharded)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file as _save_numpy

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclasses.dataclass(frozen=True)
class LazyTensor:
    """One tensor of a memory-mapped file; nothing is read until `read(index)`."""

    file: Path
    name: str
    shape: tuple[int, ...]

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """The block `index` of the tensor (one slice per leading axis; only that block is read)."""
        with safe_open(self.file, framework="numpy") as f:
            return f.get_slice(self.name)[index]


def open_folder(path: str | Path) -> dict[str, LazyTensor]:
    """All tensors of `path/model.safetensors` or of the files its index lists, by name."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: checkpoint folder does not exist")
    if (path / INDEX_FILE).is_file():
        try:
            weight_map = json.loads((path / INDEX_FILE).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{path / INDEX_FILE}: not a safetensors index with a 'weight_map' ({e})") from e
        files = sorted({path / name for name in weight_map.values()})
    elif (path / SINGLE_FILE).is_file():
        files = [path / SINGLE_FILE]
    else:
        raise FileNotFoundError(f"{path}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
    tensors = {}
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{file}: listed in {INDEX_FILE} but missing")
        try:
            with safe_open(file, framework="numpy") as f:
                for name in f.keys():
                    tensors[name] = LazyTensor(file, name, tuple(f.get_slice(name).get_shape()))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"{file}: not a readable safetensors file ({e})") from e
    return tensors


def save_file(tensors: dict[str, np.ndarray], file: str | Path) -> None:
    """Writes a single safetensors file with the metadata transformers expects."""
    _save_numpy(tensors, str(file), metadata={"format": "pt"})
