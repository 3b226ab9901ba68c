"""The built-in demo model: geometry, symmetry, plausible samples, landmarks, colour, cache.

The model is built once for the module (about 2 s on a 2-core CPU).
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from scipy.spatial import ConvexHull

from fitem.errors import InvalidInputError, ModelError, ModelFileError
from fitem.models import demo as demo_mod
from fitem.models.demo import (
    LANDMARK_FILE,
    build_demo_model,
    demo_cache_path,
    demo_landmarks,
    demo_model,
    mirror_permutation,
    read_template_ply,
    symmetric_components,
    symmetric_template,
)

MIRROR = np.array([-1.0, 1.0, 1.0])
#: Largest vertex displacement (mm) accepted for one component at ±3σ ...
SINGLE_COMPONENT_BOUND_MM = 25.0
#: ... and for random shape + expression draws with every coefficient clipped to ±3σ.
RANDOM_DRAW_BOUND_MM = 40.0


@pytest.fixture(scope="module")
def model():
    return build_demo_model()


@pytest.fixture(scope="module")
def perm(model):
    return mirror_permutation(model.shape.mean)


@pytest.fixture(scope="module")
def mp_pairs():
    return np.asarray(json.loads(LANDMARK_FILE.read_text())["mirror"])


def _face_normals(v, tri):
    n = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])
    return n / np.linalg.norm(n, axis=1, keepdims=True)


# ---------------------------------------------------------------- geometry
def test_template_file_is_read_without_trimesh():
    v, f, digest = read_template_ply()
    assert v.shape == (7160, 3) and f.shape == (14050, 3)
    assert len(digest) == 64 and f.min() == 0 and f.max() == 7159


def test_template_reader_rejects_bad_files(tmp_path):
    bad = tmp_path / "x.ply"
    bad.write_bytes(b"not a ply")
    with pytest.raises(ModelFileError, match="not a PLY"):
        read_template_ply(bad)
    raw = demo_mod.template_path().read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        read_template_ply(bad)


def test_size_units_and_orientation(model):
    v = model.shape.mean
    assert model.n_vertices >= 5000 and model.n_triangles >= 10000
    width = np.ptp(v[:, 0])
    assert 130.0 <= width <= 160.0, f"face width {width:.1f} mm is not a human face in mm"
    assert 140.0 <= np.ptp(v[:, 1]) <= 200.0
    # counter-clockwise from outside: face normals point out of the face (+z) almost everywhere
    n = _face_normals(v, model.triangles)
    assert n[:, 2].sum() > 0.5 * len(n)
    assert (n[:, 2] > 0).mean() > 0.97
    assert (model.n_shape, model.n_expression, model.n_colour) == (80, 30, 40)
    assert np.all(np.diff(model.shape.variance) <= 0) and np.all(model.shape.variance > 0)


def test_origin_is_documented_centre(model):
    v = model.shape.mean
    lm = v[model.landmarks["mediapipe468"]]
    eyes, mouth = lm[[33, 133, 362, 263]], lm[[61, 291]]
    assert abs(0.5 * (eyes[:, 1].mean() + mouth[:, 1].mean())) < 1e-4
    assert abs(eyes[:, 2].mean()) < 1e-4
    assert abs(v[:, 0].mean()) < 1e-4


def test_component_counts_are_validated():
    for bad in (-1, 2.5, "80", None):
        with pytest.raises(InvalidInputError, match="n_shape"):
            build_demo_model(n_shape=bad)


def test_metadata_names_licences_kernels_and_version(model):
    md = model.metadata
    assert "MIT" in md["licence"] and "Apache-2.0" in md["licence"]
    assert md["build_version"] == demo_mod.DEMO_BUILD_VERSION
    for block in ("shape", "expression", "colour"):
        assert md[f"{block}.kernel"]
        kept = float(md[f"{block}.variance_kept"])
        assert 0.0 < kept <= 1.0
    assert float(md["shape.variance_kept"]) >= 0.97
    assert float(md["expression.variance_kept"]) >= 0.85
    assert float(md["colour.variance_kept"]) >= 0.9
    assert "lengthscale=80mm" in md["shape.kernel"]


# ---------------------------------------------------------------- symmetry
def test_mean_is_exactly_symmetric(model, perm):
    v = model.shape.mean
    np.testing.assert_allclose(v[perm], v * MIRROR, atol=1e-4)
    assert np.all(perm[perm] == np.arange(len(v)))
    # the triangulation is mirrored too (as a set, with flipped winding)
    tri = model.triangles
    mirrored = {tuple(sorted(t)) for t in perm[tri]}
    assert mirrored == {tuple(sorted(t)) for t in tri}
    np.testing.assert_allclose(model.colour.mean[perm], model.colour.mean, atol=1e-6)


def test_template_symmetrisation_is_exact_and_records_the_plane():
    t = symmetric_template()
    np.testing.assert_array_equal(t.vertices[t.mirror], t.vertices * MIRROR)
    assert 0.5 < t.plane_angle_deg < 5.0  # the template's own mirror plane is tilted by about 1.6 degrees
    u, _, _ = read_template_ply()
    np.testing.assert_allclose(t.to_file_coordinates(t.from_file_coordinates(u)), u, atol=1e-12)


@pytest.mark.parametrize("block", ["shape", "expression"])
def test_symmetric_components_give_symmetric_faces(model, perm, block):
    blk = getattr(model, block)
    sym = symmetric_components(model, block)
    assert sym.mean() > 0.5, "the symmetric part should dominate"
    rng = np.random.default_rng(3)
    c = np.where(sym, rng.normal(size=blk.n_components), 0.0) * 2.0
    face = model.shape.mean + model.expression.mean + (blk.basis.astype(np.float64) @ c).reshape(-1, 3)
    np.testing.assert_allclose(face[perm] * MIRROR, face, atol=1e-3)
    # antisymmetric components: the mirrored deformation is the negated one
    d = (blk.basis.astype(np.float64) @ np.where(sym, 0.0, 1.0)).reshape(-1, 3)
    np.testing.assert_allclose(d[perm] * MIRROR, -d, atol=1e-3)


def test_symmetric_colour_components(model, perm):
    sym = symmetric_components(model, "colour")
    b = model.colour.basis.astype(np.float64)
    col = (b @ sym.astype(float)).reshape(-1, 3)
    np.testing.assert_allclose(col[perm], col, atol=1e-5)
    col = (b @ (~sym).astype(float)).reshape(-1, 3)
    np.testing.assert_allclose(col[perm], -col, atol=1e-5)


def test_landmarks_are_mirror_symmetric(model, perm, mp_pairs):
    mp = model.landmarks["mediapipe468"]
    np.testing.assert_array_equal(mp[mp_pairs], perm[mp])


def test_mirror_permutation_rejects_asymmetric_meshes():
    v = np.array([[-1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    with pytest.raises(ModelError, match="not mirror-symmetric"):
        mirror_permutation(v)


# ----------------------------------------------------------------- samples
def _check_face_like(model, verts, bound, labels):
    """``verts`` ``(B, N, 3)``: no triangle turned over against the mean, no vertex moved further than ``bound``."""
    tri = model.triangles
    n0 = _face_normals(model.shape.mean, tri)
    e1, e2 = verts[:, tri[:, 1]] - verts[:, tri[:, 0]], verts[:, tri[:, 2]] - verts[:, tri[:, 0]]
    flipped = (np.einsum("btk,tk->bt", np.cross(e1, e2), n0) <= 0).sum(1)
    disp = np.linalg.norm(verts - model.shape.mean, axis=2).max(1)
    for label, f, d in zip(labels, flipped, disp):
        assert f == 0, f"{label}: {f} triangles flipped"
        assert d <= bound, f"{label}: a vertex moved {d:.1f} mm (bound {bound} mm)"


@pytest.mark.parametrize("block", ["shape", "expression"])
def test_each_component_at_three_sigma_is_face_like(model, block):
    blk = getattr(model, block)
    base = model.shape.mean + model.expression.mean
    cols = blk.basis.astype(np.float64).T.reshape(blk.n_components, -1, 3)
    for s in (-3.0, 3.0):
        labels = [f"{block} component {j} at {s:+g} sigma" for j in range(blk.n_components)]
        _check_face_like(model, base + s * cols, SINGLE_COMPONENT_BOUND_MM, labels)


def test_random_draws_clipped_at_three_sigma_are_face_like(model):
    rng = np.random.default_rng(0)
    n = 40
    cs = np.clip(rng.normal(size=(n, model.n_shape)), -3, 3)
    ce = np.clip(rng.normal(size=(n, model.n_expression)), -3, 3)
    d = cs @ model.shape.basis.astype(np.float64).T + ce @ model.expression.basis.astype(np.float64).T
    v = model.shape.mean + model.expression.mean + d.reshape(n, -1, 3)
    _check_face_like(model, v, RANDOM_DRAW_BOUND_MM, [f"random draw {i}" for i in range(n)])


# --------------------------------------------------------------- landmarks
def test_landmark_sets(model):
    from fitem.landmarks.mapping import IBUG68_FROM_MEDIAPIPE

    mp, ib = model.landmarks["mediapipe468"], model.landmarks["ibug68"]
    assert mp.shape == (468,) and ib.shape == (68,)
    np.testing.assert_array_equal(ib, mp[IBUG68_FROM_MEDIAPIPE])
    assert len(np.unique(ib)) >= 60


def test_landmarks_sit_on_the_right_anatomy(model):
    p = model.shape.mean[model.landmarks["ibug68"]]
    assert int(np.argmax(p[:, 2])) == 30, "the nose tip (iBUG 30) must be the most frontal iBUG point"
    # subject's right eye (36-41) at -x, left eye (42-47) at +x; corners ordered
    assert p[36, 0] < p[39, 0] < 0 < p[42, 0] < p[45, 0]
    assert p[36, 0] < p[45, 0]
    # eyes above the nose tip above the mouth; brows above the eyes; chin lowest
    assert p[36:48, 1].mean() > p[30, 1] > p[48:68, 1].mean()
    assert p[17:27, 1].mean() > p[36:48, 1].max()
    assert int(np.argmin(p[:, 1])) == 8
    # mouth corners outside the nose wings
    assert p[48, 0] < p[31, 0] and p[54, 0] > p[35, 0]
    # jaw points (0-16) on the outline: on or next to the 2-D convex hull of all 68 points
    hull = ConvexHull(p[:, :2])
    depth = (-(p[:, :2] @ hull.equations[:, :2].T + hull.equations[:, 2])).min(1)
    assert depth[:17].max() < 3.0, f"jaw points inside the outline by {depth[:17].max():.1f} mm"
    assert depth[27:].min() > 10.0, "inner landmarks must lie well inside the outline"


def test_landmark_file_matches_the_template():
    t = symmetric_template()
    lms = demo_landmarks(t)
    assert lms["mediapipe468"].shape == (468,)
    data = json.loads(LANDMARK_FILE.read_text())
    assert data["template_sha256"] == t.template_sha256
    assert len(data["mediapipe468"]) == 468 and sorted(data["mirror"]) == list(range(468))
    # the stored points lie on the template surface (within a millimetre of a vertex)
    pos = t.from_file_coordinates(np.asarray(data["mediapipe468"]))
    gap = np.linalg.norm(pos[:, None, :] - t.vertices[None, lms["mediapipe468"], :], axis=2).diagonal()
    assert np.median(gap) < 1.5


def test_landmark_file_for_another_template_is_refused(tmp_path):
    data = json.loads(LANDMARK_FILE.read_text())
    data["template_sha256"] = "0" * 64
    path = tmp_path / "lm.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="different autofacemonker template"):
        demo_landmarks(symmetric_template(), path)
    path.write_text("{}")
    with pytest.raises(ModelFileError, match="derive_demo_landmarks"):
        demo_landmarks(symmetric_template(), path)


def test_landmark_groups_match_mediapipe():
    fl = pytest.importorskip("mediapipe.tasks.python.vision.face_landmarker")
    groups = json.loads(LANDMARK_FILE.read_text())["groups"]
    conn = fl.FaceLandmarksConnections
    assert groups["lips"] == [[c.start, c.end] for c in conn.FACE_LANDMARKS_LIPS]
    assert groups["left_eyebrow"] == [[c.start, c.end] for c in conn.FACE_LANDMARKS_LEFT_EYEBROW]


# ------------------------------------------------------------------ colour
def test_colour_mean_has_facial_regions(model):
    c = model.colour.mean
    assert c.min() >= 0.0 and c.max() <= 1.0
    mp = model.landmarks["mediapipe468"]

    def redness(ids):
        x = c[mp[ids]]
        return float((x[:, 0] / (x[:, 1] + x[:, 2])).mean())

    def luminance(ids):
        return float(c[mp[ids]].mean())

    lips, cheeks = [12, 15, 38, 268, 86, 316], [50, 280, 205, 425]
    brows, forehead = [105, 334, 66, 296, 52, 282], [151, 9, 108, 337]
    assert redness(lips) > redness(cheeks) + 0.1
    assert luminance(lips) < luminance(cheeks)
    assert luminance(brows) < luminance(forehead) - 0.1
    eyes = [159, 145, 386, 374]
    assert luminance(eyes) < luminance(forehead) - 0.1
    skin = luminance(forehead)
    assert 0.45 < skin < 0.8  # ×0.8 ambient shading gives photo-like values


def test_colour_samples_at_two_sigma_stay_in_range(model):
    b, mean = model.colour.basis.astype(np.float64), model.colour.mean.reshape(-1).astype(np.float64)
    outside = []
    for j in range(model.n_colour):
        for s in (-2.0, 2.0):
            col = mean + s * b[:, j]
            outside.append(((col < 0) | (col > 1)).mean())
    assert max(outside) < 0.01
    rng = np.random.default_rng(1)
    outside = [(((col := mean + b @ np.clip(rng.normal(size=model.n_colour), -2, 2)) < 0) | (col > 1)).mean()
               for _ in range(50)]
    assert np.mean(outside) < 0.01 and max(outside) < 0.05


def test_colour_can_become_dark_in_the_occluder_prone_regions(model):
    """Brows, eyes, lips and the beard area vary much more against the skin than skin does against skin.

    On photographs these regions are dark or saturated; if the colour model
    could not follow, the EM would call them occlusion.
    """
    b = model.colour.basis.astype(np.float64).reshape(model.n_vertices, 3, -1)
    mp = model.landmarks["mediapipe468"]
    forehead = [151, 9, 108, 337]

    def contrast_sd(ids):  # std of (region colour - forehead colour), averaged over RGB
        d = b[mp[ids]].mean(0) - b[mp[forehead]].mean(0)
        return float(np.sqrt((d ** 2).sum(1).mean()))

    skin = contrast_sd([50, 280])  # cheeks
    for name, ids in {"brows": [105, 334, 66, 296], "eyes": [159, 386, 145, 374], "lips": [12, 15],
                      "chin (beard)": [152, 175, 199]}.items():
        assert contrast_sd(ids) > 1.8 * skin, f"{name} cannot depart from the skin colour enough"
    first = model.colour.basis[:, 0].reshape(-1, 3)
    assert np.all(np.sign(first) == np.sign(first[0, 0])), "the first component is a global tone change"


# ------------------------------------------------------------------- cache
def test_cache_roundtrip(model, tmp_path, monkeypatch):
    monkeypatch.setattr(demo_mod, "build_demo_model", lambda *a, **k: model)
    demo_mod._MEMO.clear()
    saved = demo_model(cache_dir=tmp_path)
    path = demo_cache_path(tmp_path)
    assert saved is model and path.is_file() and f"-v{demo_mod.DEMO_BUILD_VERSION}-" in path.name
    demo_mod._MEMO.clear()

    def no_build(*args, **kwargs):
        raise AssertionError("the cached model should have been loaded")

    monkeypatch.setattr(demo_mod, "build_demo_model", no_build)
    loaded = demo_model(cache_dir=tmp_path)
    assert loaded.checksum == model.checksum
    assert demo_model(cache_dir=tmp_path) is loaded
    assert loaded.metadata["shape.parity"] == model.metadata["shape.parity"]
    np.testing.assert_array_equal(loaded.landmarks["ibug68"], model.landmarks["ibug68"])
    demo_mod._MEMO.clear()


def test_cache_key_follows_the_inputs(tmp_path, monkeypatch):
    base = demo_cache_path(tmp_path)
    assert demo_cache_path(tmp_path, n_colour=10) != base
    import fitem.landmarks.mapping as mapping

    monkeypatch.setattr(mapping, "IBUG68_FROM_MEDIAPIPE", mapping.IBUG68_FROM_MEDIAPIPE[::-1].copy())
    assert demo_cache_path(tmp_path) != base, "a refined iBUG mapping must invalidate the cache"


def test_build_pieces_are_deterministic():
    from fitem.models import gp

    t1, t2 = symmetric_template(), symmetric_template()
    np.testing.assert_array_equal(t1.vertices, t2.vertices)
    np.testing.assert_array_equal(demo_landmarks(t1)["mediapipe468"], demo_landmarks(t2)["mediapipe468"])
    t = demo_mod._centre(t1, demo_landmarks(t1))
    terms = demo_mod.demo_kernels(demo_mod.demo_regions(t, demo_landmarks(t)))["expression"]
    rigid = gp.rigid_motion_basis(t.vertices)
    a = gp.low_rank_gp(t.vertices, t.mirror, terms, 10, remove=rigid)
    b = gp.low_rank_gp(t.vertices, t.mirror, terms, 10, remove=rigid)
    np.testing.assert_array_equal(a.basis, b.basis)


@pytest.mark.slow
def test_two_builds_are_identical(model):
    assert build_demo_model().checksum == model.checksum


def test_rebuild_and_damaged_cache(model, tmp_path, monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(demo_mod, "build_demo_model", lambda *a, **k: calls.append(a) or model)
    demo_mod._MEMO.clear()
    path = demo_cache_path(tmp_path)
    (tmp_path / "demo-model-v0-stale.npz").write_bytes(b"old")
    path.write_bytes(b"PK\x03\x04 damaged")
    with caplog.at_level(logging.WARNING, logger="fitem.models.demo"):
        demo_model(cache_dir=tmp_path)
    assert len(calls) == 1 and "unreadable" in caplog.text
    assert not (tmp_path / "demo-model-v0-stale.npz").exists()
    demo_model(rebuild=True, cache_dir=tmp_path)
    assert len(calls) == 2
    demo_mod._MEMO.clear()


@pytest.mark.slow
def test_landmark_file_is_reproducible(tmp_path):
    """Re-running scripts/derive_demo_landmarks.py (MediaPipe on renders, ~25 s) gives the shipped file."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("mediapipe")
    script = Path(__file__).resolve().parents[2] / "scripts" / "derive_demo_landmarks.py"
    out = tmp_path / "lm.json"
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True, capture_output=True)
    new, shipped = json.loads(out.read_text()), json.loads(LANDMARK_FILE.read_text())
    diff_mm = np.abs(np.asarray(new["mediapipe468"]) - np.asarray(shipped["mediapipe468"])).max() * 60.0
    assert diff_mm < 0.5
    assert new["groups"] == shipped["groups"] and new["mirror"] == shipped["mirror"]
