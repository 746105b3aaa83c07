"""Reports: key figures, and the HTML opens in a real browser with every image visible."""
import re
import shutil
import subprocess


from helpers import report, runfolder

CHECK_IMAGES = """<script>window.addEventListener('load', () => {
  const all = [...document.images];
  const broken = all.filter(i => !(i.complete && i.naturalWidth > 0));
  document.title = 'IMAGES ' + all.length + ' BROKEN ' + broken.length;
});</script>"""


def browser_image_count(chromium, html_path, tmp_path):
    """(images, broken images) as headless Chromium sees the page."""
    probe = tmp_path / f"probe_{html_path.name}"
    probe.write_text(html_path.read_text(encoding="utf-8").replace("</body>", CHECK_IMAGES + "</body>"),
                     encoding="utf-8")
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000",
         "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    title = out.stdout.split("<title>", 1)[1].split("</title>", 1)[0]
    _, images, _, broken = title.split()
    return int(images), int(broken)


def test_report_and_notebooks_show_all_images_in_chromium(tiny_run, chromium, tmp_path):
    run_dir, _ = tiny_run
    images, broken = browser_image_count(chromium, run_dir / "report.html", tmp_path)
    assert images >= 1 and broken == 0  # the catalog map, inline
    # 01: the first-look figure; 04: two grids (queries=2), one per duplicate group and per
    # cluster, and the two maps
    drawn = len(list((run_dir / runfolder.GRIDS / runfolder.GROUP_GRIDS).glob("*.png"))) + \
        len(list((run_dir / runfolder.GRIDS / runfolder.CLUSTER_GRIDS).glob("*.png")))
    assert drawn >= 2  # at least a cluster grid each for the tiny run's clusters
    for name, expected in (("01_embed", 1), ("04_visual_grids", 2 + drawn + 2)):
        images, broken = browser_image_count(chromium, run_dir / "notebooks" / f"{name}.html", tmp_path)
        assert images == expected and broken == 0, name
    # self-contained: copied alone elsewhere, the grids page still shows every picture
    alone = tmp_path / "mailed"
    alone.mkdir()
    shutil.copy(run_dir / "notebooks" / "04_visual_grids.html", alone)
    assert browser_image_count(chromium, alone / "04_visual_grids.html", tmp_path)[1] == 0


def test_notebook_pages_fetch_nothing_from_the_internet(tiny_run):
    """No require.js, MathJax or mermaid from a CDN: the pages open offline."""
    run_dir, _ = tiny_run
    for page in [run_dir / "report.html", *sorted((run_dir / "notebooks").glob("*.html"))]:
        text = page.read_text(encoding="utf-8")
        fetched = re.findall(r'<(?:script|link|img|iframe)[^>]+(?:src|href)\s*=\s*["\']?(?:https?:)?//', text)
        fetched += re.findall(r"url\(\s*[\"']?(?:https?:)?//", text) + re.findall(r"@import", text)
        assert not fetched, (page.name, fetched[:3])
        assert "cdnjs" not in text and "MathJax.js" not in text, page.name


def test_files_follow_the_umask(tmp_path):
    """Written like any file the user writes (0666 less the umask), not tempfile's 0600."""
    import os

    old = os.umask(0o022)
    try:
        runfolder.write_json(tmp_path / "a.json", {"a": 1})
        report.write_report(tmp_path, {}, [])
        os.umask(0o077)
        runfolder.write_json(tmp_path / "b.json", {"b": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


def test_key_figures_read_whatever_the_run_has(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    figures = report.key_figures(run_dir)
    assert figures["images embedded"] == 8 and figures["files skipped"] == 0
    assert "index recommended by 02" in figures and "neighbours written" in figures
    assert report.key_figures(tmp_path) == {}
    runfolder.write_json(tmp_path / "metrics.json", {"precision@20": 0.85, "per_class": {"a": 1}})
    assert report.key_figures(tmp_path) == {"precision@20": 0.85}


def test_report_lists_failures(tmp_path):
    page = report.write_report(tmp_path, {"run_dir": str(tmp_path)},
                               [{"name": "01_embed", "html": None, "status": "failed in cell 3: boom <b>"}])
    text = page.read_text()
    assert "failed in cell 3: boom &lt;b&gt;" in text and "run_dir" in text
