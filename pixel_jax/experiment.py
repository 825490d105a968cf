"""What a run builds from its config (configs/*.py): placement, model, tokenizer, tools, engine, data.

Shared by the entry points (`pixel_jax.train` for sft and grpo, `pixel_jax.evaluate`) so that
every phase reads a config section the same way:

    run = Experiment.from_config(config)             # mesh, rules, tokenizer, protocol, tool tables
    model = run.load_model(config.model.init)         # random (tiny), a HF folder or a checkpoint
    engine = run.engine(model, config.rollout)        # the compiled multi-turn rollout
    batches = run.batches(config.data)                # a resumable grain iterator of pipeline Batches
    inputs = run.rollout_inputs(batch, config.rollout) # the engine's inputs, placed row-sharded
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import grain
import jax
import jax.numpy as jnp
import ml_collections
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from pixel_jax import checkpoint, config_validation, distributed, sharding
from pixel_jax.data import pipeline
from pixel_jax.models import qwen2_5_vl as qvl
from pixel_jax.processing.tokenizer import Tokenizer, load_tokenizer
from pixel_jax.rollout import engine as engine_lib
from pixel_jax.rollout import inputs as rollout_inputs_lib
from pixel_jax.rollout.tool_step import ToolTables
from pixel_jax.rollout.trajectory import Trajectory, place_batch
from pixel_jax.tools.protocols import PROTOCOLS, ToolProtocol

_ENGINES: dict[tuple, engine_lib.Engine] = {}  # see Experiment.engine


def enable_compilation_cache(directory: str) -> None:
    """Keeps compiled XLA programs in `directory` (`config.compilation_cache_dir`; "" = off), so that a
    rerun, a resumed run or another run of the same shapes skips compiling them."""
    if directory:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The pieces every phase of a run shares (see the module docstring)."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    rules: sharding.Rules
    model_config: qvl.Qwen2_5_VLConfig
    tok: Tokenizer
    protocol: ToolProtocol
    tables: ToolTables

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "Experiment":
        """Placement (`mesh`, `sharding_rules`), the architecture, the tokenizer (the init folder's
        when it has one, else the packaged one) and the zoom tool tables of `config.tools`."""
        mesh = sharding.make_mesh(config.mesh.to_dict())
        rules = sharding.make_rules(config.sharding_rules.to_dict())
        model_config = config_validation.model_config(config.model)
        init = epath.Path(config.model.init) if config.model.init else None
        tok = load_tokenizer(init if init is not None and (init / "tokenizer.json").is_file() else None)
        protocol = PROTOCOLS.get(config.protocol)
        rollout = config.rollout if "rollout" in config else config.sft.rollout
        tables = ToolTables.build(protocol, tok, model_config, max_calls=rollout.max_calls,
                                  crop_hw=tuple(config.tools.crop_hw), window=config.tools.parser_window)
        return cls(config, mesh, rules, model_config, tok, protocol, tables)

    # ------------------------------------------------------------------------- model
    def create_model_fn(self) -> Callable[[], qvl.Qwen2_5_VL]:
        """Builds the model with random weights from `config.seed` (what plans trace abstractly)."""
        model_config, seed = self.model_config, self.config.seed
        return lambda: qvl.Qwen2_5_VL(model_config, rngs=nnx.Rngs(seed))

    def load_model(self, init: str) -> qvl.Qwen2_5_VL:
        """The model with its parameters on their shardings: random ("" ), a Hugging Face folder
        (config.json), or the `params` of a pixel_jax checkpoint (a run's work directory, e.g. the
        SFT phase of a GRPO run)."""
        if not init:
            return sharding.create_sharded(self.create_model_fn(), self.mesh, self.rules)
        folder = epath.Path(init)
        if (folder / "config.json").is_file():
            return qvl.from_pretrained(folder, dtype=jnp.dtype(self.model_config.param_dtype), mesh=self.mesh,
                                       sharding_rules=self.rules,
                                       compute_dtype=jnp.dtype(self.model_config.dtype), remat=self.model_config.remat)
        graphdef, abstract = sharding.abstract_sharded(self.create_model_fn(), self.mesh, self.rules)
        return nnx.merge(graphdef, checkpoint.restore_params(folder, abstract))

    # ----------------------------------------------------------------------- rollout
    def rollout_spec(self, rollout: ml_collections.ConfigDict) -> engine_lib.RolloutSpec:
        """The static settings of a `config.rollout` section: budgets, stop tokens, sampling, tools."""
        first_turn, later_turns = config_validation.sampling_params(rollout)
        special = self.tok.special
        return engine_lib.RolloutSpec(max_new_tokens=rollout.max_new_tokens,
                                      stop_ids=(special.im_end, special.endoftext), first_turn=first_turn,
                                      later_turns=later_turns, max_calls=rollout.max_calls, tools=self.tables,
                                      max_images=rollout.max_images)

    def engine(self, model: qvl.Qwen2_5_VL, rollout: ml_collections.ConfigDict) -> engine_lib.Engine:
        """The compiled rollout of a `config.rollout` section. Engines are shared by every phase of
        the process with the same architecture, placement, protocol, tools and section (a GRPO
        run's evaluation reuses its SFT phase's program instead of compiling it again)."""
        key = (self.model_config, tuple(self.mesh.devices.flat), self.mesh.axis_names,
               tuple(sorted(self.rules.items())), self.protocol.name, json.dumps(self.config.tools.to_dict()),
               json.dumps(rollout.to_dict(), sort_keys=True))
        if key not in _ENGINES:
            _ENGINES[key] = engine_lib.Engine(model, self.rollout_spec(rollout), mesh=self.mesh, rules=self.rules)
        return _ENGINES[key]

    def rollout_inputs(self, batch: pipeline.Batch, rollout: ml_collections.ConfigDict) -> dict[str, jax.Array]:
        """The engine's inputs for `batch` (the whole global batch, which every process reads), rows
        placed over the batch mesh axes."""
        return self.place_batch(rollout_inputs_lib.rollout_inputs(batch, self.protocol, self.tok,
                                                                  rollout.max_prompt_len))

    def place_batch(self, tree):
        """`trajectory.place_batch` on this run's mesh and rules."""
        return place_batch(tree, self.mesh, self.rules)

    @staticmethod
    def host_trajectory(trajectory: Trajectory) -> Trajectory:
        """A rollout's trajectory whole, as numpy, on every process."""
        return distributed.gather_to_hosts(trajectory)

    # -------------------------------------------------------------------------- data
    def source(self, data: ml_collections.ConfigDict):
        """Random access to the Examples of a `data` section's split."""
        synthetic = config_validation.synthetic_config(data) if data.source == "synthetic" else None
        return pipeline.example_source(data.source, data.split, data_dir=self.config.data_dir or None,
                                       manual_dir=data.manual_dir or None, synthetic=synthetic,
                                       num_examples=data.num_examples)

    def batches(self, data: ml_collections.ConfigDict, *, num_examples: int = 0,
                single_pass: bool = False) -> grain.DatasetIterator:
        """A checkpointable iterator of the section's pipeline Batches — global batches: every
        process reads the same ones (their host-side work, scoring and dynamic sampling, is
        replicated; each device receives only its rows), so every process runs the same programs
        on the same shapes whatever the buckets;
        `num_examples` > 0 reads only the first that many examples of the split (a subset);
        `single_pass` reads them once, whatever the section's `num_epochs`."""
        source = self.source(data)
        if num_examples:
            source = grain.MapDataset.source(source)[: min(num_examples, len(source))]
        config = dataclasses.replace(config_validation.pipeline_config(data), shard_index=0, shard_count=1)
        if single_pass:
            config = dataclasses.replace(config, num_epochs=1)
        return iter(pipeline.build_dataset(source, config))
