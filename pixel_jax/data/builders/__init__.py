"""TFDS builders (array_record, no TensorFlow) of the datasets pixel_jax reads, by name.

    from pixel_jax.data import builders
    records = builders.load_source("hr_bench/8k", "test", data_dir=..., manual_dir=...)
    example = pixel_jax.data.example.from_record(records[0])

`BUILDERS` maps names to builder classes: vstar_bench, hr_bench (configs 4k, 8k), textvqa,
infographics_vqa, tallyqa, mvbench, pixel_reasoner_rl, pixel_reasoner_sft. Each class docstring
says where to get the files and how to lay them out in `manual_dir`.
"""

from pixel_jax.data.builders import (hr_bench, infovqa, mvbench, pixel_reasoner, tallyqa,
                                     textvqa, vstar)
from pixel_jax.data.builders.common import BUILDERS, load_source

__all__ = ["BUILDERS", "load_source", "hr_bench", "infovqa", "mvbench", "pixel_reasoner",
           "tallyqa", "textvqa", "vstar"]
