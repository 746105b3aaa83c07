import numpy as np
import pandas as pd
import pytest

from helpers import runfolder, store
from helpers.vectors import l2_normalise


@pytest.mark.parametrize("batches", [[], [3], [1, 4, 2]])
def test_writer_produces_a_normal_npy(tmp_path, batches):
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(n, 5)).astype(np.float32) for n in batches]
    with store.EmbeddingWriter(tmp_path, 5) as writer:
        for c in chunks:
            writer.append(c)
    loaded = np.load(tmp_path / runfolder.EMBEDDINGS)
    expected = np.concatenate(chunks) if chunks else np.empty((0, 5), np.float32)
    np.testing.assert_array_equal(loaded, expected)
    assert [p.name for p in tmp_path.iterdir()] == [runfolder.EMBEDDINGS]


def test_writer_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with store.EmbeddingWriter(tmp_path, 3) as writer:
            writer.append(np.ones((2, 3), np.float32))
            raise RuntimeError("crash mid-run")
    assert list(tmp_path.iterdir()) == []


def test_writer_checks_shape(tmp_path):
    with store.EmbeddingWriter(tmp_path, 3) as writer:
        with pytest.raises(ValueError, match=r"\(n, 3\)"):
            writer.append(np.ones((2, 4), np.float32))


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "table.csv"
    runfolder.write_table(target, pd.DataFrame({"a": [1]}))
    with pytest.raises(ZeroDivisionError):
        with runfolder.atomic_path(target) as tmp:
            tmp.write_text("half")
            1 / 0
    assert pd.read_csv(target)["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_l2_normalise_handles_zero_rows():
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_load_store_detects_incomplete_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="run 01_embed first"):
        store.load_store(tmp_path)
    with store.EmbeddingWriter(tmp_path, 2) as w:
        w.append(np.ones((3, 2), np.float32))
    runfolder.write_table(tmp_path / runfolder.ITEMS, pd.DataFrame({"row": [0, 1]}))
    runfolder.write_json(tmp_path / runfolder.EMBED_META, {"dim": 2})
    with pytest.raises(ValueError, match="3 embeddings but 2 items"):
        store.load_store(tmp_path)
