"""The grain pipeline: buckets and static shapes, shuffling, host sharding, exact resumption, and
both sources (the synthetic task and a TFDS data source)."""

import collections
import itertools
import json

import numpy as np
import PIL.Image
import pytest

import data_fixtures as fx
from pixel_jax.data import pipeline, synthetic
from pixel_jax.data.example import Example

TASK = synthetic.SyntheticConfig(view_sizes=((56, 56), (56, 84)), downsample_factors=(3,),
                                 num_frames=3)
VIEWS = ((28, 28), (28, 56))  # the model sees the 168-252 px canvases at 1/6


def config(**overrides) -> pipeline.PipelineConfig:
    settings = dict(batch_size=3, canvas_size=(200, 260), view_sizes=VIEWS, max_frames=4,
                    shard_index=0, shard_count=1, num_threads=2, prefetch_buffer_size=4)
    return pipeline.PipelineConfig(**{**settings, **overrides})


def source(num_examples: int = 24, split: str = "train"):
    return synthetic.SyntheticSource(TASK, split, num_examples)


def ids(batches) -> list[str]:
    return [e.id for b in batches for e, valid in zip(b.examples, b.valid) if valid]


def one_epoch(data_source, cfg) -> list:
    return list(pipeline.build_dataset(data_source, cfg))


# ------------------------------------------------------------------------------ rows and buckets


def test_view_size_is_the_closest_aspect_ratio():
    sizes = ((224, 224), (224, 448), (448, 224))
    assert pipeline.view_size(100, 100, sizes) == (224, 224)
    assert pipeline.view_size(300, 500, sizes) == (224, 448)  # log ratio -0.51: -0.69 beats 0
    assert pipeline.view_size(300, 400, sizes) == (224, 224)  # -0.29: 0 beats -0.69
    assert pipeline.view_size(900, 100, sizes) == (448, 224)


