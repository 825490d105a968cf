"""Crop-and-resize on device (jitted, traced box) against PIL crop + BILINEAR resize.

For each (image size → output grid) it crops the same random boxes both ways and prints the time
per crop, one call at a time and batched (vmap over 8 rows, each cropping its own image with its
own box), the ratio PIL / pixel_jax (> 1: pixel_jax is faster), and the mean |Δ| in grey levels.

    python benchmarks/crop.py
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from pixel_jax.tools import crop

CASES = [  # (width, height) of the original → (out_h, out_w)
    ((2048, 1536), (448, 448)),
    ((2246, 1582), (1036, 1036)),  # a V* Bench image → a Groundlight-sized zoom
]
BATCH = 8
NUM_BOXES = 16
ROUNDS = 3


def random_boxes(rng, width, height, count):
    """Boxes from 5 % to 100 % of the image side, anywhere inside it, non-integer corners."""
    side = rng.uniform(0.05, 1.0, (count, 1)) * np.array([width, height])
    corner = rng.uniform(0, 1, (count, 2)) * (np.array([width, height]) - side)
    return np.concatenate([corner, corner + side], axis=1).astype(np.float32)  # [count, 4]


def median_seconds(run, rounds=ROUNDS):
    run()  # warm-up (compiles)
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def pil_crops(pictures, regions, out_hw):
    return [
        np.asarray(picture.crop(tuple(region)).resize(out_hw[::-1], PIL.Image.BILINEAR))
        for picture, region in zip(pictures, regions)
    ]


def benchmark(image_wh, out_hw, rng):
    width, height = image_wh
    images = rng.integers(0, 256, (BATCH, height, width, 3), dtype=np.uint8)  # [B, H, W, C]
    boxes = random_boxes(rng, width, height, NUM_BOXES)  # [N, 4]
    regions = [crop.fit_box_to_grid(box, image_wh, out_hw).tolist() for box in boxes]
    device_images = jnp.asarray(images)  # [B, H, W, C], the batched rows
    device_image_list = [jnp.asarray(image) for image in images]  # one array per row
    pictures = [PIL.Image.fromarray(image) for image in images]

    single = jax.jit(lambda image, box: crop.crop_and_resize(image, box, out_hw))
    batched = jax.jit(jax.vmap(lambda image, box: crop.crop_and_resize(image, box, out_hw)))
    row_image = [i % BATCH for i in range(NUM_BOXES)]

    def run_single():
        for i, box in enumerate(boxes):
            single(device_image_list[row_image[i]], box).block_until_ready()

    batches = boxes.reshape(NUM_BOXES // BATCH, BATCH, 4)

    def run_batched():
        for batch in batches:
            batched(device_images, batch).block_until_ready()

    def run_pil():
        pil_crops([pictures[i] for i in row_image], regions, out_hw)

    ours = np.stack([single(device_image_list[row_image[i]], box) for i, box in enumerate(boxes)])
    reference = np.stack(pil_crops([pictures[i] for i in row_image], regions, out_hw))
    mean_abs = float(np.abs(ours - reference).mean())

    per_crop_single = median_seconds(run_single) / NUM_BOXES
    per_crop_batched = median_seconds(run_batched) / NUM_BOXES
    per_crop_pil = median_seconds(run_pil) / NUM_BOXES
    label = f"{width}x{height} → {out_hw[1]}x{out_hw[0]}"
    return [
        (label, "one crop per call", per_crop_single, per_crop_pil, mean_abs),
        (label, f"vmap, batch {BATCH}", per_crop_batched, per_crop_pil, mean_abs),
    ]


def main():
    rng = np.random.default_rng(0)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, PIL {PIL.__version__}; "
          f"{NUM_BOXES} random boxes, median of {ROUNDS} rounds")
    header = (
        f"{'image → grid':<24}{'mode':<20}{'pixel_jax ms':>14}{'PIL ms':>10}{'PIL/ours':>10}"
        f"{'mean|Δ|':>10}"
    )
    print(header)
    print("-" * len(header))
    for image_wh, out_hw in CASES:
        for label, mode, ours, pil, mean_abs in benchmark(image_wh, out_hw, rng):
            print(f"{label:<24}{mode:<20}{ours * 1e3:>14.2f}{pil * 1e3:>10.2f}{pil / ours:>10.2f}"
                  f"{mean_abs:>10.3f}")
    print("times are per crop; mean |Δ| in grey levels (0..255) against PIL's uint8 output")


if __name__ == "__main__":
    main()
