"""Solver tests on textbook problems, checked against scipy.optimize.least_squares and closed forms."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import torch

from fitem.errors import ConfigError, InvalidInputError, ShapeError
from fitem.optim import (
    GaussianPrior,
    LeastSquaresProblem,
    NormalEquationsBlock,
    ResidualBlock,
    RobustLoss,
    SolveStatus,
    robust_rescale,
    solve,
)

# torch.func's first forward-mode call loads TorchScript decompositions (a torch-internal deprecation warning)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These problems are tiny: intra-op threads only add synchronisation (and spin badly on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TIGHT = dict(ftol=1e-14, xtol=1e-14, gtol=1e-12, max_iterations=500)


def rosenbrock(x):
    return torch.stack([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


def rosenbrock_jac(x):
    return torch.stack([torch.stack([-20.0 * x[0], torch.tensor(10.0, dtype=x.dtype)]),
                        torch.stack([torch.tensor(-1.0, dtype=x.dtype), torch.tensor(0.0, dtype=x.dtype)])])


@pytest.mark.parametrize("method", ["lm", "gn"])
@pytest.mark.parametrize("start", [(-1.2, 1.0), (2.0, 2.0), (-2.0, -2.0), (0.0, 0.0), (10.0, -10.0)])
def test_rosenbrock_converges_to_one_one(method, start):
    problem = LeastSquaresProblem([ResidualBlock(rosenbrock, jacobian=rosenbrock_jac)])
    res = solve(problem, torch.tensor(start, dtype=F64), method=method)
    assert res.success, res.message
    assert torch.allclose(res.x, torch.ones(2, dtype=F64), atol=1e-8)
    ref = scipy.optimize.least_squares(
        lambda v: np.array([10 * (v[1] - v[0] ** 2), 1 - v[0]]), np.array(start), method="lm"
    )
    np.testing.assert_allclose(res.x.numpy(), ref.x, atol=1e-7)
    assert res.cost < 1e-16
    assert res.cost_history[0] == pytest.approx(res.initial_cost)


def test_rosenbrock_analytic_jacobian_and_autodiff_agree():
    x = torch.tensor([0.3, -0.7], dtype=F64)
    auto_f = ResidualBlock(rosenbrock, jacobian="forward").jacobian_matrix(x)
    auto_r = ResidualBlock(rosenbrock, jacobian="reverse").jacobian_matrix(x)
    auto_a = ResidualBlock(rosenbrock, jacobian="autograd").jacobian_matrix(x)
    given = ResidualBlock(rosenbrock, jacobian=rosenbrock_jac).jacobian_matrix(x)
    assert torch.allclose(auto_f, given) and torch.allclose(auto_r, given) and torch.allclose(auto_a, given)
    # a block over a subset of parameters (indices) scatters into the full normal equations
    sub = ResidualBlock(rosenbrock, indices=[2, 0])
    lin = LeastSquaresProblem([sub]).linearize(torch.tensor([-0.7, 5.0, 0.3], dtype=F64))
    full = LeastSquaresProblem([ResidualBlock(rosenbrock)]).linearize(x)
    assert lin.cost == pytest.approx(full.cost)
    torch.testing.assert_close(lin.jtj[[2, 0]][:, [2, 0]], full.jtj)
    torch.testing.assert_close(lin.jtr[[2, 0]], full.jtr)
    assert float(lin.jtj[1].abs().sum()) == 0.0 and float(lin.jtr[1]) == 0.0
    res = solve(LeastSquaresProblem([ResidualBlock(rosenbrock, jacobian=rosenbrock_jac)]), torch.tensor([-1.2, 1.0], dtype=F64))
    assert res.success and torch.allclose(res.x, torch.ones(2, dtype=F64), atol=1e-8)


def _exp_data(seed=0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 4, 60)
    y = 2.5 * np.exp(-1.3 * t) + 0.5 + 0.02 * rng.standard_normal(t.size)
    return t, y


def test_exponential_fit_matches_scipy_lm_and_trf():
    t, y = _exp_data()
    tt, yy = torch.tensor(t), torch.tensor(y)

    def model(p):
        return p[0] * torch.exp(-p[1] * tt) + p[2] - yy

    def jac(p):
        e = torch.exp(-p[1] * tt)
        return torch.stack([e, -p[0] * tt * e, torch.ones_like(tt)], dim=1)

    x0 = np.array([1.0, 0.5, 0.0])
    ref_lm = scipy.optimize.least_squares(lambda p: p[0] * np.exp(-p[1] * t) + p[2] - y, x0, method="lm",
                                          ftol=1e-14, xtol=1e-14, gtol=1e-14)
    ref_trf = scipy.optimize.least_squares(lambda p: p[0] * np.exp(-p[1] * t) + p[2] - y, x0, method="trf",
                                           ftol=1e-14, xtol=1e-14, gtol=1e-14)
    for block in (ResidualBlock(model, jacobian=jac), ResidualBlock(model)):
        for method in ("lm", "gn"):
            res = solve(LeastSquaresProblem([block]), torch.tensor(x0), method=method, **TIGHT)
            assert res.success, res.message
            np.testing.assert_allclose(res.x.numpy(), ref_lm.x, atol=1e-6)
            np.testing.assert_allclose(res.x.numpy(), ref_trf.x, atol=1e-6)
            assert res.cost == pytest.approx(ref_lm.cost, rel=1e-9)


def test_gaussian_curve_fit_matches_scipy():
    rng = np.random.default_rng(1)
    t = np.linspace(-3, 5, 120)
    y = 1.7 * np.exp(-0.5 * ((t - 0.8) / 0.9) ** 2) + 0.03 * rng.standard_normal(t.size)
    tt, yy = torch.tensor(t), torch.tensor(y)

    def model(p):
        return p[0] * torch.exp(-0.5 * ((tt - p[1]) / p[2]) ** 2) - yy

    x0 = np.array([1.0, 0.0, 1.5])
    ref = scipy.optimize.least_squares(lambda p: p[0] * np.exp(-0.5 * ((t - p[1]) / p[2]) ** 2) - y, x0,
                                       method="lm", ftol=1e-14, xtol=1e-14, gtol=1e-14)
    for method in ("lm", "gn"):
        res = solve(LeastSquaresProblem([ResidualBlock(model)]), torch.tensor(x0), method=method, **TIGHT)
        assert res.success, res.message
        np.testing.assert_allclose(res.x.numpy(), ref.x, atol=1e-6)
    # the LM cost history never increases
    res = solve(LeastSquaresProblem([ResidualBlock(model)]), torch.tensor(x0), method="lm", **TIGHT)
    assert all(b <= a for a, b in zip(res.cost_history, res.cost_history[1:]))
    assert len(res.cost_history) == 1 + sum(h.accepted for h in res.history)


def _linear_problem(seed=2, m=40, p=5):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, p, generator=g, dtype=F64)
    b = torch.randn(m, generator=g, dtype=F64)
    return a, b


def test_linear_least_squares_with_gaussian_prior_matches_closed_form():
    a, b = _linear_problem()
    mu = torch.linspace(-1, 1, 3, dtype=F64)
    sigma = torch.tensor([0.5, 2.0, 0.1], dtype=F64)
    idx = torch.tensor([0, 2, 4])
    w = torch.linspace(0.5, 2.0, a.shape[0], dtype=F64)
    problem = LeastSquaresProblem([
        ResidualBlock(lambda x: a @ x - b, jacobian=lambda x: a, weight=w, name="data"),
        GaussianPrior(mu, sigma, indices=idx, name="prior"),
    ])
    lam = torch.zeros(5, 5, dtype=F64)
    lam[idx, idx] = 1 / sigma ** 2
    mu_full = torch.zeros(5, dtype=F64)
    mu_full[idx] = mu
    lhs = a.T @ (w[:, None] * a) + lam
    rhs = a.T @ (w * b) + lam @ mu_full
    expected = np.linalg.solve(lhs.numpy(), rhs.numpy())
    for method in ("lm", "gn"):
        res = solve(problem, torch.zeros(5, dtype=F64), method=method)
        assert res.success, res.message
        np.testing.assert_allclose(res.x.numpy(), expected, atol=1e-9)
        # the JtJ at the solution is the exact Hessian of this quadratic, and its inverse the covariance
        np.testing.assert_allclose(res.jtj.numpy(), lhs.numpy(), atol=1e-10)
        np.testing.assert_allclose(res.covariance().numpy(), np.linalg.inv(lhs.numpy()), atol=1e-10)
        np.testing.assert_allclose(res.marginal_std().numpy(), np.sqrt(np.diag(np.linalg.inv(lhs.numpy()))), atol=1e-10)
        assert set(res.block_costs) == {"data", "prior"}
        assert sum(res.block_costs.values()) == pytest.approx(res.cost)
    # Gauss-Newton solves a quadratic in one step
    res = solve(problem, torch.zeros(5, dtype=F64), method="gn")
    assert res.iterations == 1


def test_full_precision_prior_matches_closed_form():
    a, b = _linear_problem(seed=3, m=6, p=4)
    q = torch.randn(4, 4, generator=torch.Generator().manual_seed(4), dtype=F64)
    prec = q @ q.T + 0.1 * torch.eye(4, dtype=F64)
    mu = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=F64)
    problem = LeastSquaresProblem([ResidualBlock(lambda x: a @ x - b), GaussianPrior(mu, precision=prec)])
    expected = np.linalg.solve((a.T @ a + prec).numpy(), (a.T @ b + prec @ mu).numpy())
    res = solve(problem, torch.zeros(4, dtype=F64))
    np.testing.assert_allclose(res.x.numpy(), expected, atol=1e-9)
    d = res.x - mu
    assert problem.blocks[1].cost(res.x).item() == pytest.approx(0.5 * float(d @ prec @ d))


def _line_with_outliers():
    rng = np.random.default_rng(5)
    t = np.linspace(0, 10, 80)
    y = 0.7 * t + 2.0 + 0.1 * rng.standard_normal(t.size)
    out = rng.choice(t.size, 12, replace=False)
    y[out] += rng.uniform(5, 15, out.size) * rng.choice([-1, 1], out.size)
    return t, y


@pytest.mark.parametrize("kind", ["linear", "huber", "soft_l1", "cauchy", "arctan"])
@pytest.mark.parametrize("f_scale", [0.3, 1.0])
def test_robust_losses_match_scipy(kind, f_scale):
    t, y = _line_with_outliers()
    tt, yy = torch.tensor(t), torch.tensor(y)
    x0 = np.array([0.5, 1.0])
    ref = scipy.optimize.least_squares(lambda p: p[0] * t + p[1] - y, x0, method="trf", loss=kind, f_scale=f_scale,
                                       ftol=1e-15, xtol=1e-15, gtol=1e-15)
    jac = torch.stack([tt, torch.ones_like(tt)], dim=1)
    block = ResidualBlock(lambda p: p[0] * tt + p[1] - yy, jacobian=lambda p: jac, loss=RobustLoss(kind, f_scale))
    for method in ("lm", "gn"):
        res = solve(LeastSquaresProblem([block]), torch.tensor(x0), method=method, **TIGHT)
        assert not res.status.failed, res.message
        np.testing.assert_allclose(res.x.numpy(), ref.x, atol=1e-6)
        assert res.cost == pytest.approx(ref.cost, rel=1e-8)
    if kind != "linear":  # the robust fit ignores the outliers; least squares does not
        assert abs(ref.x[0] - 0.7) < 0.05 and abs(ref.x[1] - 2.0) < 0.3


@pytest.mark.parametrize("kind,f_scale", [("soft_l1", 0.3), ("soft_l1", 1.0), ("huber", 1.0), ("cauchy", 1.0)])
def test_triggs_curvature_lm_matches_scipy(kind, f_scale):
    """scipy's own rescaling (Triggs) reaches the same optimum with LM."""
    t, y = _line_with_outliers()
    tt, yy = torch.tensor(t), torch.tensor(y)
    ref = scipy.optimize.least_squares(lambda p: p[0] * t + p[1] - y, [0.5, 1.0], method="trf", loss=kind,
                                       f_scale=f_scale, ftol=1e-15, xtol=1e-15, gtol=1e-15)
    jac = torch.stack([tt, torch.ones_like(tt)], dim=1)
    block = ResidualBlock(lambda p: p[0] * tt + p[1] - yy, jacobian=lambda p: jac,
                          loss=RobustLoss(kind, f_scale, curvature="triggs"))
    res = solve(LeastSquaresProblem([block]), torch.tensor([0.5, 1.0], dtype=F64), method="lm", **TIGHT)
    assert res.success, res.message
    np.testing.assert_allclose(res.x.numpy(), ref.x, atol=1e-6)


