"""Model file loaders: BFM 2017 statismo, BFM 2009 .mat (v5, v7.3), front crop, fitem's own format."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import torch

from fitem.errors import InvalidInputError, ModelError, ModelFileError
from fitem.models import load_model
from fitem.models.io import (
    FORMAT_VERSION,
    ExpressionBasis,
    detect_model_format,
    load_exp_pca_bin,
    load_model_file,
    model_summary,
    orient_outward,
    save_model,
)
from fitem.models.morphable import LinearBlock, MorphableModel
from tests.models import bfm_files as bf

ATOL_MM = 1e-4


@pytest.fixture(scope="module")
def face() -> bf.Face:
    return bf.random_face(seed=3)


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _assert_outward(model: MorphableModel, centre: np.ndarray) -> None:
    """Every triangle's normal points away from the centre of the sphere the test mesh lies on."""
    v = model.shape.mean.astype(np.float64) + model.expression.mean
    t = model.triangles
    n = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    assert np.all(np.einsum("ij,ij->i", n, v[t].mean(1) - centre) > 0)


def _same_triangles(a: np.ndarray, b: np.ndarray) -> bool:
    return {tuple(sorted(x)) for x in a.tolist()} == {tuple(sorted(x)) for x in b.tolist()}


def _assert_models_equal(a: MorphableModel, b: MorphableModel) -> None:
    assert a.name == b.name and dict(a.metadata) == dict(b.metadata)
    for blk in ("shape", "expression", "colour"):
        for part in ("mean", "basis", "variance"):
            x, y = getattr(getattr(a, blk), part), getattr(getattr(b, blk), part)
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), (blk, part)
    assert np.array_equal(a.triangles, b.triangles) and a.triangles.dtype == np.int64
    assert list(a.landmarks) == list(b.landmarks)
    for k in a.landmarks:
        assert np.array_equal(a.landmarks[k], b.landmarks[k])
    assert a.checksum == b.checksum


# ---------------------------------------------------------------- BFM 2017 statismo
def test_statismo_round_trip_geometry_colour_triangles_landmarks(tmp_path, face):
    lms = [("center.nose.tip", face.mean[40] + [0.2, -0.1, 0.1]), ("right.eye.corner_outer", face.mean[50]),
           ("left.ear.lobe", face.mean[0] + [0.0, 0.0, -60.0])]  # the last lies outside the crop
    path = bf.write_statismo(tmp_path / "model2017-1_face12_nomouth.h5", face, landmarks=lms, inward=True)
    assert detect_model_format(path) == "statismo-h5"
    model = load_model_file(path)
    assert (model.n_vertices, model.n_shape, model.n_expression, model.n_colour) == (face.n, 5, 4, 6)
    assert model.name == "model2017-1_face12_nomouth"
    rng = np.random.default_rng(0)
    cs, ce, cc = rng.normal(size=5), rng.normal(size=4), rng.normal(size=6)
    v, a = model.instance(_t(cs), _t(ce), _t(cc))
    ev, ea = bf.expected(face, cs, ce, cc)
    np.testing.assert_allclose(v.numpy(), ev, atol=ATOL_MM)
    np.testing.assert_allclose(a.numpy(), ea, atol=1e-5)
    # basis column = orthonormal direction × sqrt(variance)
    np.testing.assert_allclose(model.shape.variance, face.shape_std ** 2, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(model.shape.basis, axis=0), face.shape_std, rtol=1e-5)
    # triangles: 0-based int64, the file's (inward) winding corrected
    assert model.triangles.dtype == np.int64 and model.triangles.min() == 0
    assert _same_triangles(model.triangles, face.tri_out) and model.metadata["triangles_flipped"] == "true"
    _assert_outward(model, face.centre)
    # landmarks: nearest vertices, names kept in order, the far one dropped
    assert model.landmark_indices("bfm2017").tolist() == [40, 50]
    assert json.loads(model.metadata["landmarks.bfm2017.names"]) == ["center.nose.tip", "right.eye.corner_outer"]
    assert json.loads(model.metadata["landmarks.bfm2017.dropped"]) == ["left.ear.lobe"]
    assert model.metadata["format"] == "statismo-h5" and model.metadata["units"] == "mm"
    assert model.metadata["source_file"] == str(path.resolve())


