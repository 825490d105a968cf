"""The rollout gallery: what the model looked at, where it zoomed, what it wrote and what it earned.

    entries = [gallery_entry(trajectory, row, tables, original=..., view_wh=..., question=..., answer=...,
                             text=..., reward_parts=...) for row in rows]
    write_gallery(workdir / GALLERY_DIR, step, entries)   # <dir>/step_0000100/index.html + PNGs, <dir>/index.html

Each rollout shows the original picture with the region of every successful zoom drawn on it (one
colour per call, numbered), the images the calls showed (crops or frames, full size), one line per
call (arguments and outcome), the decoded response and the reward parts.

Zoom regions are in original-image pixels. A call's box (`Trajectory.call_boxes`) is in the frame
of the image it targets — the input view, or an earlier crop — so `zoom_regions` replays the
engine's bookkeeping on the host with the same functions (`tools.crop`): the box is mapped to the
original through its target's region (`to_original_box`) and grown to the crop grid's aspect
(`fit_box_to_grid`), which is exactly the region the new image shows.
"""

from __future__ import annotations

import dataclasses
import html
import pathlib
from typing import Mapping, Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw

from pixel_jax.rollout.inputs import question_text
from pixel_jax.rollout.tool_step import ToolTables
from pixel_jax.tools import crop as crop_ops
from pixel_jax.tools.errors import ToolError
from pixel_jax.tools.protocols import ToolId

GALLERY_DIR = "gallery"  # under a run's work directory
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))
_STYLE = """body{font-family:sans-serif;margin:1.5em}section{border-top:1px solid #ccc;padding:1em 0}
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}img{max-width:100%;border:1px solid #888}
pre{white-space:pre-wrap;background:#f4f4f4;padding:.8em}td,th{padding:.1em .8em;text-align:left}"""


@dataclasses.dataclass(frozen=True)
class GalleryEntry:
    """One rollout, ready to show."""

    question: str
    answer: str  # the gold answer(s)
    image: np.ndarray  # [H, W, 3] uint8 the original picture (full resolution, unpadded)
    boxes: tuple[np.ndarray | None, ...]  # per call: [4] (x1, y1, x2, y2) region shown, original px; None: none
    calls: tuple[str, ...]  # per call: what it asked and its outcome
    shown: tuple[np.ndarray, ...]  # [h, w, 3] uint8 images shown after the calls (images 2, 3, … of the rollout)
    text: str  # the decoded response
    reward_parts: Mapping[str, float]  # e.g. task_reward, bonus, penalty, reward, rapr, n_vo


# ------------------------------------------------------------------------ from a rollout
def _row(trajectory, row: int) -> dict[str, np.ndarray]:
    names = ("n_calls", "call_errors", "call_boxes", "call_targets", "crops", "n_crops")
    return {name: np.asarray(getattr(trajectory, name)[row]) for name in names}


def zoom_regions(trajectory, row: int, tables: ToolTables, original_wh: Sequence[float],
                 view_wh: Sequence[float]) -> list[np.ndarray | None]:
    """Per call of `row`: the region of the original its new image shows ([4] float32, original
    pixels), None for a failed call. Images are numbered as the model sees them: 1 = the input
    (the whole original, shown at `view_wh`), then one per successful call (shown at the crop grid).
    """
    if tables.tool == ToolId.SELECT_FRAMES:
        raise ValueError("zoom_regions: a select_frames rollout has no zoom regions")
    record = _row(trajectory, row)
    sources = [np.array([0.0, 0.0, *original_wh], np.float32)]  # region of each image shown, original px
    frames = [np.asarray(view_wh, np.float32)]  # (W, H) each was shown at: the frame of its boxes
    regions = []
    for call in range(int(record["n_calls"])):
        if record["call_errors"][call] != ToolError.OK:
            regions.append(None)
            continue
        target = int(record["call_targets"][call]) if tables.tool == ToolId.CROP_IMAGE else 1  # zoom: the input
        box = crop_ops.to_original_box(record["call_boxes"][call], sources[target - 1], frames[target - 1])
        region = np.asarray(crop_ops.fit_box_to_grid(box, original_wh, tables.image_hw), np.float32)
        sources.append(region)
        frames.append(np.array(tables.image_hw[::-1], np.float32))
        regions.append(region)
    return regions