def test_robust_rescale_gradient_is_cost_gradient():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(30, 4, generator=g, dtype=F64)
    b = 3 * torch.randn(30, generator=g, dtype=F64)
    w = torch.rand(30, generator=g, dtype=F64)
    x = torch.randn(4, generator=g, dtype=F64, requires_grad=True)
    for kind in ("linear", "huber", "soft_l1", "cauchy", "arctan"):
        for curvature in ("irls", "triggs"):
            loss = RobustLoss(kind, 0.7, curvature)
            out = robust_rescale(a @ x - b, w, loss)
            (grad,) = torch.autograd.grad(out.cost, x)
            js = out.jacobian_scale.detach()[:, None] * a
            torch.testing.assert_close(js.T @ out.residual.detach(), grad)
            if kind == "linear":
                torch.testing.assert_close(out.cost, 0.5 * (w * (a @ x - b) ** 2).sum())


def test_loss_values_match_scipy_definitions():
    z = torch.tensor([0.0, 0.04, 0.5, 1.0, 2.0, 30.0], dtype=F64)
    c = 0.6
    u = z / c**2
    expected = {
        "linear": z,
        "huber": c**2 * torch.where(u <= 1, u, 2 * torch.sqrt(u) - 1),
        "soft_l1": c**2 * 2 * (torch.sqrt(1 + u) - 1),
        "cauchy": c**2 * torch.log1p(u),
        "arctan": c**2 * torch.atan(u),
    }
    for kind, want in expected.items():
        loss = RobustLoss(kind, c)
        torch.testing.assert_close(loss.value(z), want)
        rho, d1, d2 = loss.evaluate(z.clone().requires_grad_(True))
        torch.testing.assert_close(rho, want)
        zz = z.clone().requires_grad_(True)
        (g1,) = torch.autograd.grad(loss.value(zz).sum(), zz, create_graph=True)
        torch.testing.assert_close(d1, g1.detach())


