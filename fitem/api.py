"""``fitem.fit``: image → landmarks → aligned crop → initialisation → EM → :class:`FitResult`."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fitem._malloc import tune_malloc
from fitem.config import FitConfig
from fitem.em import laplace_uncertainty, run_em
from fitem.errors import ConfigError
from fitem.landmarks.align import AlignTransform
from fitem.models import MorphableModel, load_model
from fitem.params import FaceParams
from fitem.render.camera import Camera
from fitem.result import FitResult, FitStatus

__all__ = ["fit", "prepare_fit", "FitStart", "truncate_model", "resolve_device"]

log = logging.getLogger(__name__)


def truncate_model(model: MorphableModel, config: FitConfig) -> MorphableModel:
    """The model restricted to ``config.n_shape / n_expression / n_colour`` components."""
    ks, ke, kc = config.n_shape, config.n_expression, config.n_colour
    if ks is None and ke is None and kc is None:
        return model
    return MorphableModel(
        name=model.name,
        shape=model.shape.truncated(model.n_shape if ks is None else ks),
        expression=model.expression.truncated(model.n_expression if ke is None else ke),
        colour=model.colour.truncated(model.n_colour if kc is None else kc),
        triangles=model.triangles,
        landmarks=model.landmarks,
        metadata={**model.metadata, "truncated_from": model.checksum},
    )


def resolve_device(config: FitConfig, device: "str | torch.device | None") -> torch.device:
    """The compute device: the argument, else the config's, else CUDA when available, else CPU."""
    name = device if device is not None else config.device
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {name!r}: use 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here; use device='cpu'")
    return dev


def _input_render(mt, params: FaceParams, camera: Camera, inverse: np.ndarray, shape: tuple[int, int],
                  backend: str, device: torch.device):
    """Render the fitted face straight at the input resolution.

    The crop is a 2D similarity of the input, so the crop's screen coordinates
    map to input pixels by the inverse similarity while depth (and so the
    perspective-correct barycentrics) is unchanged: rasterize at input size.
    """
    from fitem.fitting.jacobian import vertex_state
    from fitem.render.interpolate import interpolate
    from fitem.render.raster import make_rasterizer

    st = vertex_state(mt, params, camera)
    A = torch.as_tensor(inverse, dtype=st.screen.dtype, device=device)
    uv = st.screen[:, :2] @ A[:, :2].T + A[:, 2]
    screen = torch.cat([uv, st.screen[:, 2:]], dim=-1)
    rast = make_rasterizer(mt.triangles, shape, backend=backend, device=device)
    raster = rast.rasterize(screen[None])
    img = interpolate(st.colours[None], mt.triangles, raster.tri_id, raster.bary)[0]
    return img.detach().cpu().numpy(), (raster.tri_id[0] >= 0).cpu().numpy(), st


@dataclass
class FitStart:
    """Where every fit starts: the aligned crop and the landmark initialisation on it."""

    transform: "AlignTransform"  #: input → crop similarity
    crop: np.ndarray  #: ``(S, S, 3)`` float image in [0, 1]
    landmarks: np.ndarray  #: ``(68, 2)`` crop pixels
    camera: Camera  #: the crop camera
    params: FaceParams  #: initial parameters, float32 on the compute device


def prepare_fit(image: np.ndarray, landmarks68: np.ndarray, model: MorphableModel, config: FitConfig, *,
                device: "str | torch.device" = "cpu") -> FitStart:
    """Align ``image`` to the ``config.size`` crop by its 68 landmarks and initialise the model there
    (PnP pose + robust linear shape/expression solve). ``model`` is the fitted one (already truncated)."""
    from fitem.init import initialise
    from fitem.landmarks import align_transform

    transform = align_transform(landmarks68, size=config.size, input_shape=image.shape)
    lm_crop = transform.to_crop(landmarks68)
    camera = Camera.default(config.size)
    init = initialise(model, lm_crop, camera)
    return FitStart(transform, transform.warp_image(image), lm_crop, camera,
                    init.params.to(device=device, dtype=torch.float32))


