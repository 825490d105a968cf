"""Scores a model on a benchmark through the rollout engine (configs/eval.py).

    python -m pixel_jax.evaluate --config=configs/eval.py                       # tiny random model, synthetic
    python -m pixel_jax.evaluate --config=configs/eval.py:init=runs/grpo_synthetic_tiny
    python -m pixel_jax.evaluate --config=configs/eval.py:model=qwen2_5_vl_7b,init=/ckpt/run,data=vstar \
        --config.data_dir=/data/tfds

Writes `<workdir>/report.json` (metrics and one record per example), `<workdir>/report.md` and a
gallery of the first rollouts (`<workdir>/gallery/`), and prints the metrics table.
"""

import pathlib

import jax
from absl import app
from ml_collections import config_flags

from pixel_jax import config_validation, distributed
from pixel_jax.eval.benchmarks import Evaluator
from pixel_jax.experiment import Experiment, enable_compilation_cache
from pixel_jax.gallery import GALLERY_DIR, write_gallery

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/eval.py[:arg]", lock_config=True)
GALLERY_ROWS = 4  # rollouts of the first batch shown in the gallery


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value

    # ---------------------------------------------------------------- runtime and config
    distributed.initialize(config.distributed)
    distributed.configure_logging()
    config_validation.validate(config)
    enable_compilation_cache(config.compilation_cache_dir)

    # ------------------------------------------------------------------------------ model
    run = Experiment.from_config(config)
    model = run.load_model(config.model.init)

    # ------------------------------------------------------------------------- evaluation
    evaluator = Evaluator(run, model, config.rollout, config.reward.weights.to_dict())
    report = evaluator(model, run.batches(config.data, num_examples=config.num_examples),
                       rng=jax.random.key(config.seed))

    # ----------------------------------------------------------------------------- report
    if distributed.is_main_process():
        workdir = pathlib.Path(config.workdir)
        report.write(workdir)
        write_gallery(workdir / GALLERY_DIR, 0, report.gallery_entries(GALLERY_ROWS))
        print(report.table())


if __name__ == "__main__":
    app.run(main)