def _chunked_normal_equations(a, b, w, loss, chunk=7):
    """A NormalEquationsBlock that never holds the whole Jacobian (chunks of rows)."""

    def lin(x):
        cost = torch.zeros((), dtype=x.dtype)
        jtj = torch.zeros(x.shape[0], x.shape[0], dtype=x.dtype)
        jtr = torch.zeros(x.shape[0], dtype=x.dtype)
        for s in range(0, a.shape[0], chunk):
            aj, r = a[s:s + chunk], a[s:s + chunk] @ x - b[s:s + chunk]
            out = robust_rescale(r, w[s:s + chunk], loss)
            js = out.jacobian_scale[:, None] * aj
            cost, jtj, jtr = cost + out.cost, jtj + js.T @ js, jtr + js.T @ out.residual
        return cost, jtj, jtr

    def cost(x):
        return robust_rescale(a @ x - b, w, loss).cost

    return NormalEquationsBlock(lin, cost, name="chunked")


@pytest.mark.parametrize("kind", ["linear", "huber", "cauchy"])
def test_normal_equations_block_equals_residual_block(kind):
    g = torch.Generator().manual_seed(7)
    a = torch.randn(50, 3, generator=g, dtype=F64)
    b = a @ torch.tensor([1.0, -2.0, 0.5], dtype=F64) + 0.05 * torch.randn(50, generator=g, dtype=F64)
    b[::9] += 4.0
    w = torch.rand(50, generator=g, dtype=F64) + 0.1
    loss = RobustLoss(kind, 0.2)
    prior = GaussianPrior(0.0, 3.0)
    x0 = torch.zeros(3, dtype=F64)
    p1 = LeastSquaresProblem([ResidualBlock(lambda x: a @ x - b, weight=w, loss=loss), prior])
    p2 = LeastSquaresProblem([_chunked_normal_equations(a, b, w, loss), prior])
    l1, l2 = p1.linearize(x0 + 0.3), p2.linearize(x0 + 0.3)
    torch.testing.assert_close(l1.jtj, l2.jtj)
    torch.testing.assert_close(l1.jtr, l2.jtr)
    assert l1.cost == pytest.approx(l2.cost)
    r1, r2 = solve(p1, x0, **TIGHT), solve(p2, x0, **TIGHT)
    assert r1.success and r2.success
    torch.testing.assert_close(r1.x, r2.x, atol=1e-10, rtol=0)
    assert r1.history[-1].iteration == r2.history[-1].iteration


