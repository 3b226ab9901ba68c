"""``FitResult``: everything a fit produced, with ``save`` / ``load``."""
from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fitem._files import atomic_write_bytes, png_bytes
from fitem.errors import InvalidInputError
from fitem.params import FaceParams

__all__ = ["FitStatus", "FitResult", "RoundRecord"]

RESULT_FORMAT = 1


class FitStatus(str, enum.Enum):
    """How a fit ended."""

    SUCCESS = "success"  #: converged or ran its rounds
    FAILED = "failed"  #: diverged (non-finite values) or lost the face; ``message`` says why


@dataclass
class RoundRecord:
    """One EM round: the M-step's solve and the E-step that followed."""

    round: int
    free: list[str]
    iterations: int
    solver_status: str
    cost_history: list[float]
    mask_fraction: float  #: visible-face fraction of the face region after the E-step
    mask_change: float  #: fraction of the region whose label changed
    sigma: float
    landmark_weight: float
    landmark_error_px: float  #: median landmark reprojection error (crop pixels)
    photometric_rmse: float  #: RMSE over the visible face (crop)
    seconds: float


@dataclass
class FitResult:
    """The result of :func:`fitem.fit`.

    Image-shaped arrays are at the INPUT image's resolution; the fit itself ran
    on an aligned crop (``crop_*`` fields, ``transform``).

    Attributes:
        status, message: how the fit ended (:class:`FitStatus`).
        params: :class:`~fitem.params.FaceParams` (named blocks) in the crop camera.
        vertices: ``(N, 3)`` mm, camera space of the crop camera.
        triangles: ``(T, 3)`` vertex indices.
        vertex_colours: ``(N, 3)`` shaded colours in [0, 1].
        render: ``(H, W, 3)`` float32 render over the input image's frame (0 outside the face).
        face_region: ``(H, W)`` bool, pixels the model covers.
        mask: ``(H, W)`` bool, visible face = in the region and not occluded.
        occlusion: ``(H, W)`` bool, region and not mask.
        posterior: ``(H, W)`` float32, P(face | pixel) in the region (0 outside).
        landmarks: ``(68, 2)`` landmarks used, input pixels.
        landmarks_fitted: ``(68, 2)`` model landmarks projected, input pixels.
        rounds: per-round :class:`RoundRecord`.
        timings: seconds per stage (``detect``, ``init``, ``em``, ``output``, ``total``).
        backend: rasterizer backend used.
        model_name, model_checksum: which model was fitted.
        coefficient_sigma: Laplace posterior σ per free coefficient block.
        vertex_sigma: ``(N,)`` mm, posterior positional σ of each vertex (shape + expression).
        transform: ``(2, 3)`` similarity input → crop pixels.
        camera: crop camera as a dict (focal, cx, cy, width, height).
        config: the :class:`~fitem.config.FitConfig` as a dict.
    """

    status: FitStatus
    message: str
    params: FaceParams
    vertices: np.ndarray
    triangles: np.ndarray
    vertex_colours: np.ndarray
    render: np.ndarray
    face_region: np.ndarray
    mask: np.ndarray
    occlusion: np.ndarray
    posterior: np.ndarray
    landmarks: np.ndarray
    landmarks_fitted: np.ndarray
    rounds: list[RoundRecord] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    backend: str = ""
    model_name: str = ""
    model_checksum: str = ""
    coefficient_sigma: dict[str, list[float]] = field(default_factory=dict)
    vertex_sigma: np.ndarray | None = None
    transform: np.ndarray | None = None
    camera: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    iterations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return self.status == FitStatus.SUCCESS

    # ----------------------------------------------------------------- save
    def summary(self) -> dict[str, Any]:
        """JSON-ready metadata and parameters (no images)."""
        return {
            "format": RESULT_FORMAT,
            "status": self.status.value,
            "message": self.message,
            "params": self.params.as_dict(),
            "landmarks": np.asarray(self.landmarks).tolist(),
            "landmarks_fitted": np.asarray(self.landmarks_fitted).tolist(),
            "rounds": [r.__dict__ for r in self.rounds],
            "iterations": self.iterations,
            "timings": self.timings,
            "backend": self.backend,
            "model_name": self.model_name,
            "model_checksum": self.model_checksum,
            "coefficient_sigma": self.coefficient_sigma,
            "transform": None if self.transform is None else np.asarray(self.transform).tolist(),
            "camera": self.camera,
            "config": self.config,
            "image_size": list(self.mask.shape[:2]),
        }

    def overlay(self, image: np.ndarray) -> np.ndarray:
        """uint8 picture: the input with the visible face tinted green and occlusions red."""
        from fitem.viz import mask_overlay

        return mask_overlay(image, self.mask, self.occlusion)

    def save(self, directory: str | os.PathLike, image: np.ndarray | None = None, *, arrays: bool = True,
             mesh: bool = True) -> Path:
        """Write ``params.json``, ``mask.png``, ``occlusion.png``, ``render.png``,
        ``arrays.npz`` (posterior, region, vertex σ), ``mesh.ply`` (vertex colours) and,
        if ``image`` is given, ``overlay.png``. Every file is written atomically.

        ``arrays=False`` / ``mesh=False`` leave out ``arrays.npz`` / ``mesh.ply`` (the two large
        files; data-set annotation skips them by default). :meth:`load` needs ``arrays.npz``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "mask.png", png_bytes(self.mask.astype(np.uint8) * 255))
        atomic_write_bytes(out / "occlusion.png", png_bytes(self.occlusion.astype(np.uint8) * 255))
        atomic_write_bytes(out / "render.png", png_bytes((np.clip(self.render, 0, 1) * 255 + 0.5).astype(np.uint8)))
        if image is not None:
            atomic_write_bytes(out / "overlay.png", png_bytes(self.overlay(image)))
        if mesh:
            atomic_write_bytes(out / "mesh.ply", _ply_bytes(self.vertices, self.triangles, self.vertex_colours))
        if arrays:
            atomic_write_bytes(out / "arrays.npz", self._arrays_npz())
        # params.json last: its presence marks a complete result folder.
        atomic_write_bytes(out / "params.json", json.dumps(self.summary(), indent=1, default=_json_default).encode())
        return out

    def _arrays_npz(self) -> bytes:
        import io

        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            posterior=self.posterior.astype(np.float32),
            face_region=self.face_region,
            mask=self.mask,
            vertices=self.vertices.astype(np.float32),
            triangles=self.triangles.astype(np.int64),
            vertex_colours=self.vertex_colours.astype(np.float32),
            vertex_sigma=np.zeros(0, np.float32) if self.vertex_sigma is None else self.vertex_sigma.astype(np.float32),
            render=self.render.astype(np.float32),
        )
        return buf.getvalue()

    @staticmethod
    def load(directory: str | os.PathLike) -> "FitResult":
        """Read a folder written by :meth:`save`."""
        d = Path(directory)
        meta_path = d / "params.json"
        if not meta_path.is_file():
            raise InvalidInputError(f"{d} holds no params.json: not a fitem result folder (write one with FitResult.save)")
        meta = json.loads(meta_path.read_text())
        with np.load(d / "arrays.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        mask = arrays["mask"].astype(bool)
        region = arrays["face_region"].astype(bool)
        vs = arrays["vertex_sigma"]

        return FitResult(
            status=FitStatus(meta["status"]),
            message=meta["message"],
            params=FaceParams.from_dict(meta["params"]),
            vertices=arrays["vertices"],
            triangles=arrays["triangles"],
            vertex_colours=arrays["vertex_colours"],
            render=arrays["render"],
            face_region=region,
            mask=mask,
            occlusion=region & ~mask,
            posterior=arrays["posterior"],
            landmarks=np.asarray(meta["landmarks"], dtype=np.float32),
            landmarks_fitted=np.asarray(meta["landmarks_fitted"], dtype=np.float32),
            rounds=[RoundRecord(**r) for r in meta["rounds"]],
            timings=meta["timings"],
            backend=meta["backend"],
            model_name=meta["model_name"],
            model_checksum=meta["model_checksum"],
            coefficient_sigma=meta["coefficient_sigma"],
            vertex_sigma=vs if vs.size else None,
            transform=None if meta["transform"] is None else np.asarray(meta["transform"]),
            camera=meta["camera"],
            config=meta["config"],
            iterations=meta.get("iterations", []),
        )


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.detach().cpu().tolist()
    if isinstance(o, enum.Enum):
        return o.value
    raise TypeError(f"cannot serialise {type(o).__name__}")


def _ply_bytes(vertices: np.ndarray, triangles: np.ndarray, colours: np.ndarray) -> bytes:
    v = np.asarray(vertices, np.float32)
    t = np.asarray(triangles, np.int32)
    c = (np.clip(np.asarray(colours), 0, 1) * 255 + 0.5).astype(np.uint8)
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment fitem fit (mm, camera space)\n"
        f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        f"element face {len(t)}\nproperty list uchar int vertex_indices\nend_header\n"
    ).encode()
    vert = np.empty(len(v), dtype=[("p", "<f4", 3), ("c", "u1", 3)])
    vert["p"], vert["c"] = v, c
    face = np.empty(len(t), dtype=[("n", "u1"), ("i", "<i4", 3)])
    face["n"], face["i"] = 3, t
    return header + vert.tobytes() + face.tobytes()
