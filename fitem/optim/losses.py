"""Robust losses for least squares, applied by rescaling residuals and Jacobians.

Convention (the same as :func:`scipy.optimize.least_squares`): a robust loss is a
function ``rho(z)`` of the *squared* residual ``z = r**2``. With a scale ``C``
(``f_scale``) the loss used is ``rho_C(z) = C**2 * rho(z / C**2)``, and a block
with per-residual weights ``w >= 0`` has the cost

    cost = 0.5 * sum_i w_i * rho_C(r_i**2)

=========== ===========================================
kind        rho(z)
=========== ===========================================
``linear``  ``z`` (ordinary least squares)
``huber``   ``z`` if ``z <= 1`` else ``2 sqrt(z) - 1``
``soft_l1`` ``2 (sqrt(1 + z) - 1)``
``cauchy``  ``log(1 + z)``
``arctan``  ``arctan(z)``
=========== ===========================================

Gauss-Newton needs a Jacobian and residual whose normal equations have the
robust cost's gradient and a positive semi-definite Hessian approximation.
Both choices below rescale residuals and Jacobian rows by a factor ``s_i``:

    J~_i  = sqrt(w_i) * s_i * J_i
    r~_i  = sqrt(w_i) * rho'(z_i) * r_i / s_i

so that ``J~^T r~ = sum_i w_i rho'(z_i) r_i J_i`` is exactly the gradient of the
cost (the optimum is the same whichever ``s`` is used; only the path differs):

* ``curvature="irls"`` (default): ``s_i = sqrt(rho'(z_i))`` -- iteratively
  reweighted least squares, as Ceres does for losses with ``rho'' <= 0``. For
  the concave losses here the quadratic model majorises the robust cost, so
  Gauss-Newton steps are safe even when most residuals are outliers.
* ``curvature="triggs"``: ``s_i = sqrt(max(rho' + 2 z rho'', eps))`` -- the
  second-order correction of Triggs et al. ("Bundle adjustment -- a modern
  synthesis", 2000) that :func:`scipy.optimize.least_squares` uses. Closer to
  the true Hessian for inliers, but nearly singular when many residuals sit in
  the flat part of the loss (Huber / Cauchy / arctan outliers get ``s ~ eps``),
  which makes plain Gauss-Newton steps huge.

:func:`robust_rescale` returns ``cost``, ``r~`` and the per-residual factor
``sqrt(w) * s``; a caller that accumulates its own normal equations (a
:class:`~fitem.optim.problem.NormalEquationsBlock`) uses it per chunk:
``JtJ += (J * scale[:, None]).T @ (J * scale[:, None])``,
``Jtr += (J * scale[:, None]).T @ r_tilde``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from fitem.errors import ConfigError, InvalidInputError, ShapeError

__all__ = [
    "LOSS_KINDS",
    "CURVATURES",
    "RobustLoss",
    "RescaledResiduals",
    "robust_rescale",
    "as_loss",
    "linear",
    "huber",
    "soft_l1",
    "cauchy",
    "arctan",
]

#: Names of the supported robust losses (scipy's ``loss=`` values).
LOSS_KINDS: tuple[str, ...] = ("linear", "huber", "soft_l1", "cauchy", "arctan")
#: Gauss-Newton curvature of a robust loss: ``"irls"`` (``s**2 = rho'``) or ``"triggs"``.
CURVATURES: tuple[str, ...] = ("irls", "triggs")


@dataclass(frozen=True)
class RobustLoss:
    """A robust loss ``rho`` of the squared residual, with scale ``f_scale``.

    ``f_scale`` is the residual size (same units as the residuals) where the
    loss turns from quadratic to robust, as scipy's ``f_scale``. ``curvature``
    picks the Gauss-Newton rescaling, ``"irls"`` or ``"triggs"`` (module docstring).

    Example:
        >>> loss = RobustLoss("huber", f_scale=0.1)
        >>> rho, d1, d2 = loss.evaluate(torch.tensor([0.0, 0.01, 1.0]))
    """

    kind: str = "linear"
    f_scale: float = 1.0
    curvature: str = "irls"

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ConfigError(f"unknown robust loss {self.kind!r}; choose one of {list(LOSS_KINDS)}")
        if self.curvature not in CURVATURES:
            raise ConfigError(f"curvature must be one of {list(CURVATURES)}, got {self.curvature!r}")
        if not (float(self.f_scale) > 0.0) or not torch.isfinite(torch.tensor(float(self.f_scale))):
            raise ConfigError(f"f_scale must be a positive finite number, got {self.f_scale!r}")

    @property
    def is_linear(self) -> bool:
        return self.kind == "linear"

    def evaluate(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``rho_C(z)``, ``rho_C'(z)``, ``rho_C''(z)`` for squared residuals ``z >= 0``.

        Args:
            z: ``(M,)`` squared residuals.

        Returns:
            three ``(M,)`` tensors: value, first and second derivative with respect to ``z``.
        """
        c2 = float(self.f_scale) ** 2
        u = z / c2
        one = torch.ones_like(u)
        if self.kind == "linear":
            rho0, rho1, rho2 = u, one, torch.zeros_like(u)
        elif self.kind == "huber":
            inlier = u <= 1.0
            us = torch.clamp(u, min=1.0)  # safe for the outlier branch
            rho0 = torch.where(inlier, u, 2.0 * torch.sqrt(us) - 1.0)
            rho1 = torch.where(inlier, one, torch.rsqrt(us))
            rho2 = torch.where(inlier, torch.zeros_like(u), -0.5 * us ** -1.5)
        elif self.kind == "soft_l1":
            t = 1.0 + u
            rho0 = 2.0 * (torch.sqrt(t) - 1.0)
            rho1 = torch.rsqrt(t)
            rho2 = -0.5 * t ** -1.5
        elif self.kind == "cauchy":
            t = 1.0 + u
            rho0 = torch.log1p(u)
            rho1 = 1.0 / t
            rho2 = -1.0 / (t * t)
        else:  # arctan
            t = 1.0 + u * u
            rho0 = torch.atan(u)
            rho1 = 1.0 / t
            rho2 = -2.0 * u / (t * t)
        return c2 * rho0, rho1, rho2 / c2

    def value(self, z: torch.Tensor) -> torch.Tensor:
        """``rho_C(z)`` only (cheaper than :meth:`evaluate`), ``(M,) -> (M,)``."""
        if self.kind == "linear":
            return z
        c2 = float(self.f_scale) ** 2
        u = z / c2
        if self.kind == "huber":
            rho0 = torch.where(u <= 1.0, u, 2.0 * torch.sqrt(torch.clamp(u, min=1.0)) - 1.0)
        elif self.kind == "soft_l1":
            rho0 = 2.0 * (torch.sqrt(1.0 + u) - 1.0)
        elif self.kind == "cauchy":
            rho0 = torch.log1p(u)
        else:
            rho0 = torch.atan(u)
        return c2 * rho0