def fit(
    image: Any,
    *,
    landmarks: Any = None,
    model: "str | Path | MorphableModel" = "demo",
    config: FitConfig | None = None,
    device: "str | torch.device | None" = None,
    face_index: int | None = None,
    segnet: Any = None,
) -> FitResult:
    """Fit a 3D Morphable Model to one photograph and segment what occludes the face.

    Args:
        image: a path, an RGB ``uint8``/``uint16``/float array (float in [0, 1]),
            grayscale or RGBA (converted), or a PIL image.
        landmarks: optional ``(68, 2)`` or ``(478, 2)`` array of input-pixel
            landmarks, or a ``.pts`` file; skips detection.
        model: ``"demo"`` (built in), a model file, or a :class:`MorphableModel`.
        config: :class:`FitConfig` (defaults if None).
        device: torch device (default: CUDA if available, else CPU).
        face_index: which detected face to fit (default: the largest).
        segnet: optional distilled segmentation net (a checkpoint path or a loaded
            :class:`fitem.segnet.SegNet`): its probability of visible face on the crop
            (6-channel nets also see the initial render) becomes the E-step's prior
            log-odds and its ``p > 0.5`` the first E-step's mask.

    Returns:
        :class:`FitResult`. A fit that diverges returns ``status=FAILED`` with a
        message; it does not raise.

    Raises:
        fitem.errors.NoFaceError: no face found (pass ``landmarks=``).
        fitem.errors.InvalidInputError / LandmarkError / ConfigError / ModelError: bad input.

    Example:
        >>> import fitem, skimage.data
        >>> result = fitem.fit(skimage.data.astronaut())   # doctest: +SKIP
        >>> result.mask.shape, result.params.shape.shape     # doctest: +SKIP
    """
    from fitem.image import load_image
    from fitem.landmarks import detect_landmarks, landmarks_from_user
    from fitem.render.raster import make_rasterizer

    config = config or FitConfig()
    if not isinstance(config, FitConfig):
        raise ConfigError(f"config must be a fitem.FitConfig, got {type(config).__name__}")
    t_total = time.perf_counter()
    timings: dict[str, float] = {}
    img = load_image(image)
    base_model = load_model(model)
    mdl = truncate_model(base_model, config)
    mdl.landmark_indices("ibug68")  # typed error with a next step if the model has none
    dev = resolve_device(config, device)
    if dev.type == "cpu":
        tune_malloc()  # once per process; FITEM_TUNE_MALLOC=0 disables (see fitem._malloc)
    dtype = torch.float32

    t0 = time.perf_counter()
    if landmarks is not None:
        detection = landmarks_from_user(landmarks, img.shape[:2])
    else:
        detection = detect_landmarks(img, detector=config.detector, face_index=face_index)
    timings["detect"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    start = prepare_fit(img, detection.ibug68, mdl, config, device=dev)
    transform, crop, lm_crop, camera, params = start.transform, start.crop, start.landmarks, start.camera, start.params
    timings["init"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rasterizer = make_rasterizer(torch.as_tensor(mdl.triangles, device=dev), (config.size, config.size),
                                 backend=config.backend, device=dev)
    prior, first_mask = None, None
    if segnet is not None:
        from fitem.em import render_crop
        from fitem.segnet.infer import crop_probability, prior_logit
        from fitem.segnet.net import load_segnet

        t1 = time.perf_counter()
        net = load_segnet(segnet, device=dev)
        render0 = None
        if net.in_channels == 6:
            with torch.no_grad():
                render0 = render_crop(mdl.tensors(dev, dtype), params, camera, rasterizer)[0]
            render0 = render0.clamp(0, 1).cpu().numpy()
        prob = crop_probability(net, crop, render0)
        prior, first_mask = prior_logit(prob), prob > 0.5
        timings["segnet"] = time.perf_counter() - t1
    progress = None
    if config.progress:
        from tqdm import tqdm

        progress = tqdm(total=config.rounds, desc="EM rounds", unit="round", leave=False)
    try:
        em = run_em(mdl, torch.as_tensor(crop, device=dev, dtype=dtype), torch.as_tensor(lm_crop, device=dev, dtype=dtype),
                    camera, rasterizer, params, config, valid=transform.valid_mask(img.shape), progress=progress,
                    prior_logit=prior, initial_mask=first_mask)
    finally:
        if progress is not None:
            progress.close()
    timings["em"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mt = mdl.tensors(dev, dtype)
    H, W = img.shape[:2]
    render, region, st = _input_render(mt, em.params, camera, transform.inverse_matrix, (H, W), rasterizer.backend, dev)
    mask = transform.mask_to_input(em.mask, (H, W)) & region
    posterior = transform.image_to_input(em.posterior.astype(np.float32), (H, W)) * region
    coef_sigma, vertex_sigma = ({}, None)
    if em.covariance is not None and em.layout is not None:
        coef_sigma, vertex_sigma = laplace_uncertainty(mdl, em.covariance, em.layout)
    lm_idx = torch.as_tensor(mdl.landmark_indices("ibug68"), device=dev)
    lm_fit = transform.to_input(st.screen[lm_idx, :2].detach().cpu().numpy())
    timings["output"] = time.perf_counter() - t0
    timings["m_step"] = em.timings.get("m_step", 0.0)
    timings["e_step"] = em.timings.get("e_step", 0.0)
    timings["total"] = time.perf_counter() - t_total
    status = FitStatus.FAILED if em.failed else FitStatus.SUCCESS
    return FitResult(
        status=status,
        message=em.message,
        params=em.params.detach().to(device="cpu"),
        vertices=st.cam.detach().cpu().numpy().astype(np.float32),
        triangles=mdl.triangles.copy(),
        vertex_colours=st.colours.detach().clamp(0, 1).cpu().numpy().astype(np.float32),
        render=render.astype(np.float32),
        face_region=region,
        mask=mask,
        occlusion=region & ~mask,
        posterior=posterior.astype(np.float32),
        landmarks=np.asarray(detection.ibug68, np.float32),
        landmarks_fitted=lm_fit.astype(np.float32),
        rounds=em.rounds,
        timings=timings,
        backend=rasterizer.backend,
        model_name=mdl.name,
        model_checksum=base_model.checksum,
        coefficient_sigma=coef_sigma,
        vertex_sigma=vertex_sigma,
        transform=np.asarray(transform.matrix),
        camera={"focal": camera.focal, "cx": camera.cx, "cy": camera.cy, "width": camera.width,
                "height": camera.height},
        config=config.as_dict(),
        iterations=em.iterations,
    )
