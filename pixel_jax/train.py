"""Entry point: `python -m pixel_jax.train --config=configs/{sft,grpo}.py[:args]`.

    python -m pixel_jax.train --config=configs/grpo.py         # the whole method on CPU, in minutes
    python -m pixel_jax.train --config=configs/grpo.py:model=qwen2_5_vl_7b,init=/ckpt/Qwen2.5-VL-7B-Instruct \
        --config.workdir=/runs/pr7b

`config.kind` picks the phase: "sft" (warm start, `sft.loop`) or "grpo" (`rl.loop`). A GRPO config
with `warm_start` first runs its `sft` section into `<workdir>/sft` (or finds it finished there)
and starts GRPO from that checkpoint. Everything is resumable: rerunning the command continues
each phase from its latest checkpoint. At the end the held-out reward, accuracy and RaPR of the
initial (warm-started) model and of the final one are printed side by side and written to
`<workdir>/summary.json`.
"""

from __future__ import annotations

import json
import logging

from absl import app
from etils import epath
from ml_collections import config_flags

from pixel_jax import config_validation, distributed, experiment
from pixel_jax.rl import loop as grpo_loop
from pixel_jax.sft import loop as sft_loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "an experiment config, e.g. configs/grpo.py:runlocal",
                                          lock_config=True)

_LOG = logging.getLogger("pixel_jax.train")


def summary_table(summary: dict) -> str:
    """The held-out metrics of the initial and the final model, side by side (markdown)."""
    initial, final = summary["initial"], summary["final"]
    lines = ["| held-out | initial (warm start) | final |", "|---|---|---|"]
    lines += [f"| {name} | {initial[name]:.3f} | {final[name]:.3f} |" for name in final if name in initial]
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    config = _CONFIG.value
    # -------------------------------------------------------------------- runtime
    distributed.initialize(config.distributed)
    distributed.configure_logging()
    config_validation.validate(config)
    experiment.enable_compilation_cache(config.compilation_cache_dir)

    # ---------------------------------------------------------------- warm start
    if config.kind == "sft":
        sft_loop.run(config)
        return
    init = config.model.init
    if config.warm_start:
        _LOG.info("warm start: the SFT phase in %s", config.sft.workdir)
        init = str(sft_loop.run(config.sft))
    # ---------------------------------------------------------------------- GRPO
    summary = grpo_loop.run(config, init)
    # ------------------------------------------------------------------- report
    if distributed.is_main_process():
        (epath.Path(config.workdir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"\n{summary_table(summary)}\n\nmetrics, checkpoints and the rollout gallery: {config.workdir}")


if __name__ == "__main__":
    app.run(main)
