"""Least-squares problems as sums of blocks over one flat parameter vector.

A :class:`LeastSquaresProblem` is a list of blocks; each block contributes a
cost and Gauss-Newton normal equations at a parameter vector ``x`` of shape
``(P,)``. The total is

    cost(x) = sum_b cost_b(x)
    JtJ(x)  = sum_b JtJ_b(x)     (P, P), Gauss-Newton Hessian approximation
    Jtr(x)  = sum_b Jtr_b(x)     (P,),   gradient of cost(x)

and a Gauss-Newton step solves ``JtJ delta = -Jtr`` (LM adds damping). Three
kinds of block:

* :class:`ResidualBlock` -- a residual function ``x -> r (M,)`` with a Jacobian
  (a callable ``x -> J (M, P)``, or forward/reverse-mode autodiff via
  :mod:`torch.func`), weights and a robust loss:
  ``cost = 0.5 * sum_i w_i rho(r_i**2)`` (see :mod:`fitem.optim.losses`).
* :class:`NormalEquationsBlock` -- the fast path for blocks with very many
  residuals (pixels): the caller accumulates ``(cost, JtJ, Jtr)`` itself, e.g.
  chunk by chunk, and never materialises ``J``. It must follow the same
  convention: ``cost = 0.5 * sum w rho(r**2)``, and ``JtJ = J~^T J~``,
  ``Jtr = J~^T r~`` of the robustly rescaled, weighted residuals (use
  :func:`fitem.optim.losses.robust_rescale`), so that ``Jtr`` is the gradient
  of ``cost``. A separate ``cost_fn`` evaluates only the cost (used to test
  trial steps, so it should be much cheaper than ``linearize_fn``).
* :class:`GaussianPrior` -- ``0.5 * (x_I - mu)^T Lambda (x_I - mu)`` with a
  diagonal (``1 / sigma**2``) or full precision ``Lambda`` over a subset ``I``
  of the parameters; closed-form normal equations.

The problem sums in float64 whatever the dtype of ``x``, so the linear algebra
of the solver is done in float64.
"""
from __future__ import annotations

import abc
from typing import Callable, NamedTuple, Sequence

import torch

from fitem.errors import ConfigError, InvalidInputError, ShapeError
from fitem.optim.losses import RobustLoss, as_loss, robust_rescale

__all__ = [
    "Block",
    "BlockLinearization",
    "ResidualBlock",
    "NormalEquationsBlock",
    "GaussianPrior",
    "LeastSquaresProblem",
    "Linearization",
]

JACOBIAN_MODES: tuple[str, ...] = ("auto", "forward", "reverse", "autograd")


class BlockLinearization(NamedTuple):
    """One block's contribution at ``x``: 0-d ``cost``, ``jtj`` ``(P, P)`` and ``jtr`` ``(P,)``."""

    cost: torch.Tensor
    jtj: torch.Tensor
    jtr: torch.Tensor


class Linearization(NamedTuple):
    """A whole problem's normal equations at ``x`` (float64).

    Attributes:
        cost: total cost (Python float).
        jtj: ``(P, P)`` float64 Gauss-Newton Hessian approximation.
        jtr: ``(P,)`` float64 gradient of the cost.
        block_costs: cost of each block by name.
    """

    cost: float
    jtj: torch.Tensor
    jtr: torch.Tensor
    block_costs: dict[str, float]


