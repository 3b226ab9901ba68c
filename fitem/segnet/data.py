"""Training data for the segmentation net, re-derived from a ``fitem annotate`` output folder.

For every ``done`` record of the manifest the input image is re-read and cut to
the fit's aligned crop with the saved ``transform`` (``params.json``); the fit's
visible-face mask (``mask.png``, input resolution) is warped to the same crop
(bilinear, thresholded at 0.5), and so is its face region (``mask.png |
occlusion.png``). ``valid`` marks crop pixels that hold image data (faces near
the border are padded); only those count in the loss. For 6-channel nets the
*initial* render of the fit (mean colour, ambient light, pose and shape from the
landmarks: what :func:`fitem.fit` renders before its first E-step) is
re-derived from the saved landmarks and the annotation's model.

Everything is held in memory as ``uint8`` (500 crops of 224² ≈ 75 MB, twice
that with renders).

Example:
    >>> crops = load_crops("annotations/", in_channels=3)      # doctest: +SKIP
    >>> crops.images.shape, crops.masks.shape                   # doctest: +SKIP
    ((500, 224, 224, 3), (500, 224, 224))
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fitem._files import read_mask_png
from fitem.errors import ConfigError, FitemError, InvalidInputError

__all__ = ["AnnotationCrops", "read_annotation", "done_records", "load_crops", "load_fit_crop"]

log = logging.getLogger(__name__)


def read_annotation(annotation_dir: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``(run, records)`` of an annotation folder: ``run.json`` and the manifest's last record per key.

    The one place the segnet reads the annotation contract (through
    :func:`fitem.annotation.manifest.read_run` / :func:`~fitem.annotation.manifest.read_manifest`).

    Raises:
        fitem.errors.InvalidInputError: not an annotation folder (no ``run.json`` / ``manifest.jsonl``).
    """
    from fitem.annotation.manifest import MANIFEST_FILE, RUN_FILE, read_manifest, read_run

    d = Path(annotation_dir)
    if not (d / RUN_FILE).is_file() or not (d / MANIFEST_FILE).is_file():
        raise InvalidInputError(f"{d} is not a fitem annotation folder (it needs {RUN_FILE} and {MANIFEST_FILE}); "
                                "create one with `fitem annotate IMAGES --out DIR`")
    return read_run(d), read_manifest(d)


