"""The per-image EM: M-step (LM on the mask-weighted photometric term + landmarks + priors)
alternating with the E-step (face vs non-face likelihoods + graph-cut MRF).

Works on the aligned crop; knows nothing of detection or of the input image.
The first E-step does not trust the unfitted model: it starts from
:func:`fitem.occlusion.conservative_initial_mask` and the model earns pixels
round by round.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from fitem import occlusion
from fitem.config import FitConfig
from fitem.fitting.jacobian import vertex_state
from fitem.fitting.terms import LandmarkTerm, PhotometricTerm
from fitem.models.morphable import MorphableModel
from fitem.optim import GaussianPrior, LeastSquaresProblem, NormalEquationsBlock, SolveStatus, solve
from fitem.params import AMBIENT_LIGHT, BLOCKS, FaceParams, ParamLayout
from fitem.render.camera import Camera
from fitem.render.interpolate import interpolate
from fitem.result import RoundRecord

__all__ = ["EMOutput", "MStep", "m_step_problem", "e_step", "run_em", "render_crop", "laplace_uncertainty",
           "JAW_WEIGHT"]

log = logging.getLogger(__name__)

#: Relative weight of the 17 jaw-contour landmarks (silhouette points, not fixed vertices).
JAW_WEIGHT = 0.3
#: A given first E-step mask (``run_em(initial_mask=...)``) covering less than this fraction of the
#: rendered region is not enough for an M-step; the conservative initial mask is used instead.
MIN_INITIAL_FRACTION = 0.05


@dataclass
class EMOutput:
    """What the EM returns on the crop."""

    params: FaceParams
    mask: np.ndarray  # (H, W) bool: visible face
    posterior: np.ndarray  # (H, W) float32 P(face | pixel) inside the region
    region: np.ndarray  # (H, W) bool
    render: np.ndarray  # (H, W, 3) float32
    rounds: list[RoundRecord]
    iterations: list[dict]
    failed: bool
    message: str
    covariance: torch.Tensor | None = None  # Laplace covariance over ``layout``
    layout: ParamLayout | None = None
    timings: dict = field(default_factory=dict)


def render_crop(mt, params: FaceParams, camera: Camera, rasterizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Render one face on the crop: ``(image (H, W, 3), region (H, W) bool)``."""
    st = vertex_state(mt, params, camera)
    raster = rasterizer.rasterize(st.screen[None])
    img = interpolate(st.colours[None], mt.triangles, raster.tri_id, raster.bary)[0]
    return img, raster.tri_id[0] >= 0


def _landmark_weights(n: int, dtype, device) -> torch.Tensor:
    w = torch.ones(n, dtype=dtype, device=device)
    if n == 68:
        w[:17] = JAW_WEIGHT
    return w


def _priors(layout: ParamLayout, config: FitConfig, dtype) -> list:
    blocks = []
    for name, prec in (("shape", config.shape_prior), ("expression", config.expression_prior),
                       ("colour", config.colour_prior)):
        if name in layout.names and prec > 0 and layout.sizes[layout.names.index(name)]:
            sl = layout.slice(name)
            blocks.append(GaussianPrior(0.0, precision=float(prec), indices=torch.arange(sl.start, sl.stop),
                                        name=f"{name}_prior"))
    if "light" in layout.names and config.light_prior > 0:
        sl = layout.slice("light")
        mean = torch.zeros(27, dtype=torch.float64)
        mean[:3] = AMBIENT_LIGHT
        blocks.append(GaussianPrior(mean, precision=float(config.light_prior), indices=torch.arange(sl.start, sl.stop),
                                    name="light_prior"))
    return blocks


def _finite(params: FaceParams) -> bool:
    return all(bool(torch.isfinite(getattr(params, b)).all()) for b in BLOCKS)


def _face_term_block(term, layout: ParamLayout, base: FaceParams, dtype, name: str) -> NormalEquationsBlock:
    """A face term (cost / normal_equations of :class:`FaceParams`) as a solver block over the flat ``x``."""

    def unflat(x: torch.Tensor) -> FaceParams:
        return layout.unflatten(x.to(dtype), base)

    def linearize(x: torch.Tensor):
        ne = term.normal_equations(unflat(x), layout)
        return torch.tensor(ne.cost, dtype=torch.float64), ne.jtj.double(), ne.jtr.double()

    return NormalEquationsBlock(linearize, lambda x: term.cost(unflat(x)), name=name)


