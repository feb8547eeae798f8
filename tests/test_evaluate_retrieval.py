"""Retrieval metrics: hand-computed AP, scikit-learn's average_precision_score, instance pairs, revisited Oxford/Paris."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from evaluate_helpers import clustered, write_store
from sslsearch.errors import InvalidArgumentError
from sslsearch.evaluate import (average_precision, class_retrieval, instance_retrieval, load_labelled,
                                read_positive_pairs, read_revisited_ground_truth, retrieval_evaluate,
                                revisited_average_precision, revisited_evaluate)
from sslsearch.evaluate.labels import load_split
from sslsearch.evaluate.revisited import RevisitedGroundTruth, revisited_scores


def test_average_precision_by_hand():
    # positives at ranks 1, 3 and 6 of 6: (1/1 + 2/3 + 3/6) / 3
    relevance = np.array([[1, 0, 1, 0, 0, 1]], bool)
    assert average_precision(relevance, 3)[0] == pytest.approx((1 + 2 / 3 + 3 / 6) / 3)
    # a fourth positive never retrieved still counts in the denominator
    assert average_precision(relevance, 4)[0] == pytest.approx((1 + 2 / 3 + 3 / 6) / 4)
    # AP@2: only the first two ranks, normalised by min(positives, 2)
    assert average_precision(relevance[:, :2], 3)[0] == pytest.approx(1 / 2)
    assert average_precision(np.zeros((1, 3), bool), 0)[0] == 0.0


def test_class_retrieval_against_sklearn_and_brute_force():
    rng = np.random.default_rng(0)
    database, database_labels = clustered(12, 5, 16, spread=1.5, seed=2)
    queries = rng.normal(size=(20, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    query_labels = rng.integers(0, 5, 20)
    result = class_retrieval(database, database_labels, queries, query_labels, ks=[1, 5, 10], device="cpu")
    scores = queries @ database.T
    relevant = database_labels[None, :] == query_labels[:, None]
    assert result.map_full and result.map_label == "mAP"
    expected_map = np.mean([average_precision_score(relevant[i], scores[i]) for i in range(20)])
    assert result.mean_average_precision == pytest.approx(expected_map, abs=1e-9)
    order = np.argsort(-scores, axis=1)
    ranked = np.take_along_axis(relevant, order, axis=1)
    for k in (1, 5, 10):
        assert result.recall[k] == pytest.approx(ranked[:, :k].any(axis=1).mean())
        assert result.precision[k] == pytest.approx(ranked[:, :k].mean())
    truncated = class_retrieval(database, database_labels, queries, query_labels, map_depth=10, device="cpu")
    assert truncated.map_label == "mAP@10"
    expected = np.mean([average_precision(ranked[i:i + 1, :10], relevant[i].sum())[0] for i in range(20)])
    assert truncated.mean_average_precision == pytest.approx(expected)


def test_leave_one_out_excludes_self_from_results_and_positives():
    vectors, labels = clustered(5, 3, 8, spread=0.05, seed=4)  # tight clusters: perfect retrieval
    result = class_retrieval(vectors, labels, vectors, labels, ks=[1, 4], leave_one_out=True, device="cpu")
    assert result.recall[1] == 1.0 and result.precision[4] == 1.0
    assert result.mean_average_precision == pytest.approx(1.0)
    assert result.n_database == 15 and result.map_depth == 14


def test_instance_retrieval_with_pairs(tmp_path):
    rng = np.random.default_rng(5)
    base = rng.normal(size=(10, 8))
    copies = base[:4] + 0.01 * rng.normal(size=(4, 8))  # rows 10..13 are near-copies of rows 0..3
    vectors = np.concatenate([base, copies]).astype(np.float32)
    store = write_store(tmp_path / "emb", vectors / np.linalg.norm(vectors, axis=1, keepdims=True), None)
    rows = load_labelled(store, require_labels=False)
    paths = rows.paths.tolist()
    pairs_file = tmp_path / "pairs.csv"
    pairs_file.write_text("original,copy\n" + "".join(f"{paths[i]},{paths[10 + i]}\n" for i in range(4)))
    pairs = read_positive_pairs(pairs_file)
    with_edits = tmp_path / "with_edits.csv"  # the sample data's third column (edits) is ignored
    with_edits.write_text("original,copy,edits\n" + "".join(f"{a},{b},crop\n" for a, b in pairs))
    assert read_positive_pairs(with_edits) == pairs
    one_column = tmp_path / "one_column.csv"
    one_column.write_text("path\n" + "".join(f"{a}\n" for a, _ in pairs))
    with pytest.raises(InvalidArgumentError, match="fewer than two columns"):
        read_positive_pairs(one_column)
    result = instance_retrieval(rows, rows, pairs, ks=[1], leave_one_out=True, device="cpu")
    assert result.n_queries == 8 and result.n_without_positives == 6  # both sides of each pair are queries
    assert result.recall[1] == 1.0 and result.mean_average_precision == pytest.approx(1.0)
    split = load_split(store, require_labels=False)
    assert retrieval_evaluate(split, pairs=pairs, ks=[1], device="cpu").recall[1] == 1.0
    with pytest.raises(InvalidArgumentError, match="none of the 1 positive pairs"):
        instance_retrieval(rows, rows, [("nope.png", "other.png")], ks=[1], leave_one_out=True)


def test_retrieval_bad_input():
    vectors, labels = clustered(4, 2, 8)
    with pytest.raises(InvalidArgumentError, match="larger than the database"):
        class_retrieval(vectors, labels, vectors, labels, ks=[10])
    with pytest.raises(InvalidArgumentError, match="none of the 8 queries has a positive"):
        class_retrieval(vectors, labels, vectors, labels + 5, ks=[1])


# --------------------------------------------------------------------------- revisited Oxford / Paris


def reference_compute_map(ranks, gnd, kappas=(1, 5, 10)):
    """The revisitop benchmark's compute_map (Radenović et al. 2018), transcribed loop for loop as the reference."""
    m_ap, nempty = 0.0, 0
    nq = len(gnd)
    aps, pr = np.zeros(nq), np.zeros(len(kappas))
    for i in range(nq):
        qgnd = np.array(gnd[i]["ok"])
        if qgnd.shape[0] == 0:
            aps[i] = float("nan")
            nempty += 1
            continue
        qgndj = np.array(gnd[i].get("junk", []))
        pos = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgnd)]
        junk = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgndj)]
        k, ij = 0, 0
        if len(junk):
            ip = 0
            while ip < len(pos):
                while ij < len(junk) and pos[ip] > junk[ij]:
                    k += 1
                    ij += 1
                pos[ip] = pos[ip] - k
                ip += 1
        ap, recall_step = 0.0, 1.0 / len(qgnd)
        for j, rank in enumerate(pos):
            precision_0 = 1.0 if rank == 0 else float(j) / rank
            precision_1 = float(j + 1) / (rank + 1)
            ap += (precision_0 + precision_1) * recall_step / 2.0
        aps[i] = ap
        m_ap += ap
        pos += 1
        for j, kappa in enumerate(kappas):
            kq = min(max(pos), kappa)
            pr[j] += (pos <= kq).sum() / kq
    return m_ap / (nq - nempty), pr / (nq - nempty)


