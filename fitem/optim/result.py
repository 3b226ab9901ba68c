"""What a solve returns: :class:`SolveStatus`, :class:`IterationInfo`, :class:`Timings`, :class:`SolveResult`."""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field

import torch

__all__ = ["SolveStatus", "IterationInfo", "Timings", "SolveResult"]

logger = logging.getLogger(__name__)


class SolveStatus(enum.Enum):
    """Why a solve stopped."""

    #: the relative cost decrease of an accepted step fell below ``ftol``.
    CONVERGED_FTOL = "converged_ftol"
    #: the step norm fell below ``xtol * (xtol + ||x||)``.
    CONVERGED_XTOL = "converged_xtol"
    #: the largest gradient entry (of the free parameters) fell below ``gtol``.
    CONVERGED_GTOL = "converged_gtol"
    #: ``max_iterations`` steps were taken without meeting a convergence test.
    MAX_ITERATIONS = "max_iterations"
    #: the per-iteration callback asked to stop.
    STOPPED_BY_CALLBACK = "stopped_by_callback"
    #: after at least one accepted step, ``max_trials`` trial steps in a row found no decrease:
    #: the best point so far is returned (a cost with a noise floor, e.g. a rasterised one).
    STOPPED_NO_DECREASE = "stopped_no_decrease"
    #: the cost, gradient, normal equations or step became NaN or infinite.
    FAILED_NONFINITE = "failed_nonfinite"
    #: no trial step decreased the cost from the start point (LM damping / line search exhausted).
    FAILED_NO_PROGRESS = "failed_no_progress"
    #: the damped normal equations could not be solved (even by eigen-decomposition).
    FAILED_LINEAR_SOLVE = "failed_linear_solve"

    @property
    def converged(self) -> bool:
        return self in (SolveStatus.CONVERGED_FTOL, SolveStatus.CONVERGED_XTOL, SolveStatus.CONVERGED_GTOL)

    @property
    def failed(self) -> bool:
        return self.value.startswith("failed")


@dataclass(frozen=True)
class IterationInfo:
    """One outer iteration (one linearisation, one or more trial steps).

    Attributes:
        iteration: 1-based iteration number.
        x: ``(P,)`` parameters after the iteration (the old ones if no step was accepted).
        cost: cost after the iteration.
        cost_before: cost at the linearisation point.
        accepted: whether a step was accepted.
        step_norm: Euclidean norm of the last trial step (free parameters).
        gradient_norm: largest absolute gradient entry at the linearisation point.
        damping: LM damping ``lambda`` of the last trial (0 for Gauss-Newton).
        gain_ratio: actual / predicted cost reduction of the last trial (nan if not evaluated).
        step_size: line-search factor of the last trial (1 for LM).
        trials: number of trial steps whose cost was evaluated.
        block_costs: cost of each block at the linearisation point.
        seconds: wall time of the iteration.
    """

    iteration: int
    x: torch.Tensor
    cost: float
    cost_before: float
    accepted: bool
    step_norm: float
    gradient_norm: float
    damping: float
    gain_ratio: float
    step_size: float
    trials: int
    block_costs: dict[str, float]
    seconds: float


@dataclass(frozen=True)
class Timings:
    """Wall-clock seconds of a solve.

    Attributes:
        total: the whole solve.
        per_iteration: one entry per outer iteration.
        evaluate: inside the problem's blocks (cost and normal equations).
        linearize: the part of ``evaluate`` spent building normal equations.
        linear_solve: solving the damped normal equations.
    """

    total: float
    per_iteration: tuple[float, ...]
    evaluate: float
    linearize: float
    linear_solve: float


@dataclass(frozen=True)
class SolveResult:
    """Outcome of :func:`fitem.optim.solve`.

    Attributes:
        x: ``(P,)`` best parameters found (dtype and device of ``x0``).
        cost: cost at ``x``.
        initial_cost: cost at ``x0``.
        status: a :class:`SolveStatus`.
        message: human-readable reason for stopping.
        iterations: outer iterations performed.
        nfev: cost evaluations (including linearisations).
        njev: linearisations (normal-equation evaluations).
        cost_history: cost at ``x0`` followed by the cost after each accepted step.
        history: one :class:`IterationInfo` per iteration.
        timings: :class:`Timings`.
        jtj: ``(P, P)`` float64 Gauss-Newton Hessian of the whole cost (data + priors) at
            ``x``, or ``None`` if it was not evaluated there (``final_jtj=False`` or a failure).
        gradient: ``(P,)`` float64 gradient at ``x`` (``None`` like ``jtj``).
        free_mask: ``(P,)`` bool, the parameters that were optimised.
        block_costs: cost of each block at ``x`` (empty if not evaluated).
        fallback_solves: linear solves that needed the eigen-decomposition fallback
            (the damped normal equations were not numerically positive definite).
    """

    x: torch.Tensor
    cost: float
    initial_cost: float
    status: SolveStatus
    message: str
    iterations: int
    nfev: int
    njev: int
    cost_history: list[float]
    history: list[IterationInfo]
    timings: Timings
    jtj: torch.Tensor | None
    gradient: torch.Tensor | None
    free_mask: torch.Tensor
    block_costs: dict[str, float] = field(default_factory=dict)
    fallback_solves: int = 0

    @property
    def success(self) -> bool:
        """True when a convergence test (ftol, xtol or gtol) stopped the solve."""
        return self.status.converged

    def covariance(self) -> torch.Tensor:
        """Laplace approximation of the posterior covariance, ``(P, P)`` float64.

        ``inv(JtJ)`` over the free parameters (zeros for fixed ones). This is a
        covariance only when the cost is a negative log-likelihood, i.e. residuals are
        in units of their noise standard deviation and priors are included as blocks.
        A singular ``JtJ`` is pseudo-inverted (with a warning in the log).

        Example:
            >>> std = result.marginal_std()  # == result.covariance().diagonal().sqrt()
        """
        if self.jtj is None:
            from fitem.errors import InvalidInputError

            raise InvalidInputError(
                f"no JtJ at the solution (status {self.status.name}); solve with final_jtj=True and a finite problem"
            )
        free = self.free_mask.to(self.jtj.device)
        h = self.jtj[free][:, free]
        h = 0.5 * (h + h.T)
        chol, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:
            inv = torch.cholesky_inverse(chol)
        else:
            logger.warning("JtJ at the solution is not positive definite; using a pseudo-inverse for the covariance")
            inv = torch.linalg.pinv(h, hermitian=True)
        p = self.jtj.shape[0]
        cov = torch.zeros(p, p, dtype=inv.dtype, device=inv.device)
        idx = torch.nonzero(free).reshape(-1)
        cov[idx[:, None], idx[None, :]] = inv
        return cov

    def marginal_std(self) -> torch.Tensor:
        """``(P,)`` posterior standard deviations from :meth:`covariance` (0 for fixed parameters)."""
        return torch.sqrt(torch.clamp(self.covariance().diagonal(), min=0.0))