def test_statismo_expression_mean_is_an_offset(tmp_path, face):
    model = load_model_file(bf.write_statismo(tmp_path / "m.h5", face))
    np.testing.assert_allclose(model.expression.mean, face.expr_mean, atol=1e-5)
    v, _ = model.instance()
    np.testing.assert_allclose(v.numpy(), face.mean + face.expr_mean, atol=ATOL_MM)


@pytest.mark.parametrize("version", [(0, 8), None])
def test_statismo_old_and_unversioned_basis_conventions(tmp_path, face, version):
    ref = load_model_file(bf.write_statismo(tmp_path / "ref.h5", face))
    other = load_model_file(bf.write_statismo(tmp_path / "other.h5", face, version=version))
    np.testing.assert_allclose(other.shape.basis, ref.shape.basis, atol=1e-4)
    np.testing.assert_allclose(other.colour.basis, ref.colour.basis, atol=1e-6)


def test_statismo_without_expression_gets_empty_block(tmp_path, face):
    model = load_model_file(bf.write_statismo(tmp_path / "m.h5", face, expression=False))
    assert model.n_expression == 0 and model.metadata["expression"] == "none in file"
    np.testing.assert_allclose(model.instance()[0].numpy(), face.mean, atol=ATOL_MM)


# ---------------------------------------------------------------- BFM 2009
@pytest.mark.parametrize("writer,tl_dtype", [(bf.write_mat_v5, np.float64), (bf.write_mat_v5, np.int32),
                                             (bf.write_mat_v73, np.float64), (bf.write_mat_v73, np.int32)])
def test_bfm2009_units_std_devs_and_one_based_triangles(tmp_path, face, writer, tl_dtype):
    path = writer(tmp_path / "01_MorphableModel.mat", bf.bfm2009_arrays(face, tl_dtype=tl_dtype))
    assert detect_model_format(path) == "bfm2009-mat"
    model = load_model_file(path)
    assert model.n_expression == 0 and model.metadata["format"] == "bfm2009-mat"
    cs, cc = np.linspace(-2, 2, 5), np.linspace(1, -1, 6)
    v, a = model.instance(_t(cs), None, _t(cc))
    ev, ea = bf.expected(face, cs, None, cc, expression=False)
    np.testing.assert_allclose(v.numpy(), ev, atol=ATOL_MM)  # µm → mm, EV = std devs
    np.testing.assert_allclose(a.numpy(), ea, atol=1e-5)  # 0-255 → [0, 1]
    np.testing.assert_allclose(model.shape.variance, face.shape_std ** 2, rtol=1e-5)
    assert _same_triangles(model.triangles, face.tri_out)
    _assert_outward(model, face.centre)


def test_bfm2009_v5_and_v73_give_the_same_model(tmp_path, face):
    arrays = bf.bfm2009_arrays(face)
    a = load_model_file(bf.write_mat_v5(tmp_path / "a.mat", arrays))
    b = load_model_file(bf.write_mat_v73(tmp_path / "b.mat", arrays))
    assert a.checksum == b.checksum


def test_bfm2009_with_separate_expression_basis_and_crop(tmp_path, face):
    keep = np.arange(3, face.n)  # the expression basis covers all but 3 vertices
    mpath = bf.write_mat_v5(tmp_path / "01_MorphableModel.mat", bf.bfm2009_arrays(face))
    dirs_um = face.expr_u.reshape(face.n, 3, -1)[keep].reshape(3 * keep.size, -1)
    std_um = face.expr_std * 1e3
    np.savetxt(tmp_path / "std_exp.txt", std_um)
    bin_path = bf.write_exp_pca_bin(tmp_path / "Exp_Pca.bin", dirs_um, mean=np.full(dirs_um.shape[0], 7.0))
    expr = load_exp_pca_bin(bin_path, tmp_path / "std_exp.txt", vertex_index=keep)
    assert expr.n_components == 4
    model = load_model_file(mpath, expression=expr)
    assert model.n_vertices == keep.size and model.n_expression == 4
    cs, ce = np.ones(5), np.array([1.0, -1.0, 0.5, 0.0])
    v, _ = model.instance(_t(cs), _t(ce))
    full = face.mean.reshape(-1) + face.shape_u @ (cs * face.shape_std) + face.expr_u @ (ce * face.expr_std)
    np.testing.assert_allclose(v.numpy(), full.reshape(-1, 3)[keep], atol=ATOL_MM)
    assert model.triangles.max() < keep.size and model.n_triangles < face.tri_out.shape[0]
    _assert_outward(model, face.centre)
    # an array basis of the model's own size needs no vertex_index
    same = load_model_file(mpath, expression=ExpressionBasis(face.expr_u, std_um))
    assert same.n_vertices == face.n