def _describe_calls(record: Mapping[str, np.ndarray], call_frames: np.ndarray | None, tables: ToolTables,
                    regions: Sequence[np.ndarray | None]) -> list[str]:
    """One line per call: its request and outcome (the images it showed, numbered as the model saw them)."""
    lines, image = [], 1
    for call, region in enumerate(regions):
        error = ToolError(int(record["call_errors"][call]))
        if error == ToolError.MALFORMED_CALL:  # nothing was parsed: no arguments to show
            lines.append(f"{tables.tool.name.lower()}(?) → failed: {error.name}")
            continue
        if tables.tool == ToolId.SELECT_FRAMES:
            asked = [int(f) for f in call_frames[call] if f > 0]
            request, shown = f"select_frames({asked})", len(asked)
        else:
            box = ", ".join(f"{v:.0f}" for v in record["call_boxes"][call])
            target = f", target_image={record['call_targets'][call]}" if tables.tool == ToolId.CROP_IMAGE else ""
            request, shown = f"{tables.tool.name.lower()}(box=[{box}]{target})", 1
        if error != ToolError.OK:
            lines.append(f"{request} → failed: {error.name}")
            continue
        images = ", ".join(str(image + k) for k in range(1, shown + 1))
        where = "" if region is None else f", region [{', '.join(f'{v:.0f}' for v in region)}] of the original"
        lines.append(f"{request} → image {images}{where}")
        image += shown
    return lines


def gallery_entry(trajectory, row: int, tables: ToolTables, *, original: np.ndarray, view_wh: Sequence[int],
                  question: str, answer: str, text: str, reward_parts: Mapping[str, float]) -> GalleryEntry:
    """Row `row` of a rollout (`Trajectory`; any object with its fields) for the gallery.

    original: [H, W, 3] uint8 the picture the rollout cropped from, unpadded (`Batch.original[b, 0,
    :h, :w]` with (h, w) = `Batch.original_size[b]`; a video: its first frame); view_wh: the (W, H)
    the model saw it at; text: the decoded response; reward_parts: the row's reward and its parts.
    """
    original, record = np.asarray(original), _row(trajectory, row)
    if tables.tool == ToolId.SELECT_FRAMES:
        regions, call_frames = [None] * int(record["n_calls"]), np.asarray(trajectory.call_frames[row])
    else:
        regions = zoom_regions(trajectory, row, tables, (original.shape[1], original.shape[0]), view_wh)
        call_frames = None
    return GalleryEntry(
        question=question, answer=answer, image=original, boxes=tuple(regions),
        calls=tuple(_describe_calls(record, call_frames, tables, regions)),
        shown=tuple(record["crops"][: int(record["n_crops"])]), text=text,
        reward_parts={name: float(value) for name, value in reward_parts.items()})


def batch_entries(trajectory, batch, scores, tables: ToolTables, *, group_size: int = 1,
                  rows: Sequence[int] = (0,), extra: Mapping[str, np.ndarray] | None = None) -> list[GalleryEntry]:
    """Gallery entries of rows of a rollout of a pipeline `batch` (`data.pipeline.Batch`), row b
    answering prompt b // group_size; `scores`: the rows' `rl.scoring.Scores`; `extra`: more [B]
    reward parts to show (e.g. the shaped reward, bonus and penalty)."""
    entries = []
    for row in rows:
        prompt = row // group_size
        height, width = (int(side) for side in batch.original_size[prompt])
        example = batch.examples[prompt]
        view_hw = batch.view.shape[2:4]
        parts = {**scores.row_parts(row), **{name: float(values[row]) for name, values in (extra or {}).items()}}
        entries.append(gallery_entry(
            trajectory, row, tables, original=batch.original[prompt, 0, :height, :width],
            view_wh=(view_hw[1], view_hw[0]), question=question_text(example), answer=" | ".join(example.answers),
            text=scores.response_text(row), reward_parts=parts))
    return entries