@dataclass
class MStep:
    """The energy one M-step minimises, over the flat vector ``x`` of the free blocks.

    ``problem`` is what :func:`fitem.optim.solve` takes; :meth:`energy` is the same
    value as a tensor that autograd can differentiate (what a first-order
    optimiser such as Adam would minimise: the benchmark's baseline).
    """

    problem: LeastSquaresProblem
    layout: ParamLayout
    base: FaceParams
    photometric: PhotometricTerm
    landmarks: LandmarkTerm
    priors: list

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        params = self.layout.unflatten(x.to(self.base.shape.dtype), self.base)
        total = self.photometric.energy(params).double() + self.landmarks.energy(params).double()
        for prior in self.priors:
            total = total + prior.cost(x)
        return total


def m_step_problem(mt, crop: torch.Tensor, landmarks: torch.Tensor, lm_index: torch.Tensor, camera: Camera,
                   rasterizer, params: FaceParams, mask: np.ndarray, config: FitConfig, *, round_index: int,
                   sigma: float, generator: torch.Generator | None = None) -> MStep:
    """Build round ``round_index``'s M-step energy: the photometric term weighted by ``mask``
    ((H, W) bool or float), the landmark term with its decayed weight, and the priors."""
    free = config.first_free if round_index == 0 else config.free
    layout = ParamLayout.of(params, free)
    dtype, device = crop.dtype, crop.device
    weight_map = torch.as_tensor(np.asarray(mask), device=device).to(dtype)
    photo = PhotometricTerm(mt, camera, rasterizer, crop, weight_map, sigma=sigma,
                            weight=config.photometric_weight, n_effective=config.effective_pixels,
                            robust_scale=config.robust_scale or None,
                            max_pixels=config.max_pixels, generator=generator)
    lmk = LandmarkTerm(mt, camera, lm_index, landmarks, sigma_px=config.landmark_sigma * camera.width / 224.0,
                       weight=config.landmark_weight * (config.landmark_decay ** round_index),
                       point_weight=_landmark_weights(lm_index.numel(), dtype, device))
    priors = _priors(layout, config, dtype)
    blocks = [
        _face_term_block(photo, layout, params, dtype, "photometric"),
        _face_term_block(lmk, layout, params, dtype, "landmarks"),
        *priors,
    ]
    return MStep(LeastSquaresProblem(blocks), layout, params, photo, lmk, priors)


