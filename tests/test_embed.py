"""The pieces of the embed stage and of search, against hand-computed answers: exact top-k,
retrieval figures, label-fraction sampling, near-duplicates, and the all-or-nothing commit
of a folder with files."""

import csv

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from byol_core.search.embed import near_duplicates
from byol_core.retrieval import balanced_subset, retrieval_metrics
from byol_core.search.gallery import VECTORS, Gallery, top_k
from byol_core.io.storage import Folder, commit_files


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("block", [1, 3, 50, 1000])
def test_top_k_is_exact_and_settles_ties_by_row_whatever_the_blocks(block):
    rng = np.random.default_rng(0)
    gallery = _unit(rng.normal(size=(300, 6)))
    gallery[[40, 90, 250]] = gallery[7]  # ties with row 7
    queries = np.concatenate([gallery[[7]], _unit(rng.normal(size=(4, 6)))])
    sims, rows = top_k(queries, [gallery[i:i + block] for i in range(0, 300, block)], 6)
    full = queries @ gallery.T
    expected = np.lexsort((np.broadcast_to(np.arange(300), full.shape), -full), axis=1)[:, :6]
    assert (rows == expected).all()
    assert np.allclose(sims, np.take_along_axis(full, expected, axis=1), atol=1e-6)
    assert rows[0, :4].tolist() == [7, 40, 90, 250]


def test_top_k_leaves_out_the_excluded_row_and_never_returns_more_than_the_gallery():
    gallery = _unit(np.eye(3) + 0.1)
    sims, rows = top_k(gallery, [gallery], 5, exclude=np.array([0, 1, 2]))
    assert rows.shape == (3, 2)
    assert all(i not in row for i, row in enumerate(rows.tolist()))


def test_retrieval_metrics_equal_a_hand_computed_case():
    # Gallery on a circle; labels a a b b. Query 1 (label a) ranks: g0 (a), g2 (b), g1 (a), g3 (b):
    #   recall@1 = 1, R = 2, AP@R = (1/2)(P(1)*1 + P(2)*0) = 0.5.
    # Query 2 (label b) ranks: g1 (a), g2 (b), g3 (b), g0 (a):
    #   recall@1 = 0, recall@5 = 1, AP@R = (1/2)(0 + P(2)*1) = 0.25.
    angle = np.array([0.0, 1.0, 0.5, 2.0])
    gallery = torch.tensor(np.stack([np.cos(angle), np.sin(angle)], 1), dtype=torch.float32)
    queries = torch.tensor([[np.cos(-0.1), np.sin(-0.1)], [np.cos(0.8), np.sin(0.8)]], dtype=torch.float32)
    found = retrieval_metrics(gallery, [0, 0, 1, 1], queries, [0, 1], ks=(1, 5))
    assert found["recall_at_1"] == 0.5 and found["recall_at_5"] == 1.0
    assert found["map_at_r"] == pytest.approx((0.5 + 0.25) / 2)
    assert (found["queries"], found["gallery"]) == (2, 4)


def test_map_at_r_is_one_for_a_perfect_ranking_and_low_for_a_shuffled_one():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(5), 40)
    centres = rng.normal(size=(5, 16)) * 10
    gallery = torch.tensor(centres[labels] + rng.normal(size=(200, 16)), dtype=torch.float32)
    queries = torch.tensor(centres + 0.01, dtype=torch.float32)
    assert retrieval_metrics(gallery, labels, queries, np.arange(5))["map_at_r"] == pytest.approx(1.0)
    shuffled = retrieval_metrics(gallery, rng.permutation(labels), queries, np.arange(5))
    assert shuffled["map_at_r"] < 0.5


def test_label_fractions_are_balanced_seeded_and_reproducible():
    labels = np.repeat(np.arange(10), 600)[np.random.default_rng(2).permutation(6000)]
    one = balanced_subset(labels, 0.01, seed=0)
    assert len(one) == 60 and np.bincount(labels[one], minlength=10).tolist() == [6] * 10
    assert np.array_equal(one, balanced_subset(labels, 0.01, seed=0))
    assert not np.array_equal(one, balanced_subset(labels, 0.01, seed=1))
    ten = balanced_subset(labels, 0.1, seed=0)
    assert np.bincount(labels[ten], minlength=10).tolist() == [60] * 10 and len(np.unique(ten)) == 600
    rare = np.array([0] * 100 + [1] * 2)  # 0.5 * 102 / 2 = 26 per class; a smaller class gives all it has
    assert np.bincount(rare[balanced_subset(rare, 0.5, seed=0)]).tolist() == [26, 2]


