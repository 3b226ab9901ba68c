"""End-to-end ``fitem.fit`` on synthetic renders of the demo model with known ground truth."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fitem.api import fit
from fitem.bench.metrics import segmentation_scores, vertex_error_same_topology
from fitem.bench.synthetic import make_sample
from fitem.config import FitConfig
from fitem.errors import ConfigError, InvalidInputError, ModelError
from fitem.models.morphable import MorphableModel
from fitem.result import FitResult, FitStatus

FAST = dict(backend="torch", rounds=3, iterations=4, first_iterations=3)


@pytest.fixture(scope="module")
def scarf_fit(model, scarf):
    return fit(scarf.image, landmarks=scarf.landmarks68, model=model, config=FitConfig(**FAST))


def test_em_segments_the_occluder(scarf, scarf_fit):
    assert scarf_fit.status == FitStatus.SUCCESS, scarf_fit.message
    s = segmentation_scores(scarf_fit.mask, scarf.visible_face, scarf.face_region)
    assert s["occluder_f1"] >= 0.75, s
    assert s["f1"] >= 0.93, s
    assert scarf_fit.mask.shape == scarf.image.shape[:2]
    assert not np.any(scarf_fit.mask & ~scarf_fit.face_region)
    np.testing.assert_array_equal(scarf_fit.occlusion, scarf_fit.face_region & ~scarf_fit.mask)


def test_em_beats_the_all_face_mask_in_3d(model, scarf, scarf_fit):
    fixed = fit(scarf.image, landmarks=scarf.landmarks68, model=model, config=FitConfig(use_em=False, **FAST))
    err_em = vertex_error_same_topology(scarf_fit.vertices, scarf.vertices).median
    err_fixed = vertex_error_same_topology(fixed.vertices, scarf.vertices).median
    assert err_em < err_fixed, (err_em, err_fixed)


def test_result_fields_and_uncertainty(model, scarf_fit):
    r = scarf_fit
    assert r.vertices.shape == (model.n_vertices, 3) and np.isfinite(r.vertices).all()
    assert r.render.shape == (224, 224, 3)
    assert r.backend == "torch"
    assert r.model_checksum == model.checksum
    assert len(r.rounds) >= 2 and all(rr.cost_history for rr in r.rounds)
    assert {"detect", "init", "em", "total"} <= set(r.timings)
    assert r.vertex_sigma is not None and r.vertex_sigma.shape == (model.n_vertices,)
    assert np.all(r.vertex_sigma > 0) and np.all(np.isfinite(r.vertex_sigma))
    shape_sigma = np.array(r.coefficient_sigma["shape"])
    assert np.all((shape_sigma > 0) & (shape_sigma <= 1.0 + 1e-3))  # the posterior is tighter than the prior


def test_save_and_load_round_trip(tmp_path, scarf, scarf_fit):
    out = scarf_fit.save(tmp_path / "res", image=scarf.image)
    for name in ("params.json", "mask.png", "occlusion.png", "render.png", "overlay.png", "mesh.ply", "arrays.npz"):
        assert (out / name).is_file(), name
    back = FitResult.load(out)
    np.testing.assert_array_equal(back.mask, scarf_fit.mask)
    np.testing.assert_allclose(back.vertices, scarf_fit.vertices, rtol=1e-6)
    torch.testing.assert_close(back.params.shape, scarf_fit.params.shape)
    assert back.model_checksum == scarf_fit.model_checksum
    assert [r.mask_fraction for r in back.rounds] == [r.mask_fraction for r in scarf_fit.rounds]


def test_clean_image_fits_closely(model):
    s = make_sample(model, 1001, occluder="none")
    r = fit(s.image, landmarks=s.landmarks68, model=model, config=FitConfig(**FAST))
    vis = s.visible_face & r.face_region
    rmse = float(np.sqrt(((r.render - s.image)[vis] ** 2).mean()))
    assert rmse < 0.03
    assert vertex_error_same_topology(r.vertices, s.vertices).median < 4.0


def test_divergence_returns_failed_status(model, scarf, monkeypatch):
    from fitem.fitting import terms

    def nan_equations(self, params, layout):
        p = layout.size
        return terms.NormalEquations(float("nan"), torch.full((p, p), float("nan")), torch.full((p,), float("nan")))

    monkeypatch.setattr(terms.PhotometricTerm, "normal_equations", nan_equations)
    r = fit(scarf.image, landmarks=scarf.landmarks68, model=model, config=FitConfig(**FAST))
    assert r.status == FitStatus.FAILED
    assert "failed" in r.message.lower()
    assert np.isfinite(r.vertices).all()


def test_bad_inputs(model, scarf):
    with pytest.raises(InvalidInputError, match="32"):
        fit(np.zeros((20, 20, 3), np.uint8), landmarks=scarf.landmarks68 * 0.05, model=model)
    with pytest.raises(ConfigError):
        FitConfig(landmark_weight=-1.0)
    with pytest.raises(ConfigError):
        FitConfig(rounds=0)
    with pytest.raises(ConfigError):
        fit(scarf.image, landmarks=scarf.landmarks68, model=model, config={"rounds": 2})
    no_lms = MorphableModel(model.name, model.shape, model.expression, model.colour, model.triangles, landmarks={})
    with pytest.raises(ModelError, match="landmark"):
        fit(scarf.image, landmarks=scarf.landmarks68, model=no_lms)


def test_public_api_at_package_level():
    import fitem

    assert fitem.fit is fit and fitem.FitConfig is FitConfig and fitem.FitResult is FitResult
    assert fitem.FitConfig().hash() == FitConfig().hash() != FitConfig(rounds=FitConfig().rounds + 1).hash()


def _hand_fit_digest(model) -> str:
    """SHA-256 of the mask and shape coefficients of one fit of a hand image (the E-step's thresholds
    would amplify any difference in the arithmetic there)."""
    import hashlib

    s = make_sample(model, 68, occluder="hand")
    lms = s.landmarks68 + np.random.default_rng(7987).normal(0.0, 1.5, s.landmarks68.shape)
    r = fit(s.image, landmarks=lms, model=model)
    return hashlib.sha256(r.mask.tobytes() + r.params.shape.numpy().tobytes()).hexdigest()


def test_a_fit_is_reproducible_across_processes_and_thread_counts(model):
    import subprocess
    import sys
    from pathlib import Path

    here = _hand_fit_digest(model)
    threads = 1 if torch.get_num_threads() > 1 else 2  # another process, another thread count
    code = ("import sys, torch; torch.set_num_threads(int(sys.argv[1])); from fitem.models import load_model; "
            "from tests.test_fit import _hand_fit_digest; print(_hand_fit_digest(load_model('demo')))")
    out = subprocess.run([sys.executable, "-c", code, str(threads)], capture_output=True, text=True, check=True,
                         timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip().splitlines()[-1] == here, f"{threads} thread(s): {out.stderr[-2000:]}"