def test_nan_everywhere_fails_without_raising():
    problem = LeastSquaresProblem([ResidualBlock(lambda x: x * float("nan"))])
    res = solve(problem, torch.ones(3, dtype=F64))
    assert res.status is SolveStatus.FAILED_NONFINITE and not res.success
    assert torch.equal(res.x, torch.ones(3, dtype=F64))
    assert res.jtj is None


def test_nan_jacobian_after_a_step_fails_with_last_finite_x():
    def jac(x):
        j = torch.eye(2, dtype=x.dtype)
        return j * float("nan") if float(x[0]) < 0.5 else j

    problem = LeastSquaresProblem([ResidualBlock(lambda x: x, jacobian=jac)])
    res = solve(problem, torch.tensor([1.0, 1.0], dtype=F64), method="gn", line_search=False)
    assert res.status is SolveStatus.FAILED_NONFINITE
    assert bool(torch.isfinite(res.x).all()) and math.isfinite(res.cost)


@pytest.mark.parametrize("method", ["lm", "gn"])
def test_no_decrease_after_progress_stops_at_the_best_point(method):
    """A Jacobian that points the wrong way near the optimum (as a rasterised cost's noise floor
    does): the solve stops there after max_trials, returns its best point, and is not a failure."""
    def jac(x):
        return torch.ones(1, 1, dtype=x.dtype) * (2.0 if abs(float(x[0]) - 3.0) > 0.5 else -1.0)  # halfway steps

    problem = LeastSquaresProblem([ResidualBlock(lambda x: x - 3.0, jacobian=jac)])
    res = solve(problem, torch.tensor([0.0], dtype=F64), method=method, max_trials=3)
    assert res.status is SolveStatus.STOPPED_NO_DECREASE and not res.status.failed, res.message
    assert 2.5 < float(res.x[0]) < 3.0 and res.cost == pytest.approx(0.5 * (float(res.x[0]) - 3.0) ** 2)
    assert res.iterations >= 3 and res.cost < res.initial_cost / 50


