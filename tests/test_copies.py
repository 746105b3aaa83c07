"""The catalog's edited copies: made once per kind of edit, embedded exactly like the catalog."""
import numpy as np

from helpers import copies, edits, store
from helpers.embed import embed_folder
from helpers.options import EmbeddingOptions


def test_copies_get_the_vectors_01_gives_the_same_files(tiny_catalog, tmp_path):
    """embed_copies (01's local engine, a thread per core) and embed_folder on the copies'
    folder give the same vectors, bit for bit, whatever the workers and batches."""
    options = EmbeddingOptions()
    paths = sorted(p.name for p in tiny_catalog.glob("*.jpg"))[:3]
    labels, vectors = copies.embed_copies(tiny_catalog, paths, tmp_path / "copies", options, None, seed=0)
    assert sorted(labels["transform"].unique()) == sorted(edits.TRANSFORMS)
    assert len(labels) == len(vectors) == len(paths) * len(edits.TRANSFORMS)
    embed_folder(tmp_path / "copies", tmp_path / "run", options, progress=False, workers=1, batch_size=5)
    items = store.load_items(tmp_path / "run")
    row = dict(zip(items["path"], range(len(items))))
    again = store.load_embeddings(tmp_path / "run")[[row[p] for p in labels.index]]
    np.testing.assert_array_equal(vectors, again)
