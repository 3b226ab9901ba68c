"""Cost terms of the M-step: photometric (mask-weighted) and landmarks (priors are
:class:`fitem.optim.GaussianPrior` blocks).

Each term evaluates at a flat parameter vector of a :class:`~fitem.params.ParamLayout`
and returns either the cost alone or ``(cost, JᵀJ, Jᵀr)`` of its whitened
residuals, so that the solver's Gauss-Newton system is
``(Σ JᵀJ + λD) δ = -Σ Jᵀr``. Terms know the face; the solver does not.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fitem.fitting.jacobian import pixel_barycentrics, pixel_factors, pixel_jacobian, vertex_jacobians, vertex_state
from fitem.models.morphable import ModelTensors
from fitem.params import FaceParams, ParamLayout
from fitem.render.camera import Camera

__all__ = ["PhotometricTerm", "LandmarkTerm", "NormalEquations", "subset_tensors"]


@dataclass
class NormalEquations:
    """``cost`` (float), ``jtj`` (P, P), ``jtr`` (P,)."""

    cost: float
    jtj: torch.Tensor
    jtr: torch.Tensor


class PhotometricTerm:
    """Mask-weighted colour residuals of the rendered face against the target image.

    ``cost = 0.5 · weight · (n_effective / n_used) · Σ_pixels w_p Σ_c ((I_p,c - T_p,c) / σ)²``

    over a fixed random subset of the image's pixels (``max_pixels``; the same
    subset at every evaluation of one M-step, so trial steps are comparable),
    restricted to pixels the model covers. ``n_effective`` tempers the
    likelihood: neighbouring pixels are not independent, so the photometric
    evidence counts as that many independent pixels against the priors.

    Args:
        model_tensors: the model on the compute device/dtype.
        camera, rasterizer: the working camera and a rasterizer built for the model.
        target: ``(H, W, 3)`` image in [0, 1].
        pixel_weight: ``(H, W)`` weights in [0, 1] (the E-step's mask).
        sigma: colour noise σ.
        weight: global weight of the term.
        n_effective: effective number of independent pixels (see above).
        robust_scale: Cauchy loss on each pixel's colour residual norm with scale
            ``robust_scale · σ`` (None: plain least squares). Pixels the mask wrongly
            keeps (an occluder not found yet) then pull the fit far less.
        max_pixels: at most this many pixels are sampled (None: all).
        chunk: pixels per chunk when accumulating JᵀJ.
        generator: torch.Generator for the pixel subset (reproducible).
    """

    def __init__(
        self,
        model_tensors: ModelTensors,
        camera: Camera,
        rasterizer,
        target: torch.Tensor,
        pixel_weight: torch.Tensor,
        *,
        sigma: float = 0.043,
        weight: float = 1.0,
        n_effective: float = 2000.0,
        robust_scale: float | None = 3.0,
        max_pixels: int | None = 8000,
        chunk: int = 8192,
        generator: torch.Generator | None = None,
    ) -> None:
        self.mt = model_tensors
        self.camera = camera
        self.rasterizer = rasterizer
        self.target = target.reshape(-1, 3)
        W = camera.width
        w = pixel_weight.reshape(-1).to(target.dtype)
        cand = torch.nonzero(w > 0).reshape(-1)
        if max_pixels is not None and cand.numel() > max_pixels:
            perm = torch.randperm(cand.numel(), generator=generator)[:max_pixels].to(cand.device)
            cand = cand[perm].sort().values
        self.pixels = cand  # flat indices into H*W
        self.pixel_weight = w
        self.sigma = float(sigma)
        self.weight = float(weight)
        self.n_effective = float(n_effective)
        self.robust = None if robust_scale is None else float(robust_scale) * float(sigma)
        self.chunk = int(chunk)
        rows = (cand // W).to(target.dtype)
        cols = (cand % W).to(target.dtype)
        self.pixel_uv = torch.stack([cols + 0.5, rows + 0.5], dim=-1)
        self.last_coverage = 0
        self._cache: list = []

    def _evaluate(self, params: FaceParams):
        """Forward state and covered sampled pixels at ``params`` (the last two are cached,
        so the solver's linearisation after an accepted trial step does not redo them)."""
        key = tuple(float(v) for v in torch.cat([getattr(params, b).reshape(-1) for b in
                                                 ("shape", "expression", "colour", "light", "rotation",
                                                  "translation")]).tolist())
        for k, val in self._cache:
            if k == key:
                return val
        st = vertex_state(self.mt, params, self.camera)
        raster = self.rasterizer.rasterize(st.screen[None].detach())
        tri = raster.tri_id.reshape(-1)[self.pixels]
        keep = tri >= 0
        val = (st, tri[keep], self.pixels[keep], self.pixel_uv[keep])
        self._cache = [(key, val)] + self._cache[:1]
        return val

    def _scale(self, n_used: int) -> float:
        return self.weight * self.n_effective / max(n_used, 1) / self.sigma**2

    def _cost(self, st, tri: torch.Tensor, pix: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
        vid = self.mt.triangles[tri]
        lam = pixel_barycentrics(st.screen, vid, uv)
        values = torch.einsum("mk,mkc->mc", lam, st.colours[vid])
        r = values - self.target[pix]
        w = self.pixel_weight[pix]
        rho, _ = self._loss((r * r).sum(-1))
        return 0.5 * self._scale(tri.numel()) * (w * rho).sum()

    def cost(self, params: FaceParams) -> float:
        st, tri, pix, uv = self._evaluate(params)
        self.last_coverage = int(tri.numel())
        if tri.numel() == 0:
            return float("inf")
        return float(self._cost(st, tri, pix, uv))

    def energy(self, params: FaceParams) -> torch.Tensor:
        """The same value as :meth:`cost`, as a tensor differentiable by autograd with respect to
        ``params`` (for a fixed rasterization at ``params``; first-order optimisers' baseline)."""
        st = vertex_state(self.mt, params, self.camera)
        raster = self.rasterizer.rasterize(st.screen[None].detach())
        tri = raster.tri_id.reshape(-1)[self.pixels]
        keep = tri >= 0
        if not bool(keep.any()):
            return torch.full((), float("inf"), dtype=st.screen.dtype, device=st.screen.device)
        return self._cost(st, tri[keep], self.pixels[keep], self.pixel_uv[keep])

    def _loss(self, sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ρ(|r|²), ρ'(|r|²))`` per pixel: Cauchy ``c² log(1 + |r|²/c²)`` or plain ``|r|²``."""
        if self.robust is None:
            return sq, torch.ones_like(sq)
        c2 = self.robust**2
        return c2 * torch.log1p(sq / c2), 1.0 / (1.0 + sq / c2)

    def normal_equations(self, params: FaceParams, layout: ParamLayout) -> NormalEquations:
        st, tri, pix, uv = self._evaluate(params)
        self.last_coverage = int(tri.numel())
        P = layout.size
        dtype, device = st.vertices.dtype, st.vertices.device
        jtj = torch.zeros(P, P, dtype=dtype, device=device)
        jtr = torch.zeros(P, dtype=dtype, device=device)
        if tri.numel() == 0:
            return NormalEquations(float("inf"), jtj, jtr)
        # Per-vertex factors only for the vertices of the sampled pixels' triangles.
        used, local = torch.unique(self.mt.triangles[tri], return_inverse=True)
        factors = pixel_factors(self.mt, params, layout, self.camera, st, used)
        local_tri = local.reshape(-1, 3)
        scale = self._scale(tri.numel())
        cost = 0.0
        for start in range(0, tri.numel(), self.chunk):
            sl = slice(start, start + self.chunk)
            values, J = pixel_jacobian(st, factors, self.mt.triangles, tri[sl], uv[sl], local_tri[sl])
            r = values - self.target[pix[sl]]
            w = self.pixel_weight[pix[sl]] * scale
            rho, drho = self._loss((r * r).sum(-1))
            # IRLS (first-order) rescaling: JᵀJ and Jᵀr of sqrt(w ρ') r, so Jᵀr is the cost's gradient.
            sw = (w * drho).sqrt()[:, None]
            rw = (r * sw).reshape(-1)
            Jw = (J * sw[:, :, None]).reshape(-1, P)
            jtj += Jw.T @ Jw
            jtr += Jw.T @ rw
            cost += 0.5 * float((w * rho).sum())
        return NormalEquations(cost, jtj, jtr)


class LandmarkTerm:
    """2D landmark reprojection error with a robust (Cauchy) loss.

    ``cost = 0.5 · weight · Σ_l w_l · σ_l² ρ(|p_l - q_l|² / σ²)`` with
    ``ρ(s) = log(1 + s)`` (Cauchy), σ in pixels. Occluded landmarks (where a
    detector guesses) get down-weighted by the loss, and per-point weights
    ``w_l`` (e.g. lower for the jaw contour) come in through ``point_weight``.
    """

    def __init__(
        self,
        model_tensors: ModelTensors,
        camera: Camera,
        vertex_index: torch.Tensor,
        targets: torch.Tensor,
        *,
        sigma_px: float = 3.0,
        weight: float = 1.0,
        point_weight: torch.Tensor | None = None,
    ) -> None:
        self.mt = subset_tensors(model_tensors, vertex_index)
        self.camera = camera
        self.index = vertex_index
        self.targets = targets
        self.sigma = float(sigma_px)
        self.weight = float(weight)
        self.point_weight = point_weight if point_weight is not None else torch.ones_like(targets[:, 0])

    def _residuals(self, params: FaceParams):
        st = vertex_state(self.mt, params, self.camera)
        uv = st.screen[:, :2]
        return st, (uv - self.targets) / self.sigma  # (L, 2) whitened

    def energy(self, params: FaceParams) -> torch.Tensor:
        """:meth:`cost` as a tensor differentiable by autograd with respect to ``params``."""
        _, r = self._residuals(params)
        s = (r * r).sum(-1)
        return 0.5 * self.weight * (self.point_weight * torch.log1p(s)).sum()

    def cost(self, params: FaceParams) -> float:
        if self.weight == 0:
            return 0.0
        return float(self.energy(params))

    def normal_equations(self, params: FaceParams, layout: ParamLayout) -> NormalEquations:
        P = layout.size
        st, r = self._residuals(params)
        dtype, device = r.dtype, r.device
        if self.weight == 0:
            return NormalEquations(0.0, torch.zeros(P, P, dtype=dtype, device=device),
                                   torch.zeros(P, dtype=dtype, device=device))
        jac = vertex_jacobians(self.mt, params, layout, self.camera, st, with_colour=False)
        J = jac.screen[:, :2, :] / self.sigma  # (L, 2, P)
        s = (r * r).sum(-1)
        # Cauchy IRLS weights (Triggs et al.): ρ'(s) = 1 / (1 + s); a first-order
        # (ρ'' dropped) rescaling keeps JᵀJ positive semidefinite.
        rho1 = 1.0 / (1.0 + s)
        w = self.weight * self.point_weight * rho1
        Jw = J * w.sqrt()[:, None, None]
        rw = r * w.sqrt()[:, None]
        jtj = Jw.reshape(-1, P).T @ Jw.reshape(-1, P)
        jtr = Jw.reshape(-1, P).T @ rw.reshape(-1)
        cost = 0.5 * self.weight * float((self.point_weight * torch.log1p(s)).sum())
        return NormalEquations(cost, jtj, jtr)

    def reprojection_error(self, params: FaceParams) -> torch.Tensor:
        """Per-landmark error in pixels ``(L,)``."""
        _, r = self._residuals(params)
        return r.norm(dim=-1) * self.sigma


def subset_tensors(mt: ModelTensors, index: torch.Tensor) -> ModelTensors:
    """The rows of a model's tensors for a vertex subset (no triangles): cheap landmark evaluation."""
    return ModelTensors(
        shape_mean=mt.shape_mean[index], shape_basis=mt.shape_basis[index],
        expression_mean=mt.expression_mean[index], expression_basis=mt.expression_basis[index],
        colour_mean=mt.colour_mean[index], colour_basis=mt.colour_basis[index],
        triangles=torch.zeros(0, 3, dtype=torch.long, device=mt.triangles.device),
    )