def test_exp_pca_bin_truncated(tmp_path, face):
    p = bf.write_exp_pca_bin(tmp_path / "Exp_Pca.bin", face.expr_u)
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(ModelFileError, match="Exp_Pca.bin"):
        load_exp_pca_bin(p, np.ones(4))


# ---------------------------------------------------------------- front crop
@pytest.mark.parametrize("writer", [bf.write_mat_v5, bf.write_mat_v73])
def test_front_crop_matches_bfm2009_in_mm(tmp_path, face, writer):
    keep = np.arange(2, face.n)
    kp = np.arange(68)[::-1].copy()
    path = writer(tmp_path / "BFM_model_front.mat", bf.front_arrays(face, keep, keypoints=kp))
    assert detect_model_format(path) == "bfm-front-mat"
    model = load_model_file(path)
    assert (model.n_vertices, model.n_shape, model.n_expression, model.n_colour) == (keep.size, 4, 4, 5)
    cs, ce, cc = np.array([1.0, -2.0, 0.5, 1.0]), np.array([0.3, 1.0, -1.0, 2.0]), np.linspace(-1, 1, 5)
    v, a = model.instance(_t(cs), _t(ce), _t(cc))
    geo = face.mean.reshape(-1) + face.shape_u[:, :4] @ (cs * face.shape_std[:4]) + face.expr_u @ (ce * face.expr_std)
    col = face.colour_mean.reshape(-1) + face.colour_u[:, :5] @ (cc * face.colour_std[:5])
    np.testing.assert_allclose(v.numpy(), geo.reshape(-1, 3)[keep], atol=ATOL_MM)  # dm → mm
    np.testing.assert_allclose(a.numpy(), col.reshape(-1, 3)[keep], atol=1e-5)  # 0-255 → [0, 1]
    # already-scaled bases: variance = squared column norm = std dev² for orthonormal directions
    np.testing.assert_allclose(model.shape.variance, np.sum(model.shape.basis.astype(float) ** 2, 0), rtol=1e-5)
    assert model.landmark_indices("ibug68").tolist() == kp.tolist()  # 1-based → 0-based
    assert model.triangles.min() >= 0 and model.triangles.dtype == np.int64
    _assert_outward(model, face.centre)


def test_front_crop_coincides_with_bfm2009_vertices(tmp_path, face):
    keep = np.arange(2, face.n)
    b09 = load_model_file(bf.write_mat_v5(tmp_path / "01_MorphableModel.mat", bf.bfm2009_arrays(face)))
    front = load_model_file(bf.write_mat_v5(tmp_path / "BFM_model_front.mat", bf.front_arrays(face, keep)))
    np.testing.assert_allclose(front.shape.mean, b09.shape.mean[keep], atol=1e-4)
    np.testing.assert_allclose(front.colour.mean, b09.colour.mean[keep], atol=1e-6)


