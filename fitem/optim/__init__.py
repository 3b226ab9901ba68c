"""Generic nonlinear least squares (Gauss-Newton / Levenberg-Marquardt); knows nothing of faces.

Build a :class:`LeastSquaresProblem` from blocks over a flat parameter vector
``x`` ``(P,)``, then call :func:`solve`:

* :class:`ResidualBlock` -- residuals ``x -> r (M,)`` with a Jacobian (callable or
  :mod:`torch.func` autodiff), weights and a robust loss;
* :class:`NormalEquationsBlock` -- a callable that accumulates
  ``(cost, JtJ, Jtr)`` itself (e.g. chunked over pixels) plus a cheap cost-only callable;
* :class:`GaussianPrior` -- ``0.5 * sum(((x_I - mu) / sigma)**2)`` or a full precision.

All blocks follow one convention: ``cost = 0.5 * sum w * rho(r**2)`` and
``JtJ = J~^T J~``, ``Jtr = J~^T r~`` of the robustly rescaled residuals
(:func:`robust_rescale`), so a step solves
``(JtJ + lambda D) delta = -Jtr`` with the priors' terms included in the sums.

Example:
    >>> import torch
    >>> from fitem.optim import LeastSquaresProblem, ResidualBlock, GaussianPrior, solve
    >>> f = lambda x: torch.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])
    >>> res = solve(LeastSquaresProblem([ResidualBlock(f)]), torch.tensor([-1.2, 1.0], dtype=torch.float64))
    >>> res.success, res.x
"""
from __future__ import annotations

from fitem.optim.losses import (
    LOSS_KINDS,
    RescaledResiduals,
    RobustLoss,
    arctan,
    as_loss,
    cauchy,
    huber,
    linear,
    robust_rescale,
    soft_l1,
)
from fitem.optim.problem import (
    Block,
    BlockLinearization,
    GaussianPrior,
    LeastSquaresProblem,
    Linearization,
    NormalEquationsBlock,
    ResidualBlock,
)
from fitem.optim.result import IterationInfo, SolveResult, SolveStatus, Timings
from fitem.optim.solver import DAMPING_MODES, METHODS, solve

__all__ = [
    "LOSS_KINDS",
    "RobustLoss",
    "RescaledResiduals",
    "robust_rescale",
    "as_loss",
    "linear",
    "huber",
    "soft_l1",
    "cauchy",
    "arctan",
    "Block",
    "BlockLinearization",
    "ResidualBlock",
    "NormalEquationsBlock",
    "GaussianPrior",
    "LeastSquaresProblem",
    "Linearization",
    "IterationInfo",
    "SolveResult",
    "SolveStatus",
    "Timings",
    "solve",
    "METHODS",
    "DAMPING_MODES",
]