def _check_x(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 1:
        raise ShapeError(f"x: expected shape (P,), got {tuple(x.shape)}; flatten the parameters first (ParamLayout)")
    if not x.is_floating_point():
        raise InvalidInputError(f"x must be floating point (float32 or float64), got {x.dtype}")


def _as_indices(indices, device) -> torch.Tensor | None:
    if indices is None:
        return None
    idx = torch.as_tensor(indices, device=device)
    if idx.dtype == torch.bool:
        idx = torch.nonzero(idx).reshape(-1)
    if idx.ndim != 1 or idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ShapeError(f"indices: expected a 1-D integer (or boolean mask) index, got {tuple(idx.shape)} {idx.dtype}")
    if idx.numel() == 0:
        raise ConfigError("indices is empty; a block must depend on at least one parameter")
    return idx.to(torch.int64)


def _scatter(jtj_sub: torch.Tensor, jtr_sub: torch.Tensor, idx: torch.Tensor | None, p: int):
    if idx is None:
        return jtj_sub, jtr_sub
    jtj = torch.zeros(p, p, dtype=jtj_sub.dtype, device=jtj_sub.device)
    jtr = torch.zeros(p, dtype=jtr_sub.dtype, device=jtr_sub.device)
    jtj.index_put_((idx[:, None], idx[None, :]), jtj_sub, accumulate=True)
    jtr.index_put_((idx,), jtr_sub, accumulate=True)
    return jtj, jtr


class Block(abc.ABC):
    """One term of a least-squares cost. Subclasses implement :meth:`cost` and :meth:`linearize`."""

    name: str = "block"

    @abc.abstractmethod
    def cost(self, x: torch.Tensor) -> torch.Tensor:
        """0-d cost at ``x`` ``(P,)``."""

    @abc.abstractmethod
    def linearize(self, x: torch.Tensor) -> BlockLinearization:
        """``(cost, JtJ (P, P), Jtr (P,))`` at ``x`` ``(P,)``."""


class ResidualBlock(Block):
    """Residuals ``r(x)`` with a Jacobian, weights and a robust loss.

    ``cost = 0.5 * sum_i w_i * rho(r_i(x)**2)``.

    Args:
        residual_fn: ``x_sub -> r``; ``x_sub`` is ``x`` ``(P,)``, or ``x[indices]`` ``(K,)``
            when ``indices`` is given. ``r`` may have any shape; it is flattened to ``(M,)``.
        jacobian: a callable ``x_sub -> J`` with ``M * K`` elements (reshaped to ``(M, K)``),
            or ``"forward"`` / ``"reverse"`` (:func:`torch.func.jacfwd` / :func:`torch.func.jacrev`),
            or ``"auto"`` (reverse when ``M < K``, else forward), or ``"autograd"``
            (:func:`torch.autograd.functional.jacobian`, one backward pass per residual, no
            ``vmap``: slower per call but without the ~2 s that the first :mod:`torch.func`
            transform of a process spends loading). Autodiff needs a ``residual_fn`` written
            with differentiable torch operations; use it for small blocks (landmarks,
            regularisers).
        weight: ``None``, a scalar or ``(M,)`` non-negative weights.
        loss: ``None`` (least squares), a loss name or a :class:`~fitem.optim.losses.RobustLoss`.
        indices: optional ``(K,)`` integer indices (or a ``(P,)`` boolean mask) of the
            parameters the block depends on.
        name: label used in cost breakdowns.

    Example:
        >>> rosen = ResidualBlock(lambda x: torch.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]]))
        >>> problem = LeastSquaresProblem([rosen])
    """

    def __init__(
        self,
        residual_fn: Callable[[torch.Tensor], torch.Tensor],
        *,
        jacobian: "Callable[[torch.Tensor], torch.Tensor] | str" = "auto",
        weight: "torch.Tensor | float | None" = None,
        loss: "RobustLoss | str | None" = None,
        indices=None,
        name: str = "residual",
    ) -> None:
        if not callable(residual_fn):
            raise ConfigError("residual_fn must be callable x -> residuals")
        if not callable(jacobian) and jacobian not in JACOBIAN_MODES:
            raise ConfigError(f"jacobian must be a callable or one of {list(JACOBIAN_MODES)}, got {jacobian!r}")
        self.residual_fn = residual_fn
        self.jacobian = jacobian
        if weight is not None:
            w = torch.as_tensor(weight)
            if w.ndim > 1:
                raise ShapeError(f"weight: expected a scalar or shape (M,), got {tuple(w.shape)}")
            if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
                raise InvalidInputError("weight must be finite and non-negative; use 0 to switch a residual off")
        self.weight = weight
        self.loss = as_loss(loss)
        self.indices = _as_indices(indices, None)
        self.name = name

    def _sub(self, x: torch.Tensor) -> torch.Tensor:
        if self.indices is None:
            return x
        idx = self.indices.to(x.device)
        if int(idx.max()) >= x.shape[0] or int(idx.min()) < -x.shape[0]:
            raise ShapeError(f"block {self.name!r}: indices reach {int(idx.max())} but x has only {x.shape[0]} entries")
        return x[idx]

    def _weight(self, x: torch.Tensor):
        if self.weight is None:
            return None
        return torch.as_tensor(self.weight, dtype=x.dtype, device=x.device)

    def residuals(self, x: torch.Tensor) -> torch.Tensor:
        """Raw residuals ``(M,)`` at ``x`` ``(P,)`` (no weights, no loss)."""
        _check_x(x)
        r = self.residual_fn(self._sub(x))
        if not isinstance(r, torch.Tensor):
            raise InvalidInputError(f"block {self.name!r}: residual_fn must return a torch.Tensor, got {type(r).__name__}")
        return r.reshape(-1)

    def jacobian_matrix(self, x: torch.Tensor, m: int | None = None) -> torch.Tensor:
        """Jacobian ``(M, K)`` of the raw residuals with respect to ``x_sub`` (``K = P`` without indices)."""
        _check_x(x)
        xs = self._sub(x).detach()
        k = xs.shape[0]
        mode = self.jacobian
        if callable(mode):
            jac = mode(xs)
        else:
            if m is None:
                m = self.residuals(x).shape[0]
            if mode == "auto":
                mode = "reverse" if m < k else "forward"
            fn = (lambda v: self.residual_fn(v).reshape(-1))
            if mode == "autograd":
                jac = torch.autograd.functional.jacobian(fn, xs)
            elif mode == "reverse":
                jac = torch.func.jacrev(fn)(xs)
            else:
                jac = torch.func.jacfwd(fn)(xs)
        if not isinstance(jac, torch.Tensor):
            raise InvalidInputError(f"block {self.name!r}: jacobian must return a torch.Tensor, got {type(jac).__name__}")
        if m is not None and jac.numel() != m * k:
            raise ShapeError(f"block {self.name!r}: jacobian: expected {m}x{k} = {m * k} elements, got shape {tuple(jac.shape)}")
        return jac.reshape(-1, k)

    def cost(self, x: torch.Tensor) -> torch.Tensor:
        r = self.residuals(x)
        w = self._weight(x)
        terms = self.loss.value(r * r)
        if w is not None:
            if w.ndim == 1 and w.shape[0] != r.shape[0]:
                raise ShapeError(f"block {self.name!r}: weight has {w.shape[0]} entries but there are {r.shape[0]} residuals")
            terms = w * terms
        return 0.5 * terms.sum()

    def linearize(self, x: torch.Tensor) -> BlockLinearization:
        r = self.residuals(x).detach()
        jac = self.jacobian_matrix(x, m=r.shape[0]).to(r.dtype)
        out = robust_rescale(r, self._weight(x), self.loss)
        js = jac * out.jacobian_scale[:, None]
        jtj, jtr = _scatter(js.T @ js, js.T @ out.residual, self.indices, x.shape[0])
        return BlockLinearization(out.cost, jtj, jtr)


class NormalEquationsBlock(Block):
    """A block that accumulates its own normal equations (never holding ``J``).

    Args:
        linearize_fn: ``x (P,) -> (cost, JtJ (P, P), Jtr (P,))`` with
            ``cost = 0.5 * sum w rho(r**2)`` and ``JtJ``, ``Jtr`` of the robustly rescaled,
            weighted residuals (see :func:`fitem.optim.losses.robust_rescale`), so that
            ``Jtr`` is the gradient of ``cost`` and the Gauss-Newton step solves
            ``(JtJ + prior + lambda D) delta = -(Jtr + prior gradient)``.
        cost_fn: ``x (P,) -> cost`` (0-d tensor or float), the same cost as ``linearize_fn``
            returns, computed without derivatives (used to test LM / line-search trial steps).
        name: label used in cost breakdowns.

    Example:
        >>> A, b = torch.randn(100, 3, dtype=torch.float64), torch.randn(100, dtype=torch.float64)
        >>> def lin(x):
        ...     r = A @ x - b
        ...     return 0.5 * r @ r, A.T @ A, A.T @ r
        >>> block = NormalEquationsBlock(lin, lambda x: 0.5 * ((A @ x - b) ** 2).sum())
    """

    def __init__(
        self,
        linearize_fn: Callable[[torch.Tensor], tuple],
        cost_fn: Callable[[torch.Tensor], "torch.Tensor | float"],
        *,
        name: str = "normal_equations",
    ) -> None:
        if not callable(linearize_fn) or not callable(cost_fn):
            raise ConfigError("NormalEquationsBlock needs callables linearize_fn(x) -> (cost, JtJ, Jtr) and cost_fn(x) -> cost")
        self.linearize_fn = linearize_fn
        self.cost_fn = cost_fn
        self.name = name

    def cost(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.cost_fn(x))

    def linearize(self, x: torch.Tensor) -> BlockLinearization:
        out = self.linearize_fn(x)
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise InvalidInputError(f"block {self.name!r}: linearize_fn must return (cost, JtJ, Jtr)")
        cost, jtj, jtr = out
        p = x.shape[0]
        jtj = torch.as_tensor(jtj)
        jtr = torch.as_tensor(jtr)
        if tuple(jtj.shape) != (p, p):
            raise ShapeError(f"block {self.name!r}: JtJ: expected shape ({p}, {p}), got {tuple(jtj.shape)}")
        if tuple(jtr.reshape(-1).shape) != (p,):
            raise ShapeError(f"block {self.name!r}: Jtr: expected shape ({p},), got {tuple(jtr.shape)}")
        return BlockLinearization(torch.as_tensor(cost), jtj, jtr.reshape(-1))


class GaussianPrior(Block):
    """Gaussian prior (Tikhonov / ridge term) ``0.5 * (x_I - mu)^T Lambda (x_I - mu)``.

    Give either ``sigma`` (diagonal: ``Lambda = diag(1 / sigma**2)``) or ``precision``
    (``(K,)`` diagonal or ``(K, K)`` symmetric positive semi-definite matrix).

    Args:
        mean: scalar or ``(K,)`` prior mean ``mu``.
        sigma: scalar or ``(K,)`` standard deviations (``inf`` = no prior on that entry).
        precision: scalar, ``(K,)`` or ``(K, K)`` precision ``Lambda``.
        indices: ``(K,)`` parameter indices (or a ``(P,)`` boolean mask); ``None`` = all ``P``.
        name: label used in cost breakdowns.

    Example:
        >>> prior = GaussianPrior(mean=0.0, sigma=1.0, indices=torch.arange(0, 80))  # coefficients ~ N(0, 1)
    """

    def __init__(
        self,
        mean: "torch.Tensor | float" = 0.0,
        sigma: "torch.Tensor | float | None" = None,
        *,
        precision: "torch.Tensor | float | None" = None,
        indices=None,
        name: str = "prior",
    ) -> None:
        if (sigma is None) == (precision is None):
            raise ConfigError("GaussianPrior needs exactly one of sigma= (standard deviations) or precision=")
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        if self.mean.ndim > 1:
            raise ShapeError(f"mean: expected a scalar or shape (K,), got {tuple(self.mean.shape)}")
        if sigma is not None:
            s = torch.as_tensor(sigma, dtype=torch.float64)
            if s.ndim > 1:
                raise ShapeError(f"sigma: expected a scalar or shape (K,), got {tuple(s.shape)}")
            if bool((s <= 0).any()) or bool(torch.isnan(s).any()):
                raise InvalidInputError("sigma must be positive (use inf for 'no prior' on an entry)")
            prec = 1.0 / (s * s)
        else:
            prec = torch.as_tensor(precision, dtype=torch.float64)
            if prec.ndim > 2 or (prec.ndim == 2 and prec.shape[0] != prec.shape[1]):
                raise ShapeError(f"precision: expected a scalar, (K,) or (K, K), got {tuple(prec.shape)}")
            if not bool(torch.isfinite(prec).all()):
                raise InvalidInputError("precision must be finite")
            if prec.ndim < 2 and bool((prec < 0).any()):
                raise InvalidInputError("a diagonal precision must be non-negative")
            if prec.ndim == 2 and not torch.allclose(prec, prec.T, rtol=1e-10, atol=1e-12):
                raise InvalidInputError("precision matrix must be symmetric")
        self.precision = prec
        self.indices = _as_indices(indices, None)
        self.name = name
        k = None if self.indices is None else self.indices.numel()
        for label, t in (("mean", self.mean), ("precision", self.precision)):
            if k is not None and t.ndim >= 1 and t.shape[0] != k:
                raise ShapeError(f"{label}: expected {k} entries (one per index), got {tuple(t.shape)}")

    def _parts(self, x: torch.Tensor):
        _check_x(x)
        xs = x.to(torch.float64)  # not detached: ``cost`` is differentiable by autograd
        if self.indices is not None:
            idx = self.indices.to(x.device)
            if int(idx.max()) >= x.shape[0]:
                raise ShapeError(f"block {self.name!r}: indices reach {int(idx.max())} but x has only {x.shape[0]} entries")
            xs = xs[idx]
        k = xs.shape[0]
        for label, t in (("mean", self.mean), ("precision", self.precision)):
            if t.ndim >= 1 and t.shape[0] != k:
                raise ShapeError(f"block {self.name!r}: {label} has {t.shape[0]} entries but the prior covers {k} parameters")
        d = xs - self.mean.to(x.device)
        prec = self.precision.to(x.device)
        return d, prec, k

    def cost(self, x: torch.Tensor) -> torch.Tensor:
        d, prec, _ = self._parts(x)
        if prec.ndim == 2:
            return 0.5 * d @ (prec @ d)
        return 0.5 * (prec * d * d).sum()

    def linearize(self, x: torch.Tensor) -> BlockLinearization:
        d, prec, k = self._parts(x)
        if prec.ndim == 2:
            jtj_sub = prec
            jtr_sub = prec @ d
        else:
            pv = prec.expand(k) if prec.ndim == 0 else prec
            jtj_sub = torch.diag(pv)
            jtr_sub = pv * d
        cost = 0.5 * (d @ jtr_sub)
        jtj, jtr = _scatter(jtj_sub, jtr_sub, self.indices.to(x.device) if self.indices is not None else None, x.shape[0])
        return BlockLinearization(cost, jtj, jtr)


class LeastSquaresProblem:
    """A sum of blocks over one flat parameter vector ``x`` ``(P,)``.

    Block names are made unique (``"residual"``, ``"residual#1"``, ...) for cost breakdowns.

    Example:
        >>> problem = LeastSquaresProblem([ResidualBlock(f), GaussianPrior(0.0, 1.0, name="ridge")])
        >>> lin = problem.linearize(torch.zeros(3, dtype=torch.float64))
        >>> lin.cost, lin.jtj.shape, lin.jtr.shape
    """

    def __init__(self, blocks: Sequence[Block]) -> None:
        blocks = tuple(blocks)
        if not blocks:
            raise ConfigError("a LeastSquaresProblem needs at least one block")
        names: list[str] = []
        for b in blocks:
            if not isinstance(b, Block):
                raise ConfigError(
                    f"blocks must be ResidualBlock, NormalEquationsBlock, GaussianPrior or another Block, got {type(b).__name__}"
                )
            base = str(getattr(b, "name", "block"))
            name, i = base, 1
            while name in names:
                name, i = f"{base}#{i}", i + 1
            names.append(name)
        self.blocks = blocks
        self.names = tuple(names)

    def cost(self, x: torch.Tensor) -> float:
        """Total cost at ``x`` ``(P,)`` (Python float; ``nan``/``inf`` pass through)."""
        _check_x(x)
        with torch.no_grad():
            total = 0.0
            for b in self.blocks:
                total += float(b.cost(x))
        return total

    def block_costs(self, x: torch.Tensor) -> dict[str, float]:
        """Cost of each block by name at ``x``."""
        _check_x(x)
        with torch.no_grad():
            return {n: float(b.cost(x)) for n, b in zip(self.names, self.blocks)}

    def linearize(self, x: torch.Tensor) -> Linearization:
        """Summed float64 normal equations at ``x`` ``(P,)``."""
        _check_x(x)
        p = x.shape[0]
        jtj = torch.zeros(p, p, dtype=torch.float64, device=x.device)
        jtr = torch.zeros(p, dtype=torch.float64, device=x.device)
        costs: dict[str, float] = {}
        for n, b in zip(self.names, self.blocks):
            c, a, g = b.linearize(x)
            jtj += a.detach().to(device=x.device, dtype=torch.float64)
            jtr += g.detach().to(device=x.device, dtype=torch.float64)
            costs[n] = float(c)
        return Linearization(sum(costs.values()), jtj, jtr, costs)
