"""Shared pieces of the SFT tests: the tiny model, the synthetic task at tiny sizes (view 112×84,
canvas 336×252, crops 84×56) and one replayed batch.

Building the hermes tool tables and compiling the replay engine dominate the cost, so both are
made once per process and shared by tests/test_synthesize.py and tests/test_sft_trainer.py.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from pixel_jax.data import pipeline
from pixel_jax.data.synthetic import SyntheticConfig
from pixel_jax.models import qwen2_5_vl as qvl
from pixel_jax.processing.tokenizer import load_tokenizer
from pixel_jax.sft import synthesize

VIEW_HW = (84, 112)
CANVAS_HW = (252, 336)  # the view × 3
CROP_HW = (56, 84)
MODEL_CONFIG = qvl.Qwen2_5_VLConfig.tiny()
TASK = SyntheticConfig(view_sizes=(VIEW_HW,), downsample_factors=(3,), kind_weights={
    "text": 2, "colour": 1, "count": 1, "background": 1, "corner": 1})  # images only
CONFIG = synthesize.SynthesisConfig(protocol="hermes", crop_hw=CROP_HW, prompt_len=520,
                                    max_new_tokens=256)
BATCH_SIZE = 8


@functools.cache
def tokenizer():
    return load_tokenizer()


def build_model() -> qvl.Qwen2_5_VL:
    """The initial tiny model, built op by op (what `plan_training` traces abstractly)."""
    return qvl.Qwen2_5_VL(MODEL_CONFIG, rngs=nnx.Rngs(0))


@functools.cache
def _initial_model() -> tuple[nnx.GraphDef, nnx.State]:
    return nnx.split(nnx.jit(build_model)())  # one compile instead of one per parameter


def new_model() -> qvl.Qwen2_5_VL:
    """A fresh copy of the initial tiny model (train steps donate the buffers they are given)."""
    graphdef, state = _initial_model()
    return nnx.merge(graphdef, jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))(state))


def batches(split: str, num_examples: int, task: SyntheticConfig = TASK) -> list[pipeline.Batch]:
    """The first examples of a split of `task` in order, as pipeline batches of BATCH_SIZE."""
    source = pipeline.example_source("synthetic", split, synthetic=task, num_examples=num_examples)
    config = pipeline.PipelineConfig(batch_size=BATCH_SIZE, canvas_size=CANVAS_HW,
                                     view_sizes=(VIEW_HW,), shuffle=False, num_epochs=1)
    return list(pipeline.build_dataset(source, config))


@functools.cache
def synthesizer() -> synthesize.Synthesizer:
    return synthesize.Synthesizer(new_model(), tokenizer(), CONFIG)


@functools.cache
def replayed():
    """(pipeline batch, SFTBatch, scripts) of the first BATCH_SIZE training examples."""
    batch = batches("train", BATCH_SIZE)[0]
    sft_batch, scripts = synthesizer()(new_model(), batch)
    return batch, sft_batch, scripts