# ---------------------------------------------------------------- fitem format
@pytest.mark.parametrize("suffix", [".npz", ".h5"])
@pytest.mark.parametrize("compress", [False, True])
def test_fitem_format_round_trips_every_field(tmp_path, face, suffix, compress):
    lms = [("center.nose.tip", face.mean[40])]
    model = load_model_file(bf.write_statismo(tmp_path / "m.h5", face, landmarks=lms))
    model = MorphableModel(model.name, model.shape, model.expression, model.colour, model.triangles,
                           {**model.landmarks, "ibug68": np.arange(68), "with/slash": np.array([1, 2])},
                           {**model.metadata, "licence": "test – ünïcode"})
    out = save_model(model, tmp_path / f"copy{suffix}", compress=compress)
    assert detect_model_format(out) == ("fitem-npz" if suffix == ".npz" else "fitem-h5")
    _assert_models_equal(model, load_model_file(out))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_fitem_format_empty_blocks_no_landmarks(tmp_path, face, suffix):
    n = face.n
    model = MorphableModel("bare", LinearBlock(face.mean, np.zeros((3 * n, 0)), np.zeros(0)), LinearBlock.empty(n),
                           LinearBlock.empty(n), face.tri_out)
    back = load_model_file(save_model(model, tmp_path / f"bare{suffix}"))
    _assert_models_equal(model, back)


def test_npz_is_readable_without_pickle(tmp_path, face):
    model = load_model_file(bf.write_statismo(tmp_path / "m.h5", face))
    out = save_model(model, tmp_path / "m.npz")
    with np.load(out, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
        assert int(z["format_version"]) == FORMAT_VERSION and str(z["checksum"]) == model.checksum


def test_fitem_name_override_and_registry(tmp_path, face):
    path = bf.write_statismo(tmp_path / "m.h5", face)
    assert load_model_file(path, name="bfm2017-face12").name == "bfm2017-face12"
    out = save_model(load_model_file(path), tmp_path / "m.npz")
    assert load_model_file(out, name="renamed").name == "renamed"
    assert load_model(out, derive_landmarks=False).checksum == load_model(str(path), derive_landmarks=False).checksum  # registry → load_model_file(Path)


def test_model_summary(tmp_path, face):
    model = load_model_file(bf.write_statismo(tmp_path / "m.h5", face, landmarks=[("a", face.mean[3])]))
    s = model_summary(model)
    assert s["vertices"] == face.n and s["triangles"] == face.tri_out.shape[0]
    assert s["components"] == {"shape": 5, "expression": 4, "colour": 6}
    assert s["landmarks"] == {"bfm2017": 1} and s["checksum"] == model.checksum and s["name"] == "m"
    ext = (face.mean + face.expr_mean).max(0) - (face.mean + face.expr_mean).min(0)
    np.testing.assert_allclose(s["extent_mm"], ext, atol=1e-2)
    json.dumps(s)


def test_orient_outward_flat_and_closed():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], float)
    tri, flipped = orient_outward(v, np.array([[0, 2, 1], [1, 2, 3]]))  # faces -z
    assert flipped and tri.tolist() == [[0, 1, 2], [1, 3, 2]]
    # a tetrahedron wound inwards is turned outwards; outwards stays
    tv = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    out = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    tri, flipped = orient_outward(tv, out)
    assert not flipped and np.array_equal(tri, out)
    tri, flipped = orient_outward(tv, out[:, [0, 2, 1]])
    assert flipped and np.array_equal(tri, out)


# ---------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="nope.h5.*not found"):
        load_model_file(tmp_path / "nope.h5")


@pytest.mark.parametrize("name", ["junk.h5", "junk.mat", "junk.npz", "junk.bin"])
def test_random_bytes(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(ModelFileError, match=name):
        load_model_file(p)


def test_truncated_statismo(tmp_path, face):
    p = bf.write_statismo(tmp_path / "cut.h5", face)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="cut.h5"):
        load_model_file(p)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_truncated_fitem(tmp_path, face, suffix):
    model = load_model_file(bf.write_statismo(tmp_path / "m.h5", face))
    p = save_model(model, tmp_path / f"cut{suffix}")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ModelFileError, match=f"cut{suffix}"):
        load_model_file(p)