def done_records(records: dict[str, dict[str, Any]], keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The ``done`` records (optionally only ``keys``), sorted by key."""
    sel = sorted(k for k, r in records.items() if r.get("status") == "done")
    if keys is not None:
        wanted = set(keys)
        sel = [k for k in sel if k in wanted]
    return [records[k] for k in sel]


@dataclass
class AnnotationCrops:
    """Aligned crops of an annotation folder, in memory.

    Attributes:
        keys: manifest keys, one per crop.
        inputs: the input image path of each crop.
        images: ``(N, S, S, 3)`` uint8 crops of the input images.
        masks: ``(N, S, S)`` bool, the fits' visible face warped to the crop.
        regions: ``(N, S, S)`` bool, the fits' face region warped to the crop.
        valid: ``(N, S, S)`` bool, crop pixels that hold image data.
        renders: ``(N, S, S, 3)`` uint8 initial renders (6-channel data only), else None.
        crop_size: ``S``.
        run: the annotation's ``run.json``.
        skipped: ``{key: reason}`` of done records that could not be read.
    """

    keys: list[str]
    inputs: list[str]
    images: np.ndarray
    masks: np.ndarray
    regions: np.ndarray
    valid: np.ndarray
    renders: np.ndarray | None
    crop_size: int
    run: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, index: Sequence[int] | np.ndarray) -> "AnnotationCrops":
        idx = np.asarray(index, dtype=np.int64)
        return AnnotationCrops(
            [self.keys[i] for i in idx], [self.inputs[i] for i in idx], self.images[idx], self.masks[idx],
            self.regions[idx], self.valid[idx], None if self.renders is None else self.renders[idx],
            self.crop_size, self.run, dict(self.skipped))


class _RenderMaker:
    """Initial renders for 6-channel data: one model, camera and rasterizer per crop size."""

    def __init__(self, run: dict[str, Any]) -> None:
        from fitem.models import load_model

        self.model_name = run.get("model", "demo")
        self.base = load_model(self.model_name)
        want = run.get("model_checksum")
        if want and self.base.checksum != want:
            raise ConfigError(f"the annotation was made with model checksum {want} but {self.model_name!r} now "
                              f"loads with checksum {self.base.checksum}; use the same model file")
        self._cache: dict[tuple, Any] = {}

    def __call__(self, lm_crop: np.ndarray, config: dict[str, Any]) -> np.ndarray:
        from fitem.segnet.infer import initial_render

        return initial_render(self.base, lm_crop, _fit_config(config), cache=self._cache)


def _fit_config(d: dict[str, Any]):
    from dataclasses import fields

    from fitem.config import FitConfig

    names = {f.name for f in fields(FitConfig)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
    try:
        return FitConfig(**kw)
    except (TypeError, FitemError) as exc:
        raise ConfigError(f"the annotation's fit config cannot be rebuilt by this fitem ({exc})") from exc


def load_fit_crop(annotation_dir: str | Path, record: dict[str, Any], *, renders: "_RenderMaker | None" = None
                  ) -> dict[str, Any]:
    """One record's crop: ``{"image", "mask", "region", "valid", "render", "size"}`` (module docstring).

    Raises:
        fitem.errors.InvalidInputError: the input image or a result file is missing or unreadable.
    """
    from fitem.image import load_image, to_uint8
    from fitem.landmarks.align import AlignTransform

    res_dir = Path(annotation_dir) / record["result"]
    pj = res_dir / "params.json"
    if not pj.is_file():
        raise InvalidInputError(f"{res_dir} has no params.json (an incomplete result folder)")
    meta = json.loads(pj.read_text())
    if meta.get("transform") is None:
        raise InvalidInputError(f"{pj} holds no crop transform")
    size = int(meta["config"]["size"])
    hw = tuple(int(v) for v in meta["image_size"])
    T = AlignTransform(np.asarray(meta["transform"], np.float64), size, hw)
    image = load_image(record["input"])
    if image.shape[:2] != hw:
        raise InvalidInputError(f"{record['input']} is {image.shape[1]}x{image.shape[0]} pixels but was annotated "
                                f"at {hw[1]}x{hw[0]}; the input changed since annotation")
    mask = read_mask_png(res_dir / "mask.png")
    occl = read_mask_png(res_dir / "occlusion.png")
    if mask.shape != hw or occl.shape != hw:
        raise InvalidInputError(f"{res_dir}: masks are not at the input's resolution {hw}")
    out = {
        "image": to_uint8(T.warp_image(image)),
        "mask": T.warp_image(mask.astype(np.float32)) >= 0.5,
        "region": T.warp_image((mask | occl).astype(np.float32)) >= 0.5,
        "valid": T.valid_mask(hw),
        "render": None,
        "size": size,
    }
    if renders is not None:
        lm_crop = T.to_crop(np.asarray(meta["landmarks"], np.float64))
        out["render"] = to_uint8(renders(lm_crop, meta["config"]))
    return out


def load_crops(annotation_dir: str | Path, *, in_channels: int = 3, keys: Sequence[str] | None = None,
               progress: bool = False) -> AnnotationCrops:
    """All ``done`` crops of an annotation folder (see the module docstring).

    Args:
        annotation_dir: a ``fitem annotate`` output folder.
        in_channels: 3 (images) or 6 (images + initial renders).
        keys: only these manifest keys (default all ``done`` ones).
        progress: show a tqdm bar.

    Raises:
        fitem.errors.InvalidInputError: not an annotation folder, or no usable ``done`` record.
        fitem.errors.ConfigError: bad ``in_channels``; results of different crop sizes.

    Example:
        >>> crops = load_crops("annotations/")          # doctest: +SKIP
    """
    if in_channels not in (3, 6):
        raise ConfigError(f"in_channels must be 3 or 6, got {in_channels!r}")
    d = Path(annotation_dir)
    run, records = read_annotation(d)
    done = done_records(records, keys)
    if not done:
        counts: dict[str, int] = {}
        for r in records.values():
            counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
        what = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no records"
        sel = f" among the {len(keys)} requested keys" if keys is not None else ""
        raise InvalidInputError(f"{d} has no 'done' images to learn from{sel} ({what}); annotate images first "
                                "(`fitem annotate`) or check why they failed in manifest.jsonl")
    maker = _RenderMaker(run) if in_channels == 6 else None
    items, skipped = [], {}
    it = done
    if progress:
        from tqdm import tqdm

        it = tqdm(done, desc="reading crops", unit="img")
    for rec in it:
        try:
            items.append((rec, load_fit_crop(d, rec, renders=maker)))
        except (FitemError, OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
            skipped[rec["key"]] = f"{type(exc).__name__}: {exc}"
            log.warning("skipping %s: %s", rec["key"], exc)
    if not items:
        raise InvalidInputError(f"none of the {len(done)} done images of {d} could be read (first problem: "
                                f"{next(iter(skipped.values()))}); check that the input images still exist")
    sizes = {c["size"] for _, c in items}
    if len(sizes) > 1:
        raise ConfigError(f"{d} mixes crop sizes {sorted(sizes)}; distil from one annotation configuration")
    size = sizes.pop()
    return AnnotationCrops(
        keys=[r["key"] for r, _ in items],
        inputs=[r["input"] for r, _ in items],
        images=np.stack([c["image"] for _, c in items]),
        masks=np.stack([c["mask"] for _, c in items]),
        regions=np.stack([c["region"] for _, c in items]),
        valid=np.stack([c["valid"] for _, c in items]),
        renders=np.stack([c["render"] for _, c in items]) if in_channels == 6 else None,
        crop_size=size,
        run=run,
        skipped=skipped,
    )