def _gallery_file(path, splits: dict[str, np.ndarray], name: str = "{split}/{i}.png"):
    tables = []
    for split, vectors in splits.items():
        n = len(vectors)
        tables.append(pa.table({
            "index": np.arange(n, dtype=np.int64), "split": [split] * n, "label": np.zeros(n, dtype=np.int64),
            "source": [name.format(split=split, i=i) for i in range(n)], "duplicate": np.zeros(n, dtype=bool),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(_unit(vectors).ravel()), vectors.shape[1])}))
    pq.write_table(pa.concat_tables(tables), path, row_group_size=7)
    np.save(path.with_name(VECTORS), _unit(np.concatenate(list(splits.values()))))
    return Gallery(path)


def test_near_duplicates_find_planted_leakage_and_train_pairs(tmp_path):
    rng = np.random.default_rng(3)
    train = rng.normal(size=(40, 32))
    test = rng.normal(size=(15, 32))
    test[4] = train[11] * 2.0  # the same direction: cosine 1
    test[9] = train[30] + 1e-3
    train[25] = train[2]
    gallery = _gallery_file(tmp_path / "e.parquet", {"train": train, "test": test})
    found = near_duplicates(gallery, 0.999, tmp_path / "pairs.csv")
    spread = found.pop("test_nearest_train_similarity")
    assert found == {"threshold": 0.999, "test_with_train_near_duplicate": 2, "train_pairs": 1}
    assert spread["max"] == pytest.approx(1.0, abs=1e-5) and spread["p1"] <= spread["p50"] <= spread["p99"] <= spread["max"]
    rows = list(csv.DictReader(open(tmp_path / "pairs.csv")))
    pairs = {(r["kind"], r["source_a"], r["source_b"]) for r in rows}
    assert pairs == {("test-train", "test/4.png", "train/11.png"), ("test-train", "test/9.png", "train/30.png"),
                     ("train-train", "train/2.png", "train/25.png")}
    assert all(float(r["similarity"]) >= 0.999 for r in rows)


def test_near_duplicates_csv_keeps_file_names_from_running_as_formulas(tmp_path):
    """A file name comes from the user's folder: one that begins like a formula is written
    with a leading quote, so a spreadsheet shows it as text."""
    vectors = np.random.default_rng(5).normal(size=(6, 8))
    test = vectors[:2].copy()
    gallery = _gallery_file(tmp_path / "e.parquet", {"train": vectors, "test": test}, "=HYPERLINK(\"x\")/{split}{i}")
    near_duplicates(gallery, 0.999, tmp_path / "pairs.csv")
    rows = list(csv.DictReader(open(tmp_path / "pairs.csv")))
    assert {(r["source_a"], r["source_b"]) for r in rows} == {
        ("'=HYPERLINK(\"x\")/test0", "'=HYPERLINK(\"x\")/train0"), ("'=HYPERLINK(\"x\")/test1", "'=HYPERLINK(\"x\")/train1")}


def test_gallery_describes_and_finds_rows_across_row_groups(tmp_path):
    vectors = np.random.default_rng(4).normal(size=(20, 4))
    gallery = _gallery_file(tmp_path / "e.parquet", {"train": vectors[:12], "test": vectors[12:]})
    assert gallery.rows == 20 and gallery.dim == 4
    rows = np.array([19, 0, 13, 6])
    assert [d["source"] for d in gallery.describe(rows)] == ["test/7.png", "train/0.png", "test/1.png", "train/6.png"]
    assert np.allclose(gallery.vectors(rows), _unit(vectors[rows]), atol=1e-6)
    assert gallery.find("test", 3) == 15
    assert np.allclose(np.concatenate(list(gallery.blocks())), _unit(vectors), atol=1e-6)


def test_a_folder_and_files_commit_together_or_not_at_all(tmp_path):
    folder, metrics, journal = tmp_path / "embeddings", tmp_path / "m.json", tmp_path / ".commit"
    commit_files([(folder, Folder(lambda d: (d / "a.txt").write_text("old"))),
                  (metrics, lambda tmp: tmp.write_text("old"))], journal)

    def broken(tmp):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        commit_files([(folder, Folder(lambda d: (d / "a.txt").write_text("new"))), (metrics, broken)], journal)
    assert (folder / "a.txt").read_text() == "old" and metrics.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embeddings", "m.json"]  # no staging left behind
    commit_files([(folder, Folder(lambda d: (d / "b.txt").write_text("new"))),
                  (metrics, lambda tmp: tmp.write_text("new"))], journal)
    assert sorted(p.name for p in folder.iterdir()) == ["b.txt"] and metrics.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embeddings", "m.json"]


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    return _unit(centres[rng.integers(0, 50, n)] + 0.5 * rng.normal(size=(n, dim)))


