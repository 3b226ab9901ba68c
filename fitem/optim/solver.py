"""One loop for Gauss-Newton and Levenberg-Marquardt.

Each outer iteration linearises the problem at ``x`` (cost ``F``, ``H = JtJ``,
``g = Jtr``, over the free parameters), tests for convergence, then tries steps
until one is accepted or the solve stops. The two methods differ only in how a
step is computed and accepted:

* ``"gn"`` -- solve ``(H + ridge * max(diag H) * I) delta = -g``; with
  ``line_search=True`` halve the step until the Armijo condition
  ``F(x + t delta) <= F + 1e-4 t g.delta`` holds, otherwise accept it whatever
  the cost.
* ``"lm"`` -- solve ``(H + lambda D) delta = -g`` with ``D = diag(H)``
  (Marquardt scaling; the running maximum over iterations, as MINPACK does)
  or ``D = I``; accept when the gain ratio
  ``rho = (F - F(x + delta)) / (F - model(delta))`` exceeds
  ``accept_threshold``; update ``lambda`` by Nielsen's rule
  (accepted: ``lambda *= max(1/3, 1 - (2 rho - 1)**3)``, ``nu = 2``;
  rejected: ``lambda *= nu``, ``nu *= 2``).

Linear systems are solved in float64 by Cholesky, falling back to an
eigen-decomposition pseudo-inverse (negative or tiny eigenvalues dropped) when
the matrix is not numerically positive definite.

Termination (scipy's conventions): ``ftol`` -- an accepted step decreased the
cost by less than ``ftol * F`` (LM also needs ``rho > 0.25``); ``xtol`` -- a step
is shorter than ``xtol * (xtol + ||x||)``; ``gtol`` -- ``max |g| < gtol``;
``max_iterations``. A NaN or infinite cost at ``x0``, gradient, normal equations
or step stops the solve with :attr:`SolveStatus.FAILED_NONFINITE` and the last
finite ``x``; a non-finite *trial* cost is a rejected step (LM damps more, the
line search shortens the step). Nothing is raised for numerical failures;
exceptions come only from invalid arguments or from the user's own functions.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable

import torch

from fitem.errors import ConfigError, InvalidInputError, ShapeError
from fitem.optim.problem import LeastSquaresProblem, Linearization
from fitem.optim.result import IterationInfo, SolveResult, SolveStatus, Timings

__all__ = ["solve", "METHODS", "DAMPING_MODES"]

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("lm", "gn")
DAMPING_MODES: tuple[str, ...] = ("marquardt", "identity")

_ARMIJO_C = 1e-4
_LAMBDA_MIN = 1e-15


def _solve_psd(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor | None, bool]:
    """Solve ``a x = b`` for symmetric ``a`` (float64). Returns ``(x or None, used_fallback)``."""
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        x = torch.cholesky_solve(b[:, None], chol)[:, 0]
        if bool(torch.isfinite(x).all()):
            return x, False
    try:
        evals, evecs = torch.linalg.eigh(a)
    except torch.linalg.LinAlgError:
        return None, True
    top = float(evals.abs().max()) if evals.numel() else 0.0
    tol = max(top, 1e-300) * a.shape[0] * torch.finfo(a.dtype).eps
    inv = torch.where(evals > tol, 1.0 / torch.where(evals > tol, evals, torch.ones_like(evals)), torch.zeros_like(evals))
    x = evecs @ (inv * (evecs.T @ b))
    return x, True


def _finite(*ts: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in ts)


def solve(
    problem: LeastSquaresProblem,
    x0: torch.Tensor,
    *,
    method: str = "lm",
    max_iterations: int = 100,
    ftol: float = 1e-8,
    xtol: float = 1e-8,
    gtol: float = 1e-8,
    initial_damping: float = 1e-3,
    damping: str = "marquardt",
    accept_threshold: float = 0.0,
    max_trials: int = 16,
    line_search: bool = True,
    gn_ridge: float = 0.0,
    free_mask: torch.Tensor | None = None,
    final_jtj: bool = True,
    callback: Callable[[IterationInfo], "bool | None"] | None = None,
) -> SolveResult:
    """Minimise ``problem``'s cost from ``x0`` by Levenberg-Marquardt or Gauss-Newton.

    Args:
        problem: the :class:`~fitem.optim.problem.LeastSquaresProblem`.
        x0: ``(P,)`` float32 or float64 start (not modified); the result has its dtype and device.
        method: ``"lm"`` (Levenberg-Marquardt) or ``"gn"`` (Gauss-Newton).
        max_iterations: maximum outer iterations (linearisations that lead to a step).
        ftol: relative cost-decrease tolerance (0 disables).
        xtol: relative step-size tolerance (0 disables).
        gtol: absolute tolerance on ``max |gradient|`` (0 disables).
        initial_damping: LM only. With ``damping="marquardt"`` the dimensionless start
            ``lambda_0``; with ``"identity"``, ``lambda_0 = initial_damping * max(diag JtJ)``
            (Nielsen's ``tau``).
        damping: LM only: ``"marquardt"`` (``D = diag JtJ``, scale invariant) or ``"identity"``.
        accept_threshold: LM only: accept a step when its gain ratio exceeds this (0 = any decrease).
        max_trials: LM: trial steps allowed per iteration; GN: line-search halvings.
            Exhausting them stops with :attr:`SolveStatus.STOPPED_NO_DECREASE` (the best
            point so far) after an accepted step, else :attr:`SolveStatus.FAILED_NO_PROGRESS`.
        line_search: GN only: backtracking (Armijo) line search on the cost.
        gn_ridge: GN only: ``gn_ridge * max(diag JtJ)`` is added to the diagonal.
        free_mask: ``(P,)`` bool; parameters where it is False stay at ``x0``.
        final_jtj: evaluate the normal equations at the solution when the last ones are
            stale (one extra linearisation), so ``result.jtj`` is exact at ``result.x``.
        callback: called with an :class:`IterationInfo` after each iteration; returning
            ``True`` stops the solve with :attr:`SolveStatus.STOPPED_BY_CALLBACK`.

    Returns:
        a :class:`~fitem.optim.result.SolveResult`.

    Example:
        >>> f = lambda x: torch.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])
        >>> res = solve(LeastSquaresProblem([ResidualBlock(f)]), torch.tensor([-1.2, 1.0], dtype=torch.float64))
        >>> res.status, res.x      # SolveStatus.CONVERGED_..., tensor([1., 1.])
    """
    t_start = time.perf_counter()
    if not isinstance(problem, LeastSquaresProblem):
        raise ConfigError(f"problem must be a LeastSquaresProblem, got {type(problem).__name__}")
    if not isinstance(x0, torch.Tensor) or x0.ndim != 1 or not x0.is_floating_point():
        shape = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise ShapeError(f"x0: expected a 1-D floating-point torch tensor (P,), got {shape}")
    if method not in METHODS:
        raise ConfigError(f"method must be one of {list(METHODS)}, got {method!r}")
    if damping not in DAMPING_MODES:
        raise ConfigError(f"damping must be one of {list(DAMPING_MODES)}, got {damping!r}")
    if int(max_iterations) < 0:
        raise ConfigError(f"max_iterations must be >= 0, got {max_iterations}")
    if int(max_trials) < 1:
        raise ConfigError(f"max_trials must be >= 1, got {max_trials}")
    for label, v in (("ftol", ftol), ("xtol", xtol), ("gtol", gtol), ("gn_ridge", gn_ridge)):
        if not (float(v) >= 0.0) or math.isinf(float(v)):
            raise ConfigError(f"{label} must be a finite number >= 0, got {v}")
    if not (float(initial_damping) > 0.0) or math.isinf(float(initial_damping)):
        raise ConfigError(f"initial_damping must be a positive finite number, got {initial_damping}")
    if not x0.isfinite().all():
        raise InvalidInputError("x0 contains NaN or inf; start from finite parameters")

    p = x0.shape[0]
    if free_mask is None:
        free = torch.ones(p, dtype=torch.bool, device=x0.device)
    else:
        free = torch.as_tensor(free_mask, device=x0.device)
        if free.dtype != torch.bool or tuple(free.shape) != (p,):
            raise ShapeError(f"free_mask: expected a bool tensor of shape ({p},), got {tuple(free.shape)} {free.dtype}")
    free_idx = torch.nonzero(free).reshape(-1)
    if free_idx.numel() == 0:
        raise ConfigError("free_mask leaves no free parameter; set at least one entry True")
    all_free = free_idx.numel() == p

    t_eval = 0.0
    t_lin = 0.0
    t_solve = 0.0
    nfev = 0
    njev = 0
    fallbacks = 0

    def linearize(x: torch.Tensor) -> Linearization:
        nonlocal t_eval, t_lin, nfev, njev
        t0 = time.perf_counter()
        out = problem.linearize(x)
        dt = time.perf_counter() - t0
        t_eval += dt
        t_lin += dt
        nfev += 1
        njev += 1
        return out

    def cost_at(x: torch.Tensor) -> float:
        nonlocal t_eval, nfev
        t0 = time.perf_counter()
        c = problem.cost(x)
        t_eval += time.perf_counter() - t0
        nfev += 1
        return c

    def lin_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
        nonlocal t_solve, fallbacks
        t0 = time.perf_counter()
        out, used_fallback = _solve_psd(a, b)
        t_solve += time.perf_counter() - t0
        fallbacks += int(used_fallback)
        return out

    x = x0.detach().clone()
    lin: Linearization | None = linearize(x)
    lin_is_current = True
    cost = lin.cost
    initial_cost = cost
    cost_history = [cost]
    history: list[IterationInfo] = []
    per_iter: list[float] = []
    status: SolveStatus | None = None
    message = ""
    if not (math.isfinite(cost) and _finite(lin.jtj, lin.jtr)):
        status = SolveStatus.FAILED_NONFINITE
        message = f"cost or normal equations at x0 are not finite (cost={cost}); check the residual functions at x0"
        lin_is_current = False

    lam: float | None = None
    nu = 2.0
    dscale: torch.Tensor | None = None
    iterations = 0
    any_accepted = False

    while status is None:
        if all_free:
            h, g = lin.jtj, lin.jtr
        else:
            h, g = lin.jtj[free_idx][:, free_idx], lin.jtr[free_idx]
        h = 0.5 * (h + h.T)
        gnorm = float(g.abs().max())
        if gnorm <= gtol:
            status = SolveStatus.CONVERGED_GTOL
            message = f"gtol satisfied: max |gradient| = {gnorm:.3g} <= gtol = {gtol:g}"
            break
        if iterations >= max_iterations:
            status = SolveStatus.MAX_ITERATIONS
            message = f"reached max_iterations = {max_iterations}"
            break
        iterations += 1
        t_iter = time.perf_counter()
        x_free = x[free_idx].to(torch.float64)
        x_norm = float(torch.linalg.vector_norm(x_free))
        xtol_limit = xtol * (xtol + x_norm)
        cost_before = cost
        accepted = False
        trials = 0
        step_norm = float("nan")
        rho = float("nan")
        t_step = 1.0
        lam_used = 0.0
        x_new = x
        cost_new = cost

        def predicted(delta: torch.Tensor) -> float:
            return float(-(g @ delta) - 0.5 * (delta @ (h @ delta)))

        if method == "lm":
            diag = h.diagonal().clone()
            if damping == "marquardt":
                dscale = diag if dscale is None else torch.maximum(dscale, diag)
                top = float(dscale.max())
                dvec = torch.clamp(dscale, min=1e-12 * top) if top > 0 else torch.ones_like(dscale)
            else:
                dvec = torch.ones_like(diag)
            if lam is None:
                if damping == "marquardt":
                    lam = float(initial_damping)
                else:
                    top = float(diag.max())
                    lam = float(initial_damping) * (top if top > 0 else 1.0)
            while True:
                trials += 1
                lam_used = lam
                delta = lin_solve(h + torch.diag(lam * dvec), -g)
                if delta is None:
                    status = SolveStatus.FAILED_LINEAR_SOLVE
                    message = "could not solve the damped normal equations (eigen-decomposition failed)"
                    break
                if not _finite(delta):
                    status = SolveStatus.FAILED_NONFINITE
                    message = "the step is not finite; the normal equations are probably ill-scaled"
                    break
                step_norm = float(torch.linalg.vector_norm(delta))
                if step_norm <= xtol_limit:
                    status = SolveStatus.CONVERGED_XTOL
                    message = f"xtol satisfied: step norm {step_norm:.3g} <= xtol * (xtol + ||x||) = {xtol_limit:.3g}"
                    break
                x_try = x.clone()
                x_try[free_idx] = (x_free + delta).to(x.dtype)
                c_try = cost_at(x_try)
                pred = predicted(delta)
                actual = cost - c_try
                if not math.isfinite(c_try):
                    rho = float("-inf")
                elif pred > 0:
                    rho = actual / pred
                else:
                    rho = 1.0 if actual > 0 else -1.0
                if math.isfinite(c_try) and actual > 0 and rho > accept_threshold:
                    accepted = True
                    x_new, cost_new = x_try, c_try
                    lam = max(lam * max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), _LAMBDA_MIN)
                    nu = 2.0
                    break
                lam *= nu
                nu *= 2.0
                if trials >= max_trials:
                    if any_accepted:
                        status = SolveStatus.STOPPED_NO_DECREASE
                        message = f"no further decrease in {trials} damped trial steps (lambda = {lam:.3g})"
                    else:
                        status = SolveStatus.FAILED_NO_PROGRESS
                        message = (
                            f"no decrease after {trials} damped trial steps (lambda = {lam:.3g}); the cost may be "
                            "noisy at this precision -- use float64, or raise ftol/xtol"
                        )
                    break
        else:  # Gauss-Newton
            a = h
            if gn_ridge > 0:
                a = h + torch.eye(h.shape[0], dtype=h.dtype, device=h.device) * (gn_ridge * float(h.diagonal().max()))
            delta = lin_solve(a, -g)
            if delta is None:
                status = SolveStatus.FAILED_LINEAR_SOLVE
                message = "could not solve the normal equations (eigen-decomposition failed)"
            elif not _finite(delta):
                status = SolveStatus.FAILED_NONFINITE
                message = "the Gauss-Newton step is not finite; the normal equations are probably ill-scaled"
            else:
                full_norm = float(torch.linalg.vector_norm(delta))
                step_norm = full_norm
                slope = float(g @ delta)
                pred_full = predicted(delta)
                if full_norm <= xtol_limit:
                    status = SolveStatus.CONVERGED_XTOL
                    message = f"xtol satisfied: step norm {full_norm:.3g} <= xtol * (xtol + ||x||) = {xtol_limit:.3g}"
                elif not line_search:
                    trials = 1
                    x_try = x.clone()
                    x_try[free_idx] = (x_free + delta).to(x.dtype)
                    c_try = cost_at(x_try)
                    if not math.isfinite(c_try):
                        status = SolveStatus.FAILED_NONFINITE
                        message = "the cost after a Gauss-Newton step is not finite (enable line_search or use method='lm')"
                    else:
                        accepted = True
                        x_new, cost_new = x_try, c_try
                        rho = (cost - c_try) / pred_full if pred_full > 0 else float("nan")
                else:
                    t = 1.0
                    while True:
                        trials += 1
                        step = t * delta
                        x_try = x.clone()
                        x_try[free_idx] = (x_free + step).to(x.dtype)
                        c_try = cost_at(x_try)
                        bound = cost + _ARMIJO_C * t * min(slope, 0.0)
                        if math.isfinite(c_try) and c_try < cost and c_try <= bound:
                            accepted = True
                            x_new, cost_new = x_try, c_try
                            pred_t = predicted(step)
                            rho = (cost - c_try) / pred_t if pred_t > 0 else float("nan")
                            t_step = t
                            step_norm = t * full_norm
                            break
                        t *= 0.5
                        t_step = t
                        step_norm = t * full_norm
                        if step_norm <= xtol_limit:
                            status = SolveStatus.CONVERGED_XTOL
                            message = (
                                f"xtol satisfied: line-search step {step_norm:.3g} <= xtol * (xtol + ||x||) = {xtol_limit:.3g}"
                            )
                            break
                        if trials >= max_trials:
                            if any_accepted:
                                status = SolveStatus.STOPPED_NO_DECREASE
                                message = f"line search found no further decrease in {trials} halvings"
                            else:
                                status = SolveStatus.FAILED_NO_PROGRESS
                                message = f"line search found no decrease in {trials} halvings; try method='lm'"
                            break

        block_costs_before = lin.block_costs
        any_accepted = any_accepted or accepted
        if accepted:
            dec = cost - cost_new
            x, cost = x_new, cost_new
            cost_history.append(cost)
            lin_is_current = False
            if status is None and 0 <= dec <= ftol * cost_before and (method == "gn" or rho > 0.25):
                status = SolveStatus.CONVERGED_FTOL
                message = f"ftol satisfied: relative cost decrease {dec / max(cost_before, 1e-300):.3g} <= ftol = {ftol:g}"
            elif status is None and step_norm <= xtol_limit:
                status = SolveStatus.CONVERGED_XTOL
                message = f"xtol satisfied: step norm {step_norm:.3g} <= xtol * (xtol + ||x||) = {xtol_limit:.3g}"

        seconds = time.perf_counter() - t_iter
        info = IterationInfo(
            iteration=iterations,
            x=x,
            cost=cost,
            cost_before=cost_before,
            accepted=accepted,
            step_norm=step_norm,
            gradient_norm=gnorm,
            damping=lam_used,
            gain_ratio=rho,
            step_size=t_step if method == "gn" else 1.0,
            trials=trials,
            block_costs=block_costs_before,
            seconds=seconds,
        )
        history.append(info)
        logger.debug(
            "iter %d cost %.6g -> %.6g accepted=%s |step|=%.3g |g|=%.3g lambda=%.3g rho=%.3g trials=%d",
            iterations, cost_before, cost, accepted, step_norm, gnorm, lam_used, rho, trials,
        )
        if status is None and callback is not None and callback(info):
            status = SolveStatus.STOPPED_BY_CALLBACK
            message = f"the callback asked to stop after iteration {iterations}"
        if status is None and accepted:
            if iterations >= max_iterations and not final_jtj:
                status = SolveStatus.MAX_ITERATIONS
                message = f"reached max_iterations = {max_iterations}"
            else:
                lin = linearize(x)
                lin_is_current = True
                if not (math.isfinite(lin.cost) and _finite(lin.jtj, lin.jtr)):
                    status = SolveStatus.FAILED_NONFINITE
                    message = f"normal equations at iteration {iterations} are not finite; check the Jacobians"
                    lin_is_current = False
        per_iter.append(time.perf_counter() - t_iter)

    if final_jtj and not lin_is_current and not status.failed:
        lin = linearize(x)
        lin_is_current = math.isfinite(lin.cost) and _finite(lin.jtj, lin.jtr)
    jtj = lin.jtj if (lin_is_current and lin is not None) else None
    grad = lin.jtr if (lin_is_current and lin is not None) else None
    block_costs = dict(lin.block_costs) if (lin_is_current and lin is not None) else {}
    total = time.perf_counter() - t_start
    if status.failed:
        logger.warning("least-squares solve stopped: %s", message)
    else:
        logger.debug("least-squares solve stopped: %s", message)
    return SolveResult(
        x=x,
        cost=cost,
        initial_cost=initial_cost,
        status=status,
        message=message,
        iterations=iterations,
        nfev=nfev,
        njev=njev,
        cost_history=cost_history,
        history=history,
        timings=Timings(total=total, per_iteration=tuple(per_iter), evaluate=t_eval, linearize=t_lin, linear_solve=t_solve),
        jtj=jtj,
        gradient=grad,
        free_mask=free,
        block_costs=block_costs,
        fallback_solves=fallbacks,
    )