# ---------------------------------------------------------------------------- rendering
def draw_boxes(image: np.ndarray, boxes: Sequence[np.ndarray | None], max_side: int) -> PIL.Image.Image:
    """`image` shrunk to at most `max_side` px, with box i (original px) outlined in PALETTE[i] and
    numbered i + 1; None boxes are skipped."""
    picture = PIL.Image.fromarray(np.asarray(image, np.uint8))
    scale = min(1.0, max_side / max(picture.size))
    if scale < 1.0:
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)),
                                 PIL.Image.Resampling.BILINEAR)
    draw = PIL.ImageDraw.Draw(picture)
    width = max(2, round(min(picture.size) / 150))
    for call, box in enumerate(boxes):
        if box is None:
            continue
        x1, y1, x2, y2 = (round(v * scale) for v in box)  # pixel edges → the pixels inside them
        colour = PALETTE[call % len(PALETTE)]
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), outline=colour, width=width)
        draw.text((x1 + width + 2, y1 + width + 1), str(call + 1), fill=colour)
    return picture


def write_gallery(directory: str | pathlib.Path, step: int, entries: Sequence[GalleryEntry], *,
                  max_side: int = 768) -> pathlib.Path:
    """Writes `<directory>/step_<step>/` (index.html + one PNG per picture) and refreshes
    `<directory>/index.html`, the list of every step's page. Returns the step's page."""
    directory = pathlib.Path(directory)
    page_dir = directory / f"step_{step:07d}"
    page_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for index, entry in enumerate(entries):
        figures = [_figure(page_dir, f"rollout{index}_input.png", draw_boxes(entry.image, entry.boxes, max_side),
                           "input (image 1), zoom regions drawn")]
        for number, shown in enumerate(entry.shown, start=2):
            figures.append(_figure(page_dir, f"rollout{index}_image{number}.png", PIL.Image.fromarray(shown),
                                   f"image {number}"))
        calls = "".join(f'<li style="color:rgb{PALETTE[c % len(PALETTE)]}">{html.escape(line)}</li>'
                        for c, line in enumerate(entry.calls))
        rewards = "".join(f"<tr><th>{html.escape(name)}</th><td>{value:.4g}</td></tr>"
                          for name, value in entry.reward_parts.items())
        sections.append(
            f"<section><h2>{index + 1}. {html.escape(entry.question)}</h2>"
            f"<p>gold answer: <b>{html.escape(entry.answer)}</b></p>{''.join(figures)}"
            f"<h3>calls</h3><ol>{calls or '<li>none</li>'}</ol><h3>reward</h3><table>{rewards}</table>"
            f"<h3>response</h3><pre>{html.escape(entry.text)}</pre></section>")
    page = page_dir / "index.html"
    page.write_text(_html(f"Rollouts at step {step}", "".join(sections)))
    steps = sorted((p.name for p in directory.glob("step_*") if (p / "index.html").exists()), reverse=True)
    links = "".join(f'<li><a href="{name}/index.html">{name}</a></li>' for name in steps)
    (directory / "index.html").write_text(_html("Rollout gallery", f"<ul>{links}</ul>"))
    return page


def _figure(page_dir: pathlib.Path, name: str, picture: PIL.Image.Image, caption: str) -> str:
    picture.save(page_dir / name)
    caption = html.escape(caption)
    return f'<figure><img src="{name}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'


def _html(title: str, body: str) -> str:
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")