@pytest.mark.parametrize("method", ["lm", "gn"])
def test_no_decrease_from_the_start_fails(method):
    problem = LeastSquaresProblem([ResidualBlock(lambda x: x - 3.0, jacobian=lambda x: -torch.ones(1, 1, dtype=x.dtype))])
    res = solve(problem, torch.tensor([0.0], dtype=F64), method=method, max_trials=3)
    assert res.status is SolveStatus.FAILED_NO_PROGRESS and res.status.failed
    assert torch.equal(res.x, torch.zeros(1, dtype=F64))


def test_nan_region_is_avoided_by_lm_and_line_search():
    # sqrt(x) is NaN for x < 0; the undamped step from x=1 overshoots to negative values.
    def f(x):
        return torch.stack([torch.sqrt(x[0]) - 0.1, 0.01 * (x[0] - 4.0)])

    problem = LeastSquaresProblem([ResidualBlock(f)])
    for method in ("lm", "gn"):
        res = solve(problem, torch.tensor([1.0], dtype=F64), method=method, initial_damping=1e-8)
        assert not res.status.failed, res.message
        ref = scipy.optimize.least_squares(lambda v: [np.sqrt(v[0]) - 0.1, 0.01 * (v[0] - 4.0)], [1.0],
                                           bounds=(0, np.inf), ftol=1e-14, xtol=1e-14, gtol=1e-14)
        np.testing.assert_allclose(res.x.numpy(), ref.x, atol=1e-6)


