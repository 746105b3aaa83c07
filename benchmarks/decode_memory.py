"""Peak memory of decoding huge pictures in several threads, with and without the shared
pixel budget (``images.DECODE_BUDGET``, ``LOOKALIKE_DECODE_MPX``).

    .venv/bin/python benchmarks/decode_memory.py [--threads 1 2 4]

An 88-Mpx PNG (under the ~89-Mpx cap) is decoded once per thread, all threads at once, in a
fresh process per row; the row is that process's peak RSS. Prints one JSON object per row.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from embed_throughput import CACHE, machine

CHILD = """
import resource, sys, time
from concurrent.futures import ThreadPoolExecutor
from helpers import images
data = open(sys.argv[1], "rb").read()
threads = int(sys.argv[2])
start = time.perf_counter()
with ThreadPoolExecutor(threads) as pool:
    list(pool.map(lambda _: images.decode_image(data, 224), range(threads)))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - start)
"""


def huge_png() -> Path:
    path = CACHE / "huge_88mpx.png"
    if not path.exists():
        from PIL import Image

        path.parent.mkdir(parents=True, exist_ok=True)
        h, w = 8_800, 10_000
        ramp = np.linspace(0, 255, w, dtype=np.float32)
        rows = (np.arange(h, dtype=np.float32)[:, None] * 0.02) % 255
        grey = ((ramp[None, :] + rows) % 256).astype(np.uint8)
        Image.fromarray(np.dstack([grey, grey[::-1], grey[:, ::-1]])).save(path, compress_level=1)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    path = huge_png()
    print(json.dumps({"machine": machine(), "picture": "88 Mpx PNG", "bytes": path.stat().st_size}))
    for budget in ("0", os.environ.get("LOOKALIKE_DECODE_MPX", "100")):
        for threads in args.threads:
            env = {**os.environ, "LOOKALIKE_DECODE_MPX": budget}
            out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(threads)], env=env,
                                 capture_output=True, text=True, check=True).stdout.split()
            print(json.dumps({"budget_mpx": float(budget) or None, "threads": threads,
                              "peak_rss_mb": round(float(out[0])), "seconds": round(float(out[1]), 1)}),
                  flush=True)


if __name__ == "__main__":
    main()