def test_the_approximate_index_reaches_its_recall_and_agrees_with_exact_search(tmp_path):
    from byol_core.search import ann

    vectors = _clustered(6300, 16, seed=5)
    gallery = _gallery_file(tmp_path / "e.parquet", {"train": vectors[:5000], "test": vectors[5000:6000]})
    found = ann.build(gallery, tmp_path / ann.INDEX, seed=0, target=0.99)
    assert found["recall_at_10"] >= 0.99 and 1 <= found["nprobe"] <= found["nlist"]
    index = ann.open_index(tmp_path / ann.INDEX)
    queries = vectors[6000:]  # from the same distribution, but not in the gallery
    _, exact = top_k(queries, gallery.blocks(), 10)
    sims, approx = ann.search(index, found["nprobe"], queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact.tolist(), approx.tolist())])
    assert recall >= 0.97 and (np.diff(sims, axis=1) <= 1e-6).all()
    # A row range and an excluded row are honoured.
    _, within = ann.search(index, found["nprobe"], queries[:20], 5, exclude=np.full(20, 5001), rows=(5000, 6000))
    assert ((within >= 5000) & (within < 6000)).all() and not (within == 5001).any()


def test_near_duplicates_through_the_index_match_the_exact_scan(tmp_path):
    from byol_core.search import ann

    vectors = _clustered(3000, 16, seed=7)
    vectors[2500] = vectors[100]
    vectors[2600] = vectors[200] + 1e-4
    vectors[300] = vectors[301]
    gallery = _gallery_file(tmp_path / "e.parquet", {"train": vectors[:2400], "test": vectors[2400:]})
    found = ann.build(gallery, tmp_path / ann.INDEX, seed=0, target=0.999)
    exact = near_duplicates(gallery, 0.9999, tmp_path / "exact.csv")
    approx = near_duplicates(gallery, 0.9999, tmp_path / "approx.csv", ann.open_index(tmp_path / ann.INDEX),
                             found["nprobe"])
    assert exact == approx and exact["test_with_train_near_duplicate"] >= 2 and exact["train_pairs"] >= 1
    assert (tmp_path / "exact.csv").read_text() == (tmp_path / "approx.csv").read_text()


def test_the_gallery_searches_exactly_or_through_the_index_it_is_given(tmp_path):
    """Gallery.nearest, the one search behind near-duplicates and `byol neighbours`: exact
    over a row range gives gallery rows, and an index is searched when one is given."""
    from byol_core.search import ann

    vectors = _clustered(3000, 16, seed=3)
    gallery = _gallery_file(tmp_path / "e.parquet", {"train": vectors[:2400], "test": vectors[2400:]})
    found = ann.build(gallery, tmp_path / ann.INDEX, seed=0, target=0.99)
    index = ann.open_index(tmp_path / ann.INDEX)
    queries, own = vectors[2400:2420], np.arange(2400, 2420)
    for got, want in [
        (gallery.nearest(queries, 5, own), top_k(queries, gallery.blocks(), 5, own)),
        (gallery.nearest(queries, 5, np.full(20, -1)), top_k(queries, gallery.blocks(), 5)),
        (gallery.nearest(queries, 5, index=index, nprobe=found["nprobe"]),
         ann.search(index, found["nprobe"], queries, 5)),
        (gallery.nearest(queries, 5, own, (0, 2400), index, found["nprobe"]),
         ann.search(index, found["nprobe"], queries, 5, own, (0, 2400))),
    ]:
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    sims, rows = gallery.nearest(vectors[100:120], 3, np.arange(100, 120), rows=(50, 2400))
    local_sims, local_rows = top_k(vectors[100:120], gallery.blocks(first=50, stop=2400), 3, np.arange(50, 70))
    assert np.array_equal(sims, local_sims) and np.array_equal(rows, local_rows + 50)
    assert not (rows == np.arange(100, 120)[:, None]).any() and (rows >= 50).all()