def test_nonfinite_trial_in_plain_gauss_newton_fails():
    def f(x):
        return torch.stack([torch.sqrt(x[0]) - 0.1, 0.01 * (x[0] - 4.0)])

    res = solve(LeastSquaresProblem([ResidualBlock(f)]), torch.tensor([1.0], dtype=F64), method="gn", line_search=False)
    assert res.status is SolveStatus.FAILED_NONFINITE
    assert float(res.x[0]) == 1.0


@pytest.mark.parametrize("method", ["lm", "gn"])
def test_max_iterations_respected(method):
    problem = LeastSquaresProblem([ResidualBlock(rosenbrock)])
    res = solve(problem, torch.tensor([-1.2, 1.0], dtype=F64), method=method, max_iterations=3)
    assert res.status is SolveStatus.MAX_ITERATIONS and not res.success
    assert res.iterations == 3 and len(res.history) == 3 and len(res.timings.per_iteration) == 3
    res0 = solve(problem, torch.tensor([-1.2, 1.0], dtype=F64), method=method, max_iterations=0)
    assert res0.status is SolveStatus.MAX_ITERATIONS and res0.iterations == 0
    assert torch.equal(res0.x, torch.tensor([-1.2, 1.0], dtype=F64))


def test_gn_and_lm_agree_on_a_well_posed_problem_in_float32():
    t, y = _exp_data(seed=8)
    tt, yy = torch.tensor(t, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    block = ResidualBlock(lambda p: p[0] * torch.exp(-p[1] * tt) + p[2] - yy)
    x0 = torch.tensor([2.0, 1.0, 0.3])
    r_lm = solve(LeastSquaresProblem([block]), x0, method="lm", ftol=1e-7, xtol=1e-7)
    r_gn = solve(LeastSquaresProblem([block]), x0, method="gn", ftol=1e-7, xtol=1e-7)
    for r in (r_lm, r_gn):
        assert r.success, r.message
        assert r.x.dtype == torch.float32
    torch.testing.assert_close(r_lm.x, r_gn.x, atol=1e-4, rtol=0)
    assert torch.equal(x0, torch.tensor([2.0, 1.0, 0.3]))  # x0 untouched


def test_free_mask_fixes_parameters():
    t, y = _exp_data(seed=9)
    tt, yy = torch.tensor(t), torch.tensor(y)
    block = ResidualBlock(lambda p: p[0] * torch.exp(-p[1] * tt) + p[2] - yy)
    x0 = torch.tensor([1.0, 0.5, 0.4], dtype=F64)
    res = solve(LeastSquaresProblem([block]), x0, free_mask=torch.tensor([True, True, False]), **TIGHT)
    assert res.success and float(res.x[2]) == 0.4
    ref = scipy.optimize.least_squares(lambda p: p[0] * np.exp(-p[1] * t) + 0.4 - y, [1.0, 0.5], method="lm",
                                       ftol=1e-14, xtol=1e-14, gtol=1e-14)
    np.testing.assert_allclose(res.x[:2].numpy(), ref.x, atol=1e-6)
    assert float(res.marginal_std()[2]) == 0.0 and bool((res.marginal_std()[:2] > 0).all())


def test_identity_damping_and_history_and_callback_stop():
    problem = LeastSquaresProblem([ResidualBlock(rosenbrock)])
    res = solve(problem, torch.tensor([-1.2, 1.0], dtype=F64), damping="identity")
    assert res.success and torch.allclose(res.x, torch.ones(2, dtype=F64), atol=1e-7)
    seen = []

    def stop_after_two(info):
        seen.append(info)
        return info.iteration >= 2

    res = solve(problem, torch.tensor([-1.2, 1.0], dtype=F64), callback=stop_after_two)
    assert res.status is SolveStatus.STOPPED_BY_CALLBACK and res.iterations == 2
    assert [i.iteration for i in seen] == [1, 2]
    assert all(i.damping > 0 and i.trials >= 1 for i in seen)
    t = res.timings
    assert t.total >= t.evaluate >= t.linearize >= 0 and t.linear_solve >= 0
    assert res.nfev >= res.njev >= 1


def test_gtol_at_the_optimum_needs_no_step():
    a, b = _linear_problem()
    x_star = torch.linalg.lstsq(a, b[:, None]).solution[:, 0]
    res = solve(LeastSquaresProblem([ResidualBlock(lambda x: a @ x - b)]), x_star, gtol=1e-9)
    assert res.status is SolveStatus.CONVERGED_GTOL and res.iterations == 0 and res.nfev == 1


def test_singular_normal_equations_use_the_fallback():
    # x[1] does not influence the residuals: JtJ is singular; GN must still solve for x[0].
    block = ResidualBlock(lambda x: torch.stack([x[0] - 3.0, 2 * (x[0] - 3.0)]))
    res = solve(LeastSquaresProblem([block]), torch.tensor([0.0, 5.0], dtype=F64), method="gn")
    assert res.success and float(res.x[0]) == pytest.approx(3.0) and float(res.x[1]) == 5.0
    assert res.fallback_solves >= 1


def test_invalid_arguments_raise_typed_errors():
    problem = LeastSquaresProblem([ResidualBlock(rosenbrock)])
    x0 = torch.tensor([-1.2, 1.0], dtype=F64)
    with pytest.raises(ConfigError):
        solve(problem, x0, method="newton")
    with pytest.raises(ConfigError):
        solve(problem, x0, damping="fancy")
    with pytest.raises(ShapeError):
        solve(problem, x0[None])
    with pytest.raises(ShapeError):
        solve(problem, x0, free_mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ConfigError):
        solve(problem, x0, free_mask=torch.zeros(2, dtype=torch.bool))
    with pytest.raises(InvalidInputError):
        solve(problem, torch.tensor([float("nan"), 1.0], dtype=F64))
    with pytest.raises(ConfigError):
        RobustLoss("tukey")
    with pytest.raises(ConfigError):
        RobustLoss("huber", f_scale=0.0)
    with pytest.raises(ConfigError):
        GaussianPrior(0.0)
    with pytest.raises(InvalidInputError):
        ResidualBlock(rosenbrock, weight=torch.tensor([1.0, -1.0]))
    bad = NormalEquationsBlock(lambda x: (0.0, torch.zeros(3, 3), torch.zeros(2)), lambda x: 0.0, name="bad")
    with pytest.raises(ShapeError, match="bad"):
        LeastSquaresProblem([bad]).linearize(x0)
    with pytest.raises(ConfigError):
        LeastSquaresProblem([])


def test_duplicate_block_names_are_made_unique():
    p = LeastSquaresProblem([ResidualBlock(rosenbrock), ResidualBlock(rosenbrock), GaussianPrior(0.0, 1.0)])
    assert p.names == ("residual", "residual#1", "prior")


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine")
    t, y = _exp_data(seed=10)
    results = []
    for device in ("cpu", "cuda"):
        tt, yy = torch.tensor(t, device=device), torch.tensor(y, device=device)
        block = ResidualBlock(lambda p: p[0] * torch.exp(-p[1] * tt) + p[2] - yy)
        prior = GaussianPrior(torch.zeros(3), 10.0)
        res = solve(LeastSquaresProblem([block, prior]), torch.tensor([1.0, 0.5, 0.0], dtype=F64, device=device), **TIGHT)
        assert res.success and res.x.device.type == device and res.jtj.device.type == device
        results.append(res.x.cpu())
    torch.testing.assert_close(results[0], results[1], atol=1e-8, rtol=0)
