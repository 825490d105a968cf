"""The compiled rollout on a (data, fsdp, tensor) mesh of 8 fake devices equals the single-device run."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))
from test_engine import GOOD_CALL, make_batch  # noqa: E402
from test_engine import setup  # noqa: E402,F401  (module fixture)

from pixel_jax import sharding  # noqa: E402
from pixel_jax.rollout import engine as engine_lib  # noqa: E402
from pixel_jax.rollout import sampling  # noqa: E402


def test_sharded_rollout_equals_single_device(setup):  # noqa: F811
    tok = setup["tok"]
    spec = engine_lib.RolloutSpec(max_new_tokens=60, stop_ids=(tok.special.im_end,), max_calls=1,
                                  tools=setup["tables"], first_turn=sampling.SamplingParams(0.0),
                                  later_turns=sampling.SamplingParams(0.0))
    batch = make_batch(setup, [GOOD_CALL, "It says", GOOD_CALL, "No"], free_tokens=8)
    single = engine_lib.Engine(setup["model"], spec)(setup["model"], batch, jax.random.key(0))

    mesh = sharding.make_mesh((2, 2, 2))
    rules = sharding.make_rules()
    state = nnx.state(setup["model"])
    placed = jax.device_put(state, sharding.state_shardings(nnx.eval_shape(lambda: state), mesh, rules))
    model = nnx.merge(nnx.graphdef(setup["model"]), placed)
    rows = sharding.logical_sharding(("activation_batch",), mesh, rules)
    sharded_batch = {k: jax.device_put(v, rows if v.shape[0] == 4 else sharding.replicated(mesh))
                     for k, v in batch.items()}
    out = engine_lib.Engine(model, spec, mesh=mesh, rules=rules)(model, sharded_batch, jax.random.key(0))

    assert len(out.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(single.tokens))
    np.testing.assert_array_equal(np.asarray(out.n_calls), np.asarray(single.n_calls))
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(single.logprobs), atol=1e-5)
    assert int(single.n_calls[0]) == 1 and int(single.n_crops[0]) == 1  # the inject step ran on the mesh
    # every output's rows are split over the batch axes (data × fsdp = 4 row shards): no device holds
    # all the crops
    for name in ("tokens", "loss_mask", "logprobs", "crops", "call_boxes", "finish"):
        assert getattr(out, name).sharding.shard_shape(getattr(out, name).shape)[0] == 1, name
    assert out.positions.sharding.shard_shape(out.positions.shape)[1] == 1