def test_revisited_ap_by_hand():
    assert revisited_average_precision(np.array([0, 2]), 2) == pytest.approx(((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    assert revisited_average_precision(np.array([0, 1, 2]), 3) == pytest.approx(1.0)


def test_revisited_scores_match_the_benchmark_code():
    rng = np.random.default_rng(11)
    n_database, n_queries = 40, 6
    easy = [rng.choice(n_database, 3, replace=False) for _ in range(n_queries)]
    hard = [np.setdiff1d(rng.choice(n_database, 4, replace=False), e) for e in easy]
    junk = [np.setdiff1d(np.setdiff1d(rng.choice(n_database, 5, replace=False), e), h) for e, h in zip(easy, hard)]
    hard[2] = np.array([], np.int64)  # a query without hard positives is skipped in the hard protocol
    truth = RevisitedGroundTruth(tuple(map(str, range(n_database))), tuple(map(str, range(n_queries))),
                                 tuple(easy), tuple(hard), tuple(junk))
    ranking = np.stack([rng.permutation(n_database) for _ in range(n_queries)])
    maps, precisions, skipped = revisited_scores(ranking, truth)
    protocols = {"easy": lambda i: (easy[i], np.concatenate([junk[i], hard[i]])),
                 "medium": lambda i: (np.concatenate([easy[i], hard[i]]), junk[i]),
                 "hard": lambda i: (hard[i], np.concatenate([junk[i], easy[i]]))}
    for name, choose in protocols.items():
        gnd = [{"ok": choose(i)[0], "junk": choose(i)[1]} for i in range(n_queries)]
        expected_map, expected_pr = reference_compute_map(ranking.T.copy(), gnd)
        assert maps[name] == pytest.approx(expected_map)
        assert [precisions[name][k] for k in (1, 5, 10)] == pytest.approx(list(expected_pr))
    assert skipped == {"easy": 0, "medium": 0, "hard": 1}


def test_revisited_end_to_end_from_a_ground_truth_pickle(tmp_path):
    vectors, labels = clustered(6, 3, 16, spread=0.1, seed=8)  # 3 landmarks, 6 images each
    store = write_store(tmp_path / "emb", vectors, None)
    names = [p.split("/")[-1].rsplit(".", 1)[0] for p in load_labelled(store, require_labels=False).paths]
    queries = [0, 6, 12]
    gnd = [{"easy": [j for j in range(18) if labels[j] == labels[q]][:4], "hard": [j for j in range(18)
            if labels[j] == labels[q]][4:], "junk": [], "bbx": np.array([0.0, 0.0, 10.0, 10.0])} for q in queries]
    path = tmp_path / "gnd_rtest.pkl"
    path.write_bytes(pickle.dumps({"imlist": names, "qimlist": [names[q] for q in queries], "gnd": gnd}))
    truth = read_revisited_ground_truth(path)
    result = revisited_evaluate(load_labelled(store, require_labels=False), truth, device="cpu")
    assert result.mean_average_precision == pytest.approx({"easy": 1.0, "medium": 1.0, "hard": 1.0})
    assert "not cropped" in result.notes[0]
    broken = {"imlist": names[:-1] + ["missing_image"], "qimlist": [names[0]], "gnd": gnd[:1]}
    path.write_bytes(pickle.dumps(broken))
    with pytest.raises(InvalidArgumentError, match="missing_image"):
        revisited_evaluate(load_labelled(store, require_labels=False), read_revisited_ground_truth(path))