def as_loss(loss: "RobustLoss | str | None") -> RobustLoss:
    """Normalise ``None`` / a kind name / a :class:`RobustLoss` to a :class:`RobustLoss`.

    >>> as_loss("huber")
    RobustLoss(kind='huber', f_scale=1.0)
    """
    if loss is None:
        return RobustLoss("linear")
    if isinstance(loss, RobustLoss):
        return loss
    if isinstance(loss, str):
        return RobustLoss(loss)
    raise ConfigError(f"loss must be None, a name in {list(LOSS_KINDS)} or a RobustLoss, got {type(loss).__name__}")


def linear() -> RobustLoss:
    """Ordinary least squares (no robustness)."""
    return RobustLoss("linear")


def huber(f_scale: float = 1.0) -> RobustLoss:
    """Huber loss: quadratic for ``|r| <= f_scale``, linear beyond."""
    return RobustLoss("huber", f_scale)


def soft_l1(f_scale: float = 1.0) -> RobustLoss:
    """Smooth approximation of the L1 loss (pseudo-Huber)."""
    return RobustLoss("soft_l1", f_scale)


def cauchy(f_scale: float = 1.0) -> RobustLoss:
    """Cauchy (Lorentzian) loss; strongly limits the influence of outliers (non-convex)."""
    return RobustLoss("cauchy", f_scale)


def arctan(f_scale: float = 1.0) -> RobustLoss:
    """Arctan loss; bounds the cost of a single residual (non-convex)."""
    return RobustLoss("arctan", f_scale)


class RescaledResiduals(NamedTuple):
    """Output of :func:`robust_rescale`.

    Attributes:
        cost: 0-d tensor, ``0.5 * sum(w * rho_C(r**2))``.
        residual: ``(M,)`` rescaled residuals ``r~``.
        jacobian_scale: ``(M,)`` per-row factor for the Jacobian, ``J~ = jacobian_scale[:, None] * J``.
    """

    cost: torch.Tensor
    residual: torch.Tensor
    jacobian_scale: torch.Tensor


def robust_rescale(
    residual: torch.Tensor,
    weight: "torch.Tensor | float | None" = None,
    loss: "RobustLoss | str | None" = None,
) -> RescaledResiduals:
    """Cost and Gauss-Newton rescaling of weighted, robust residuals (see the module docstring).

    Args:
        residual: ``(M,)`` raw residuals ``r``.
        weight: ``None`` (all 1), a scalar, or ``(M,)`` non-negative weights ``w``.
        loss: robust loss (``None`` = linear).

    Returns:
        :class:`RescaledResiduals` ``(cost, r~, scale)`` with ``J~ = scale[:, None] * J``.

    Example:
        >>> r = torch.tensor([0.1, -3.0])
        >>> out = robust_rescale(r, weight=torch.tensor([1.0, 0.5]), loss=huber(1.0))
        >>> J = torch.eye(2)
        >>> grad = (out.jacobian_scale[:, None] * J).T @ out.residual  # gradient of out.cost
    """
    if residual.ndim != 1:
        raise ShapeError(f"residual: expected shape (M,), got {tuple(residual.shape)}")
    rho_loss = as_loss(loss)
    z = residual * residual
    if rho_loss.is_linear:
        cost_terms = z
        res = residual
        scale = torch.ones_like(residual)
    else:
        rho0, rho1, rho2 = rho_loss.evaluate(z)
        cost_terms = rho0
        if rho_loss.curvature == "irls":
            s = torch.sqrt(rho1)
        else:
            eps = torch.finfo(residual.dtype).eps
            s = torch.sqrt(torch.clamp(rho1 + 2.0 * rho2 * z, min=eps))
        res = rho1 * residual / s
        scale = s
    if weight is not None:
        w = torch.as_tensor(weight, dtype=residual.dtype, device=residual.device)
        if w.ndim > 1 or (w.ndim == 1 and w.shape[0] != residual.shape[0]):
            raise ShapeError(f"weight: expected a scalar or shape ({residual.shape[0]},), got {tuple(w.shape)}")
        if bool((w < 0).any()):
            raise InvalidInputError("weights must be non-negative; pass 0 to switch a residual off")
        sw = torch.sqrt(w)
        cost_terms = w * cost_terms
        res = sw * res
        scale = sw * scale
    return RescaledResiduals(0.5 * cost_terms.sum(), res, scale)