def test_row_of_an_image_keeps_the_original_on_the_canvas():
    image = fx.picture(90, 60, seed=0)  # W 90, H 60
    example = Example(id="e", question="q?", answers=("a",), answer_metric="exact_match",
                      image=image, target_boxes=((10.0, 20.0, 30.0, 40.0),))
    row = pipeline.prepare_row(example, config())
    assert row.bucket == (1, 28, 56)
    expected_view = np.asarray(PIL.Image.fromarray(image).resize((56, 28),
                                                                 PIL.Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(row.view[0], expected_view)
    np.testing.assert_array_equal(row.original[0, :60, :90], image)
    assert not row.original[0, 60:].any() and not row.original[0, :, 90:].any()
    assert (row.original_size, row.original_scale, row.num_frames) == ((60, 90), 1.0, 1)
    np.testing.assert_array_equal(row.target_box, [10, 20, 30, 40])


def test_row_of_a_picture_larger_than_the_canvas_is_shrunk_with_its_box():
    image = fx.picture(400, 100, seed=1)  # W 400 > canvas W 260: scale 0.65
    example = Example(id="big", question="q?", answers=("a",), answer_metric="exact_match",
                      image=image, target_boxes=((100.0, 20.0, 200.0, 60.0),))
    row = pipeline.prepare_row(example, config())
    assert row.original_size == (65, 260) and row.original_scale == pytest.approx(0.65)
    np.testing.assert_allclose(row.target_box, [65, 13, 130, 39], rtol=1e-6)
    shrunk = np.asarray(PIL.Image.fromarray(image).resize((260, 65), PIL.Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(row.original[0, :65], shrunk)


def test_row_of_a_video_pads_the_frame_slots():
    example = synthetic.generate(synthetic.SyntheticConfig(**{**TASK.__dict__,
                                                              "kind_weights": {"video": 1}}),
                                 "train", 0)
    row = pipeline.prepare_row(example, config())
    assert row.view.shape == (4, *pipeline.view_size(*example.frames.shape[1:3], VIEWS), 3)
    assert row.num_frames == 3 and not row.view[3].any() and not row.original[3].any()
    assert np.isfinite(row.target_box).all()
    with pytest.raises(ValueError, match="has 3 frames, more than PipelineConfig.max_frames=2"):
        pipeline.prepare_row(example, config(max_frames=2))


def test_batches_hold_one_bucket_with_static_shapes():
    batches = one_epoch(source(), config(num_epochs=1))
    shapes = collections.Counter(b.view.shape for b in batches)
    assert set(shapes) <= {(3, 1, 28, 28, 3), (3, 1, 28, 56, 3), (3, 4, 28, 28, 3),
                           (3, 4, 28, 56, 3)}
    assert len(shapes) >= 3
    for batch in batches:
        assert batch.original.shape == (3, batch.view.shape[1], 200, 260, 3)
        for example, valid, size in zip(batch.examples, batch.valid, batch.original_size):
            picture = example.image if example.image is not None else example.frames[0]
            assert tuple(size) == picture.shape[:2]
            assert pipeline.view_size(*picture.shape[:2], VIEWS) == batch.view.shape[2:4]


def test_a_finite_epoch_yields_every_example_once_and_pads_the_rest():
    batches = one_epoch(source(20), config(num_epochs=1))
    assert sorted(ids(batches)) == sorted(f"synthetic/train/{i}" for i in range(20))
    padded = [b for b in batches if not b.valid.all()]
    assert padded and all(b.valid[0] and list(b.valid) == sorted(b.valid, reverse=True)
                          for b in padded)
    assert sum(int(b.valid.sum()) for b in batches) == 20


# ------------------------------------------------------------------------------ order


def test_shuffling_is_deterministic_per_seed_and_reshuffles_each_epoch():
    def order(seed, epochs=1):
        cfg = config(batch_size=1, seed=seed, num_epochs=epochs, view_sizes=((28, 28),),
                     max_frames=3)
        return ids(pipeline.build_dataset(source(12), cfg))

    assert order(seed=5) == order(seed=5)
    assert order(seed=5) != order(seed=6)
    assert sorted(order(seed=5)) == sorted(f"synthetic/train/{i}" for i in range(12))
    two_epochs = order(seed=5, epochs=2)
    assert sorted(two_epochs[:12]) == sorted(two_epochs[12:]) and two_epochs[:12] != two_epochs[12:]


def test_unshuffled_order_is_the_source_order():
    cfg = config(batch_size=1, shuffle=False, num_epochs=1, view_sizes=((28, 28),))
    assert ids(pipeline.build_dataset(source(5), cfg)) == [f"synthetic/train/{i}"
                                                           for i in range(5)]


def test_host_shards_partition_each_epoch():
    shards = [ids(one_epoch(source(13), config(num_epochs=1, shard_index=k, shard_count=3)))
              for k in range(3)]
    assert sorted(itertools.chain(*shards)) == sorted(f"synthetic/train/{i}" for i in range(13))
    assert sorted(len(s) for s in shards) == [4, 4, 5]
    unshuffled = ids(one_epoch(source(13), config(num_epochs=1, shard_index=1, shard_count=3,
                                                   shuffle=False, batch_size=1)))
    assert sorted(unshuffled, key=lambda i: int(i.split("/")[-1])) == [
        f"synthetic/train/{i}" for i in (1, 4, 7, 10)]


# ------------------------------------------------------------------------------ resumption


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def assert_same_batches(a, b):
    assert [x.view.shape for x in a] == [y.view.shape for y in b]
    assert ids(a) == ids(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.view, y.view)
        np.testing.assert_array_equal(x.valid, y.valid)


@pytest.mark.parametrize("num_epochs, first, then", [(None, 4, 5), (1, 5, 4)])
def test_a_restored_iterator_continues_with_the_next_batch(num_epochs, first, then):
    cfg = config(num_epochs=num_epochs, seed=3)
    iterator = iter(pipeline.build_dataset(source(20), cfg))
    take(iterator, first)
    state = json.loads(json.dumps(iterator.get_state()))  # as a checkpoint stores it
    expected = take(iterator, then)
    resumed = iter(pipeline.build_dataset(source(20), cfg))
    resumed.set_state(state)
    assert_same_batches(take(resumed, then), expected)


def test_a_restored_finite_epoch_ends_where_it_would_have():
    cfg = config(num_epochs=1, seed=1)
    iterator = iter(pipeline.build_dataset(source(20), cfg))
    done = take(iterator, 3)
    state = iterator.get_state()
    rest = list(iterator)
    resumed = iter(pipeline.build_dataset(source(20), cfg))
    resumed.set_state(state)
    assert_same_batches(list(resumed), rest)
    assert sorted(ids(done + rest)) == sorted(f"synthetic/train/{i}" for i in range(20))


# ------------------------------------------------------------------------------ sources, errors


def test_tfds_source_goes_through_the_same_pipeline(tmp_path):
    fx.vstar(tmp_path / "manual", with_jsonl=True)
    records = pipeline.example_source("vstar_bench", "test", data_dir=tmp_path / "data",
                                      manual_dir=tmp_path / "manual")
    batches = one_epoch(records, config(batch_size=2, num_epochs=1, view_sizes=((28, 28),
                                                                                (28, 56))))
    examples = [e for b in batches for e, valid in zip(b.examples, b.valid) if valid]
    assert sorted(e.id for e in examples) == ["vstar_bench/direct_attributes/sa_10",
                                              "vstar_bench/direct_attributes/sa_11",
                                              "vstar_bench/relative_position/sa_12"]
    assert all(isinstance(e.question, str) and e.question.endswith("?") for e in examples)
    assert all(b.view.shape[1:] == (1, 28, 56, 3) for b in batches)  # 48x32 images: ratio 2/3
    sa_10 = next(b for b in batches if "vstar_bench/direct_attributes/sa_10" in ids([b]))
    row = ids([sa_10]).index("vstar_bench/direct_attributes/sa_10")
    np.testing.assert_array_equal(sa_10.target_box[row], [4, 6, 14, 14])


@pytest.mark.parametrize("overrides, message", [
    (dict(view_sizes=((28, 30),)), "view_sizes must be \\(H, W\\) pairs of positive multiples"),
    (dict(view_sizes=((28, 28), (56, 56))), "view_sizes must have distinct aspect ratios"),
    (dict(batch_size=0), "batch_size and max_frames must be >= 1"),
    (dict(num_epochs=0), "num_epochs must be >= 1 or None"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_source_and_shard_errors():
    with pytest.raises(ValueError, match="shard_index must be in \\[0, shard_count=2\\), got 2"):
        pipeline.build_dataset(source(4), config(shard_index=2, shard_count=2))
    with pytest.raises(ValueError, match="needs num_examples"):
        pipeline.example_source("synthetic", "train")
    with pytest.raises(ValueError, match="unknown dataset builder 'coco'"):
        pipeline.example_source("coco", "train", data_dir="unused")