def e_step(crop: np.ndarray, render: np.ndarray, region: np.ndarray, mask: np.ndarray, config: FitConfig, *,
           prior_logit: np.ndarray | None = None, final: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """One E-step: the new visible-face mask from the fitted render.

    Args:
        crop: ``(H, W, 3)`` float target image in [0, 1].
        render: ``(H, W, 3)`` float render of the current parameters.
        region: ``(H, W)`` bool rendered-face region.
        mask: ``(H, W)`` bool previous visible-face mask.
        config: the fit's settings (``sigma``, ``min_sigma``, ``sigma_from``, ``sigma_adapt``,
            ``edge_sigma``, ``nonface_histogram``, ``smoothness``, ``region_test``, ``region_spread``).
        prior_logit: optional ``(H, W)`` extra log-odds of face.
        final: the E-step whose mask is the result: its region test segments at full
            resolution; earlier ones (whose masks only steer the next M-step) at half.

    Returns:
        ``(mask (H, W) bool, posterior (H, W) float32 P(face | colour) inside the region -- 0 on
        the regions the region test rejects --, sigma)``.

    Example:
        >>> mask, post, sigma = e_step(crop, render, region, mask, FitConfig())   # doctest: +SKIP
    """
    residual = crop - render
    face_now = mask & region
    if config.sigma is None:
        # σ robustly (MAD) from the residuals of the current face mask, or of the whole
        # region; the floor keeps it from shrinking round after round on real photos.
        sigma_pixels = region if config.sigma_from == "region" or not face_now.any() else face_now
        sigma = max(config.min_sigma, float(occlusion.robust_sigma(residual, sigma_pixels)))
    elif config.sigma_adapt > 0:
        # sharper than config.sigma only where the model explains the image better than a photo's
        sigma = occlusion.adaptive_sigma(residual, face_now, render, factor=config.sigma_adapt,
                                         floor=min(config.min_sigma, config.sigma), cap=config.sigma)
    else:
        sigma = config.sigma
    sigma_map = (occlusion.edge_sigma_map(render, region, sigma, edge_scale=config.edge_sigma, image=crop)
                 if config.edge_sigma > 0 else sigma)
    face_ll = occlusion.face_loglik(residual, sigma_map)
    # Non-face colours: the histogram of the pixels currently believed non-face
    # (background, and occluders inside the region), not of the face itself.
    nonface_weight = 1.0 - face_now.astype(np.float64) if config.nonface_histogram == "nonface" else None
    nonface_ll = occlusion.nonface_loglik(crop, weights=nonface_weight)
    new_mask = occlusion.segment(face_ll, nonface_ll, region, smoothness=config.smoothness,
                                 prior_logit=prior_logit)
    posterior_np = occlusion.posterior(face_ll, nonface_ll).astype(np.float32) * region
    if config.region_test > 0:
        # what the pixels accept may still fail as a whole (a skin-coloured hand); the posterior
        # follows the decision there (FitResult.posterior is P(face), used downstream)
        outliers = occlusion.region_outliers(crop, residual, sigma_map, region, new_mask, ratio=config.region_test,
                                             spread=config.region_spread, crossing=config.region_crossing,
                                             downsample=1 if final else 2)
        new_mask &= ~outliers
        posterior_np[outliers] = 0.0
    return new_mask, posterior_np, float(sigma)


def run_em(
    model: MorphableModel,
    crop: torch.Tensor,
    landmarks: torch.Tensor,
    camera: Camera,
    rasterizer,
    params: FaceParams,
    config: FitConfig,
    *,
    prior_logit: np.ndarray | None = None,
    initial_mask: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    progress=None,
) -> EMOutput:
    """Run the EM on an aligned crop.

    Args:
        model: the (possibly truncated) model; ``params`` are sized for it.
        crop: ``(H, W, 3)`` target image in [0, 1] on the compute device/dtype.
        landmarks: ``(68, 2)`` crop pixel coordinates.
        camera, rasterizer: the crop camera and a rasterizer for the model's triangles at ``(H, W)``.
        params: initial parameters (from :func:`fitem.init.initialise`).
        config: the fit's settings.
        prior_logit: optional ``(H, W)`` extra log-odds of "face" (e.g. a segmentation net's prediction).
        initial_mask: optional ``(H, W)`` bool first E-step mask (e.g. a segmentation net's ``p > 0.5``),
            used instead of :func:`fitem.occlusion.conservative_initial_mask`; cut to the region and ``valid``.
        valid: optional ``(H, W)`` bool, crop pixels that hold image data (the crop of a face near
            the image border is padded); others are never counted as visible face.
        progress: optional tqdm bar, advanced once per round.
    """
    t_start = time.perf_counter()
    dtype, device = crop.dtype, crop.device
    mt = model.tensors(device, dtype)

    crop_np = crop.detach().cpu().numpy().astype(np.float32)
    valid_np = np.ones(crop_np.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    lm_index = torch.as_tensor(model.landmark_indices("ibug68"), device=device)
    generator = torch.Generator().manual_seed(config.seed)
    rounds: list[RoundRecord] = []
    iterations: list[dict] = []
    failed, message = False, "ran all rounds"
    timings = {"m_step": 0.0, "e_step": 0.0}

    # --- first E-step: a conservative mask (or a given one, e.g. a net's); the unfitted model is not trusted.
    t0 = time.perf_counter()
    render, region = render_crop(mt, params, camera, rasterizer)
    region_np = region.cpu().numpy()
    mask_np = None
    if config.use_em and initial_mask is not None:
        given = np.asarray(initial_mask, bool) & region_np & valid_np
        if given.sum() >= MIN_INITIAL_FRACTION * max(int((region_np & valid_np).sum()), 1):
            mask_np = given
        else:
            log.info("the given first mask covers %d of %d face pixels: too few for an M-step; using the "
                     "conservative initial mask instead", int(given.sum()), int(region_np.sum()))
    if mask_np is None and config.use_em:
        init_mask = occlusion.conservative_initial_mask(crop_np, render.detach().cpu().numpy(), region_np)
        mask_np = init_mask.mask & valid_np
    elif mask_np is None:
        mask_np = region_np & valid_np
    posterior_np = mask_np.astype(np.float32)
    timings["e_step"] += time.perf_counter() - t0
    sigma = config.sigma if config.sigma is not None else 0.043
    final_layout, covariance = None, None
    last_problem, last_x = None, None

    for r in range(config.rounds):
        t_round = time.perf_counter()
        free = config.first_free if r == 0 else config.free
        n_iter = config.first_iterations if r == 0 else config.iterations
        mstep = m_step_problem(mt, crop, landmarks, lm_index, camera, rasterizer, params, mask_np, config,
                               round_index=r, sigma=sigma, generator=generator)
        layout, base, problem = mstep.layout, mstep.base, mstep.problem
        lm_w, lmk = mstep.landmarks.weight, mstep.landmarks
        x0 = layout.flatten(params).double()
        t0 = time.perf_counter()
        # JᵀJ at the solution is needed only after the last round (Laplace uncertainty).
        res = solve(problem, x0, method="lm", max_iterations=max(n_iter, 1), max_trials=config.max_trials,
                    final_jtj=(r == config.rounds - 1))
        timings["m_step"] += time.perf_counter() - t0
        new_params = layout.unflatten(res.x.to(dtype), base)
        for k, c in enumerate(res.cost_history):
            iterations.append({"round": r, "iteration": k, "cost": float(c)})
        # No decrease within max_trials ends the round at its best point (STOPPED_NO_DECREASE, or
        # FAILED_NO_PROGRESS when the round's start was already that point): a stop, not a failure.
        solver_failed = res.status.failed and res.status is not SolveStatus.FAILED_NO_PROGRESS
        if solver_failed or not _finite(new_params):
            failed, message = True, f"M-step of round {r + 1} failed: {res.message}"
            log.warning(message)
            rounds.append(RoundRecord(r + 1, list(free), res.iterations, str(getattr(res.status, "name", res.status)),
                                      [float(c) for c in res.cost_history], float(posterior_np.mean()), 0.0, sigma,
                                      lm_w, float("nan"), float("nan"), time.perf_counter() - t_round))
            break
        params = new_params
        final_layout = layout
        last_problem, last_x = problem, res.x

        # --- E-step
        t0 = time.perf_counter()
        render, region = render_crop(mt, params, camera, rasterizer)
        render_np = render.detach().cpu().numpy().astype(np.float32)
        region_np = region.cpu().numpy()
        if not region_np.any():
            failed, message = True, f"the face left the image in round {r + 1}"
            break
        residual = crop_np - render_np
        last = r == config.rounds - 1
        if config.use_em:
            prev_mask = mask_np
            new_mask, posterior_np, e_sigma = e_step(crop_np, render_np, region_np, mask_np, config,
                                                   prior_logit=prior_logit, final=last)
            # The next M-step's σ follows the E-step's, down to config.photometric_min_sigma: a σ as
            # sharp as a clean image's noise would let pixels of an occluder still labelled face
            # (part of a hand) pull the shape.
            sigma = e_sigma if config.sigma is None else max(e_sigma, config.photometric_min_sigma)
        else:
            new_mask = region_np.copy()
            posterior_np = region_np.astype(np.float32)
        new_mask = new_mask & valid_np
        n_region = max(int(region_np.sum()), 1)
        change = float((new_mask != (mask_np & region_np))[region_np].sum()) / n_region
        converged = config.use_em and r >= 1 and change < config.mask_tolerance
        if converged and not last and config.region_test > 0:
            # this E-step's mask is the result after all: redo it with the full-resolution region test
            new_mask, posterior_np, _ = e_step(crop_np, render_np, region_np, prev_mask, config,
                                               prior_logit=prior_logit, final=True)
            new_mask = new_mask & valid_np
        mask_np = new_mask
        timings["e_step"] += time.perf_counter() - t0

        vis = mask_np & region_np
        rmse = float(np.sqrt((residual[vis] ** 2).mean())) if vis.any() else float("nan")
        lm_err = float(lmk.reprojection_error(params).median())
        rounds.append(RoundRecord(
            round=r + 1, free=list(free), iterations=int(res.iterations),
            solver_status=str(getattr(res.status, "name", res.status)),
            cost_history=[float(c) for c in res.cost_history], mask_fraction=float(vis.sum()) / n_region,
            mask_change=change, sigma=float(sigma), landmark_weight=lm_w, landmark_error_px=lm_err,
            photometric_rmse=rmse, seconds=time.perf_counter() - t_round,
        ))
        if progress is not None:
            progress.update(1)
        log.info("round %d: cost %.4g → %.4g, visible %.1f %%, change %.2f %%, rmse %.4f",
                 r + 1, res.cost_history[0], res.cost_history[-1], 100 * rounds[-1].mask_fraction,
                 100 * change, rmse)
        if converged:
            message = f"mask converged after {r + 1} rounds"
            break

    if not failed and final_layout is not None:
        # Laplace approximation: covariance = (JᵀJ of the whole cost at the solution)⁻¹.
        try:
            jtj = last_problem.linearize(last_x.double()).jtj
            covariance = torch.linalg.pinv(jtj, hermitian=True)
        except (RuntimeError, ValueError) as exc:  # a singular or non-finite system: no uncertainty
            log.warning("no posterior uncertainty: %s", exc)
            covariance = None
    timings["total"] = time.perf_counter() - t_start
    return EMOutput(
        params=params, mask=mask_np & region_np, posterior=posterior_np, region=region_np,
        render=render.detach().cpu().numpy().astype(np.float32), rounds=rounds, iterations=iterations,
        failed=failed, message=message, covariance=covariance, layout=final_layout, timings=timings,
    )


def laplace_uncertainty(model: MorphableModel, covariance: torch.Tensor, layout: ParamLayout
                        ) -> tuple[dict[str, list[float]], np.ndarray | None]:
    """Marginal σ per free block and per-vertex positional σ (mm) from a Laplace covariance.

    The vertex σ is ``sqrt(trace(B_i Σ_geo B_iᵀ))`` with ``B_i`` the vertex's
    shape + expression basis rows: the RMS positional uncertainty of vertex i.
    """
    cov = covariance.detach().to(device="cpu", dtype=torch.float64)  # the bases' copy used here is on the CPU
    diag = torch.clamp(torch.diagonal(cov), min=0).sqrt()
    sigma = {name: diag[layout.slice(name)].tolist() for name in layout.names}
    geo = [n for n in ("shape", "expression") if n in layout.names and layout.sizes[layout.names.index(n)]]
    if not geo:
        return sigma, None
    idx = torch.cat([torch.arange(layout.slice(n).start, layout.slice(n).stop) for n in geo])
    # Σ_geo = L Lᵀ with L = V √max(e, 0) (the covariance is a pseudo-inverse: semidefinite), so
    # trace(B_i Σ B_iᵀ) = |B_i L|²; the product runs on the model's float32 bases.
    evals, evecs = torch.linalg.eigh(cov[idx][:, idx])
    root = (evecs * evals.clamp_min(0).sqrt()).float()
    mt = model.tensors(dtype=torch.float32)
    bases = [(mt.shape_basis if n == "shape" else mt.expression_basis).reshape(3 * model.n_vertices, -1)
             for n in geo]
    sq = torch.empty(3 * model.n_vertices, dtype=torch.float32)
    for a in range(0, sq.numel(), 4096):  # row chunks that stay in cache: 2x faster than one product
        bl, start = None, 0
        for b in bases:
            k = b.shape[-1]
            if bl is None:
                bl = b[a:a + 4096] @ root[start:start + k]
            else:
                bl.addmm_(b[a:a + 4096], root[start:start + k])
            start += k
        sq[a:a + 4096] = (bl * bl).sum(-1)
    var = sq.reshape(model.n_vertices, 3).sum(-1, dtype=torch.float64)
    return sigma, var.clamp_min(0).sqrt().numpy().astype(np.float32)

