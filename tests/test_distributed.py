"""embed_folder(engine="ray"): the local engine's vectors, skipped files and checkpoints,
on a Ray started on this machine (two workers)."""
import numpy as np
import pandas as pd
import pytest

from helpers import runfolder, store
from helpers.embed import embed_folder

pytest.importorskip("ray", reason="engine='ray' needs the scale extra: pip install -e '.[scale]'")


@pytest.fixture(scope="module")
def ray_run(hostile_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ray_run")
    meta = embed_folder(hostile_dir, run_dir, engine="ray", workers=2, batch_size=4, progress=False)
    return run_dir, meta


def test_ray_gives_the_local_engines_store(ray_run, hostile_run_dir):
    run_dir, meta = ray_run
    local_vectors, local_items, local_meta = store.load_store(hostile_run_dir)
    vectors, items, _ = store.load_store(run_dir)
    pd.testing.assert_frame_equal(items, local_items)  # same files, order, hashes, sizes
    # the same files skipped, for the same reasons (hostile files are read by the workers)
    pd.testing.assert_frame_equal(store.load_skipped(run_dir), store.load_skipped(hostile_run_dir))
    np.testing.assert_allclose(vectors, local_vectors, atol=1e-5)
    assert meta["engine"] == "ray" and local_meta["engine"] == "local"
    assert meta["runtime"] == local_meta["runtime"] == "tflite"
    assert meta["n_items"] == local_meta["n_items"] and meta["n_skipped"] == local_meta["n_skipped"]


def test_interrupted_ray_run_resumes_from_its_checkpoints(hostile_dir, ray_run, tmp_path, monkeypatch):
    from helpers import distributed

    real = distributed.ray_batches

    def interrupted(*args, **kwargs):
        for i, result in enumerate(real(*args, **kwargs)):
            if i == 4:
                raise KeyboardInterrupt  # the user stops the notebook, or the driver dies
            yield result

    monkeypatch.setattr(distributed, "ray_batches", interrupted)
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        embed_folder(hostile_dir, run_dir, engine="ray", workers=2, batch_size=2, checkpoint_every=2, progress=False)
    chunks = list((run_dir / runfolder.PARTIAL).glob("chunk_*.parquet"))
    assert chunks and not (run_dir / runfolder.EMBED_META).exists()
    monkeypatch.setattr(distributed, "ray_batches", real)
    resumed = embed_folder(hostile_dir, run_dir, engine="ray", workers=2, batch_size=2, progress=False)
    assert resumed["n_reused"] >= 2 * len(chunks)  # checkpointed vectors were not computed again
    vectors, items, _ = store.load_store(run_dir)
    expected_vectors, expected_items, _ = store.load_store(ray_run[0])
    pd.testing.assert_frame_equal(items, expected_items)
    np.testing.assert_allclose(vectors, expected_vectors, atol=1e-5)


def test_engine_names():
    with pytest.raises(ValueError, match="runtime="):  # the old meaning of engine
        embed_folder(".", "/nonexistent", engine="tflite")
    with pytest.raises(ValueError, match="local"):
        embed_folder(".", "/nonexistent", engine="spark")


def test_ray_address_joins_a_running_cluster(hostile_dir, hostile_run_dir, tmp_path):
    """With RAY_ADDRESS set, the same call runs on that cluster (here: a head node started
    with `ray start`, in its own processes) and gives the local engine's store."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a throwaway cluster without a token
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             f"--port={port}", "--num-cpus=2", "--include-dashboard=false"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in head.stdout:  # wait until the head is up
            if "Ray runtime started" in line:
                break
        code = ("import json, sys, ray; from helpers.embed import embed_folder; "
                "meta = embed_folder(sys.argv[1], sys.argv[2], engine='ray', batch_size=4, progress=False); "
                "print('RESULT', json.dumps({'engine': meta['engine'], "
                "'gcs': ray.get_runtime_context().gcs_address}))")
        done = subprocess.run([sys.executable, "-c", code, str(hostile_dir), str(tmp_path / "run")],
                              env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}, capture_output=True,
                              text=True, timeout=600)
    finally:
        head.terminate()
        head.wait(timeout=120)
    lines = [line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stderr[-3000:]
    result = json.loads(lines[0])
    assert result["engine"] == "ray" and result["gcs"].endswith(f":{port}")  # the cluster, not a new Ray
    vectors, items, _ = store.load_store(tmp_path / "run")
    local_vectors, local_items, _ = store.load_store(hostile_run_dir)
    pd.testing.assert_frame_equal(items, local_items)
    np.testing.assert_allclose(vectors, local_vectors, atol=1e-5)