def test_hdf5_without_statismo_groups(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("points", data=np.zeros((3, 10)))
    with pytest.raises(ModelFileError, match=r"other.h5.*shape/model"):
        load_model_file(p)


def test_statismo_missing_color_group(tmp_path, face):
    p = bf.write_statismo(tmp_path / "m.h5", face)
    with h5py.File(p, "a") as f:
        del f["color"]
    with pytest.raises(ModelFileError, match="missing color/model/mean"):
        load_model_file(p)


def test_mat_without_model_keys(tmp_path):
    p = bf.write_mat_v5(tmp_path / "x.mat", {"foo": np.zeros((3, 3))})
    with pytest.raises(ModelFileError, match=r"x.mat.*shapeMU.*meanshape.*it has foo"):
        load_model_file(p)


@pytest.mark.parametrize("writer", [bf.write_mat_v5, bf.write_mat_v73])
def test_mat_names_missing_keys(tmp_path, face, writer):
    arrays = bf.bfm2009_arrays(face)
    del arrays["shapePC"], arrays["texEV"]
    with pytest.raises(ModelFileError, match=r"missing keys shapePC, texEV"):
        load_model_file(writer(tmp_path / "01_MorphableModel.mat", arrays))
    front = bf.front_arrays(face, np.arange(face.n))
    del front["exBase"]
    with pytest.raises(ModelFileError, match=r"BFM_model_front.mat.*missing keys exBase"):
        load_model_file(writer(tmp_path / "BFM_model_front.mat", front))


def test_statismo_mismatched_basis_sizes(tmp_path, face):
    bad = np.zeros((3 * face.n - 3, 5), np.float32)
    p = bf.write_statismo(tmp_path / "m.h5", face, basis_override={"shape": bad})
    with pytest.raises(ModelFileError, match=r"m.h5.*shape/model/pcaBasis.*expected shape"):
        load_model_file(p)
    p = bf.write_statismo(tmp_path / "m2.h5", face, basis_override={"color": face.colour_u[:, :4]})
    with pytest.raises(ModelFileError, match=r"4 columns but color/model/pcaVariance has 6"):
        load_model_file(p)


def test_statismo_blocks_with_different_vertex_counts(tmp_path, face):
    p = bf.write_statismo(tmp_path / "m.h5", face)
    with h5py.File(p, "a") as f:
        del f["expression/model/mean"], f["expression/model/pcaBasis"]
        f["expression/model/mean"] = np.zeros(3 * face.n - 3, np.float32)
        f["expression/model/pcaBasis"] = np.zeros((3 * face.n - 3, 4), np.float32)
    with pytest.raises(ModelFileError, match="all blocks must share one mesh"):
        load_model_file(p)


def test_bfm2009_mismatched_basis_sizes(tmp_path, face):
    arrays = bf.bfm2009_arrays(face)
    arrays["texPC"] = arrays["texPC"][:-3]
    with pytest.raises(ModelFileError, match=r"texPC: expected shape"):
        load_model_file(bf.write_mat_v5(tmp_path / "b.mat", arrays))
    arrays = bf.bfm2009_arrays(face)
    arrays["shapeEV"] = arrays["shapeEV"][:-1]
    with pytest.raises(ModelFileError, match=r"shapePC: expected shape"):
        load_model_file(bf.write_mat_v5(tmp_path / "c.mat", arrays))


def test_front_mismatched_sizes_and_keypoints(tmp_path, face):
    arrays = bf.front_arrays(face, np.arange(face.n))
    arrays["idBase"] = arrays["idBase"][:-3]
    with pytest.raises(ModelFileError, match=r"idBase: expected shape"):
        load_model_file(bf.write_mat_v5(tmp_path / "f.mat", arrays))
    arrays = bf.front_arrays(face, np.arange(face.n))
    arrays["keypoints"] = arrays["keypoints"][:, :60]
    with pytest.raises(ModelFileError, match=r"68 iBUG"):
        load_model_file(bf.write_mat_v5(tmp_path / "g.mat", arrays))


def test_nan_in_basis(tmp_path, face):
    u = face.shape_u.copy()
    u[7, 2] = np.nan
    with pytest.raises(ModelFileError, match=r"m.h5.*NaN"):
        load_model_file(bf.write_statismo(tmp_path / "m.h5", face, basis_override={"shape": u}))
    arrays = bf.bfm2009_arrays(face)
    arrays["texPC"][0, 0] = np.nan
    with pytest.raises(ModelFileError, match=r"b.mat.*texPC.*NaN"):
        load_model_file(bf.write_mat_v73(tmp_path / "b.mat", arrays))


def test_triangles_out_of_range_and_zero_based_mat(tmp_path, face):
    p = bf.write_statismo(tmp_path / "m.h5", face)
    with h5py.File(p, "a") as f:
        cells = f["shape/representer/cells"][()]
        cells[0, 0] = face.n
        f["shape/representer/cells"][...] = cells
    with pytest.raises(ModelFileError, match=r"m.h5.*triangles index vertices"):
        load_model_file(p)
    arrays = bf.bfm2009_arrays(face)
    arrays["tl"] = arrays["tl"] - 1  # 0-based where MATLAB's 1-based are expected
    with pytest.raises(ModelFileError, match=r"tl should be 1-based"):
        load_model_file(bf.write_mat_v5(tmp_path / "b.mat", arrays))


def test_bad_landmark_json(tmp_path, face):
    p = bf.write_statismo(tmp_path / "m.h5", face, landmarks=[("a", face.mean[0])])
    with h5py.File(p, "a") as f:
        del f["metadata/landmarks/json"]
        f.create_dataset("metadata/landmarks/json", data="[{not json", dtype=h5py.string_dtype())
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model_file(p)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_checksum_mismatch(tmp_path, face, suffix):
    model = load_model_file(bf.write_statismo(tmp_path / "m.h5", face))
    p = save_model(model, tmp_path / f"m{suffix}")
    if suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        data["shape_mean"] = data["shape_mean"] + np.float32(0.5)
        with open(p, "wb") as fh:
            np.savez(fh, **data)
    else:
        with h5py.File(p, "a") as f:
            f["triangles"][0] = f["triangles"][0][[1, 0, 2]]
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        load_model_file(p)


def test_future_version_and_foreign_npz(tmp_path, face):
    model = load_model_file(bf.write_statismo(tmp_path / "m.h5", face))
    p = save_model(model, tmp_path / "m.npz")
    with np.load(p, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    data["format_version"] = np.array(FORMAT_VERSION + 1)
    with open(p, "wb") as fh:
        np.savez(fh, **data)
    with pytest.raises(ModelFileError, match="upgrade fitem"):
        load_model_file(p)
    q = tmp_path / "weights.npz"
    np.savez(q, w=np.zeros(3))
    with pytest.raises(ModelFileError, match="not a fitem model"):
        load_model_file(q)


def test_npz_with_object_array_is_refused(tmp_path, face):
    model = load_model_file(bf.write_statismo(tmp_path / "m.h5", face))
    p = save_model(model, tmp_path / "m.npz")
    with np.load(p, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    data["metadata_values"] = np.array(list(data["metadata_values"]), dtype=object)
    with open(p, "wb") as fh:
        np.savez(fh, **data)
    with pytest.raises(ModelFileError, match="m.npz"):
        load_model_file(p)


def test_expression_argument_only_for_bfm2009(tmp_path, face):
    p = bf.write_statismo(tmp_path / "m.h5", face)
    with pytest.raises(InvalidInputError, match="only used with BFM 2009"):
        load_model_file(p, expression=ExpressionBasis(face.expr_u, face.expr_std))
    mpath = bf.write_mat_v5(tmp_path / "b.mat", bf.bfm2009_arrays(face))
    with pytest.raises(ModelFileError, match="covers 71 vertices but the model has 72"):
        load_model_file(mpath, expression=ExpressionBasis(face.expr_u[3:], face.expr_std))
    with pytest.raises(ModelError):
        ExpressionBasis(face.expr_u, face.expr_std[:2])


def test_save_model_rejects_other_extensions(tmp_path, face):
    model = load_model_file(bf.write_statismo(tmp_path / "m.h5", face))
    with pytest.raises(ModelFileError, match=r"\.obj.*\.npz or \.h5"):
        save_model(model, tmp_path / "m.obj")
    with pytest.raises(InvalidInputError):
        save_model("not a model", tmp_path / "m.npz")  # type: ignore[arg-type]
