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


def test_copies_made_in_memory_equal_the_written_ones(tiny_catalog, tmp_path):
    """01's adaptation embeds its copies without writing them: the same labels and vectors,
    bit for bit, as the written files give (the JPEG copies encoded alike, PNGs lossless)."""
    options = EmbeddingOptions.of(resize="squash")
    paths = sorted(p.name for p in tiny_catalog.glob("*.*g"))[:4]  # JPEG and PNG sources
    written, on_disk = copies.embed_copies(tiny_catalog, paths, tmp_path / "copies", options, None, seed=3)
    labels, in_memory = copies.embedded_copies(tiny_catalog, paths, options, None, seed=3)
    assert labels["source"].tolist() == written["source"].tolist()
    assert labels["transform"].tolist() == written["transform"].tolist()
    assert {"jpg", "png"} <= {p.rsplit(".", 1)[1] for p in written.index}
    np.testing.assert_array_equal(in_memory, on_disk)
