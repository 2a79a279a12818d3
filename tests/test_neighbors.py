"""numpy kNN / LOF against scikit-learn (a test dependency only), reduction, classification with rejection."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from edge_detect import neighbors as nb
from edge_detect.scoring import scorer_from_dict

sk_neighbors = pytest.importorskip("sklearn.neighbors")


def _data(seed: int, n: int = 300, d: int = 8, q: int = 120):
    rng = np.random.default_rng(seed)
    # Two clusters of different density, so LOF is not trivially 1 everywhere.
    ref = np.concatenate([rng.normal(0, 1, (n // 2, d)), rng.normal(4, 0.3, (n - n // 2, d))])
    query = np.concatenate([rng.normal(0, 1.5, (q // 2, d)), rng.normal(4, 1.0, (q - q // 2, d))])
    return ref, query


@pytest.mark.parametrize("seed,n_neighbors", [(0, 20), (1, 5), (2, 35)])
def test_lof_matches_sklearn(seed, n_neighbors):
    ref, query = _data(seed)
    sk = sk_neighbors.LocalOutlierFactor(n_neighbors=n_neighbors, novelty=True, contamination=0.01).fit(ref)
    kdist, lrd, train_lof, k = nb.lof_fit(ref, n_neighbors)
    assert k == sk.n_neighbors_
    np.testing.assert_allclose(lrd, sk._lrd, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(train_lof, -sk.negative_outlier_factor_, rtol=0, atol=1e-6)
    ours = nb.lof_scores(query, ref, kdist, lrd, k)
    np.testing.assert_allclose(ours, -sk.score_samples(query), rtol=0, atol=1e-6)
    # The contamination threshold is -offset_, and score > threshold is exactly predict == -1.
    thr = nb.contamination_threshold(train_lof, 0.01)
    assert thr == pytest.approx(-sk.offset_, abs=1e-6)
    np.testing.assert_array_equal(ours > thr, sk.predict(query) == -1)
    np.testing.assert_allclose(ours - thr, -sk.decision_function(query), atol=1e-6)


def test_lof_caps_neighbours_like_sklearn():
    ref, query = _data(3, n=12)
    sk = sk_neighbors.LocalOutlierFactor(n_neighbors=20, novelty=True).fit(ref)
    kdist, lrd, _, k = nb.lof_fit(ref, 20)
    assert k == 11 == sk.n_neighbors_
    np.testing.assert_allclose(nb.lof_scores(query, ref, kdist, lrd, k), -sk.score_samples(query), atol=1e-6)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_knn_matches_sklearn(k):
    ref, query = _data(4, d=16)
    sk = sk_neighbors.NearestNeighbors(n_neighbors=k).fit(ref)
    d_sk, i_sk = sk.kneighbors(query)
    d, i = nb.kneighbors(query, ref, k)
    np.testing.assert_allclose(d, d_sk, atol=1e-6)
    np.testing.assert_array_equal(i, i_sk)
    np.testing.assert_allclose(nb.knn_scores(query, ref, k), d_sk.mean(axis=1), atol=1e-6)
    # Leave-one-out on the references, as sklearn's kneighbors() without X.
    d_self, _ = sk.kneighbors()
    np.testing.assert_allclose(nb.knn_scores(ref, ref, k, exclude_self=True), d_self.mean(axis=1), atol=1e-6)


def test_chunking_does_not_change_results(monkeypatch):
    ref, query = _data(5)
    whole = nb.kneighbors(query, ref, 7)
    monkeypatch.setattr(nb, "CHUNK_BYTES", 1)  # one query row at a time
    chunked = nb.kneighbors(query, ref, 7)
    np.testing.assert_array_equal(whole[1], chunked[1])
    np.testing.assert_allclose(whole[0], chunked[0], atol=1e-12)


def test_float32_reference_is_close_to_float64():
    ref, query = _data(6)
    kd, lrd, _, k = nb.lof_fit(ref.astype(np.float32), 20)
    got = nb.lof_scores(query.astype(np.float32), ref.astype(np.float32), kd, lrd, k)
    sk = sk_neighbors.LocalOutlierFactor(n_neighbors=20, novelty=True).fit(ref.astype(np.float32))
    np.testing.assert_allclose(got, -sk.score_samples(query.astype(np.float32)), rtol=1e-5)


def test_kneighbors_rejects_too_many():
    with pytest.raises(ValueError, match="candidates"):
        nb.kneighbors(np.zeros((1, 2)), np.zeros((3, 2)), 3, exclude_self=True)


def test_scorers_round_trip_through_dict_and_arrays():
    ref, query = _data(7)
    for kind in ("knn", "lof"):
        s, _ = nb.fit_scorer(kind, ref, k=4, n_neighbors=10)
        t = scorer_from_dict(s.to_dict(), s.arrays())
        assert type(t) is type(s)
        # float32 references in the bundle: scores agree to float32 precision.
        np.testing.assert_allclose(t(None, query)[0], s(None, query)[0], rtol=1e-6)
    lof, _ = nb.fit_scorer("lof", ref, n_neighbors=10)
    arrays = lof.arrays()
    del arrays["reference_kdist"], arrays["reference_lrd"]  # a bundle without precomputed LOF fits on load
    np.testing.assert_allclose(scorer_from_dict(lof.to_dict(), arrays)(None, query)[0], lof(None, query)[0])


def test_an_empty_batch_scores_to_no_scores():
    # evaluate on a folder the run never saw has no validation images to score.
    ref, query = _data(7)
    for kind in ("knn", "lof"):
        s, _ = nb.fit_scorer(kind, ref, k=4, n_neighbors=10)
        scores, _ = s(None, query[:0])
        assert scores.shape == (0,)


def test_missing_reference_is_a_clear_error():
    with pytest.raises(ValueError, match="reference"):
        scorer_from_dict({"kind": "lof"}, {})


@pytest.mark.parametrize("k", [0, -1, 31, 2.5, True, "3", None])
def test_knn_k_outside_1_to_n_is_refused_when_the_scorer_is_built(k):
    """A hand-edited manifest: refused once at load, not with a ValueError for every image."""
    ref = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    msg = f"scoring.k must be 1..30 (the reference set's size), got {k!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        scorer_from_dict({"kind": "knn", "k": k}, {"reference": ref})
    assert scorer_from_dict({"kind": "knn", "k": 30}, {"reference": ref}).k == 30
    assert scorer_from_dict({"kind": "knn", "k": 3.0}, {"reference": ref}).k == 3  # JSON may write 3 as 3.0
    with pytest.raises(ValueError, match=r"non-empty \(N, D\) array 'reference'"):
        scorer_from_dict({"kind": "knn", "k": 1}, {"reference": ref[:0]})


@pytest.mark.parametrize("kind", ["knn", "lof"])
def test_fit_refuses_fewer_than_two_reference_embeddings(kind):
    """k would be 0: training must not write a bundle that the load-time check refuses."""
    ref = _data(3, n=40)[0]
    for emb, size in ((ref[:1], None), (ref, 1)):
        with pytest.raises(ValueError, match="at least 2 normal reference embeddings, got 1: train on more normal"):
            nb.fit_scorer(kind, emb, reference_size=size)
    s, _ = nb.fit_scorer(kind, ref[:2])
    scorer_from_dict(s.to_dict(), s.arrays())  # two: the bundle's scorer loads (k = 1)


def test_lof_n_neighbors_is_checked_at_load_too():
    s, _ = nb.fit_scorer("lof", _data(7)[0], n_neighbors=10)
    d, arrays = s.to_dict(), s.arrays()
    for bad in (0, -3, 301):  # 300 references
        with pytest.raises(ValueError, match=r"scoring\.n_neighbors must be 1\.\.300"):
            scorer_from_dict({**d, "n_neighbors": bad}, arrays)
    del arrays["reference_kdist"], arrays["reference_lrd"]  # fitted on load: capped at N - 1, so only >= 1
    with pytest.raises(ValueError, match=r"scoring\.n_neighbors must be a whole number >= 1, got 0"):
        scorer_from_dict({**d, "n_neighbors": 0}, arrays)
    assert scorer_from_dict({**d, "n_neighbors": 5000}, arrays).n_neighbors == 299


def test_host_normalisation_makes_scale_irrelevant_for_lof():
    ref, query = _data(8)
    s, _ = nb.fit_scorer("lof", ref, normalize=True, scale=16.0)
    assert np.allclose(np.linalg.norm(s.reference, axis=1), 16.0, rtol=1e-5)
    # Scaling the model output changes nothing once the scorer normalises it.
    np.testing.assert_allclose(s(None, query * 3.0)[0], s(None, query)[0], rtol=1e-5)


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], float)
    x = np.concatenate([c + rng.normal(0, 0.1, (50, 2)) for c in centres])
    got, assign = nb.kmeans(x, 3, seed=1)
    assert np.abs(np.sort(got, axis=0) - np.sort(centres, axis=0)).max() < 0.1
    assert len(np.unique(assign)) == 3


def test_coreset_covers_better_than_random():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (400, 4))
    idx = nb.kcenter_coreset(x, 32)
    assert len(set(idx.tolist())) == 32
    cover = nb.kneighbors(x, x[idx], 1)[0].max()
    rand = nb.kneighbors(x, x[rng.choice(400, 32, replace=False)], 1)[0].max()
    assert cover < rand


@pytest.mark.parametrize("method", nb.REDUCE_METHODS)
def test_reduce_keeps_size_and_class_shares(method):
    rng = np.random.default_rng(2)
    emb = rng.normal(0, 1, (300, 5)).astype(np.float32)
    labels = np.repeat([0, 1, 2], [200, 60, 40])
    red, lab = nb.reduce_reference(emb, 30, method, labels)
    assert red.shape == (30, 5) and red.dtype == np.float32
    assert np.bincount(lab).tolist() == [20, 6, 4]
    red2, lab2 = nb.reduce_reference(emb, 17, method)
    assert red2.shape == (17, 5) and lab2 is None
    assert nb.reduce_reference(emb, 1000, method)[0] is emb
    with pytest.raises(ValueError, match="reduce"):
        nb.reduce_reference(emb, 10, "random")


def test_classification_with_rejection():
    rng = np.random.default_rng(3)
    centres = np.eye(3) * 5
    ref = np.concatenate([c + rng.normal(0, 0.5, (60, 3)) for c in centres])
    labels = np.repeat([0, 1, 2], 60)
    s, train = nb.fit_scorer("lof", ref, labels, class_names=["a", "b", "c"], reference_size=45, reduce="coreset")
    thr = nb.contamination_threshold(train, 0.01)
    q_in = np.concatenate([c + rng.normal(0, 0.3, (10, 3)) for c in centres])
    q_out = rng.normal(0, 0.3, (10, 3)) + np.array([-6.0, -6.0, -6.0])
    scores, _ = s(None, np.concatenate([q_in, q_out]))
    assert (scores[:30] <= thr).mean() >= 0.9 and (scores[30:] > thr).all()
    np.testing.assert_array_equal(s.classify(q_in), np.repeat([0, 1, 2], 10))
    assert s.class_name(2) == "c"
    knn, _ = nb.fit_scorer("knn", ref)
    with pytest.raises(ValueError, match="labels"):
        knn.classify(q_in)


def test_vote_breaks_ties_towards_nearer():
    labels = np.array([0, 1, 2])
    assert nb._vote(np.array([[1, 0], [2, 2], [0, 1]]), labels).tolist() == [1, 2, 0]


def test_device_package_never_imports_sklearn():
    code = (
        "import sys, edge_detect.neighbors\n"
        "sys.exit(any(m.startswith(('sklearn', 'tensorflow', 'keras')) for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
