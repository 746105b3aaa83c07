"""explorer.html for a 10,000-product catalog: its size, and how soon Chromium can use it.

    .venv/bin/python benchmarks/explorer_budget.py [--n-images 10000]

The catalog is embed_throughput.py's JPEGs, each its own product, run through 01 and 03 once
(kept in benchmarks/cache/explorer_run). The page is then written, and opened in Debian's
headless Chromium five times; "ready" is the page's own ``explorer-ready`` mark (data parsed,
search index built, first view drawn), "search" the time one prefix search takes there.
Budget: at most 40 MB, ready within 2 s.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time

from embed_throughput import CACHE, machine, make_images
from helpers import explorer, neighbors, runfolder
from helpers.embed import embed_folder


def build_run(n_images: int):
    run_dir = CACHE / f"explorer_run_{n_images}"
    if not runfolder.record(run_dir, "neighbors"):
        folder = run_dir.with_name(run_dir.name + "_images")
        folder.mkdir(parents=True, exist_ok=True)
        for f in sorted(make_images(n_images, CACHE / "embed_images").glob("*.jpg"))[:n_images]:
            if not (folder / f.name).exists():
                (folder / f.name).symlink_to(f)
        embed_folder(folder, run_dir, links="all", progress=False)
        neighbors.write_neighbors(run_dir, k=20)
    return run_dir


def open_times(page, repeats: int = 5) -> list[dict]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,1100"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    rows = []
    try:
        for _ in range(repeats):
            driver.get("about:blank")
            driver.get(page.as_uri())
            ready = driver.execute_script("return performance.getEntriesByName('explorer-ready')[0].startTime")
            search = driver.execute_script(
                "const t = performance.now(); window.explorer.search('im'); return performance.now() - t")
            rows.append({"ready_ms": round(ready), "search_ms": round(search, 2)})
    finally:
        driver.quit()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=10_000)
    args = parser.parse_args()
    run_dir = build_run(args.n_images)
    start = time.perf_counter()
    page = explorer.write_explorer(run_dir)
    seconds = time.perf_counter() - start
    times = open_times(page)
    print(json.dumps({"machine": machine(), "products": args.n_images, "page_mb": round(page.stat().st_size / 1e6, 1),
                      "write_seconds": round(seconds, 1), "opens": times,
                      "median_ready_ms": statistics.median(t["ready_ms"] for t in times)}, indent=2))


if __name__ == "__main__":
    main()
