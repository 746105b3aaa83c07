"""Shareable HTML: each executed notebook as one self-contained file, and a run's front page.

Notebook figures are stored in the notebooks as base64 PNG/JPEG, so the exported HTML
carries its images inline: one file can be mailed.
"""
from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path

from . import runfolder

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} .sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:1em 0} td,th{border-bottom:1px solid #ddd;padding:.35em .8em;text-align:left}
th{background:#f5f5f5} .fail{color:#b00020;font-weight:600} .ok{color:#1b7f3b}
img{max-width:100%;border:1px solid #eee}
"""


# JupyterLab's template without what it loads from CDNs (require.js, MathJax, mermaid, widgets):
# the page must open offline, from a mail or a shared drive
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def notebook_to_html(notebook: str | Path, target: str | Path | None = None) -> Path:
    """Export an executed notebook to a self-contained HTML file next to it (or at target)."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    notebook = Path(notebook)
    target = Path(target) if target else notebook.with_suffix(".html")
    exporter = HTMLExporter(template_name="lab", template_file="offline.html.j2",
                            extra_loaders=[DictLoader({"offline.html.j2": OFFLINE_TEMPLATE})])
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    with runfolder.atomic_path(target) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return target


def key_figures(run_dir: str | Path) -> dict:
    """The numbers a reader wants first, from whatever files the run has written."""
    run_dir = Path(run_dir)
    figures = {}
    embed = runfolder.record(run_dir, "embed")
    if embed:
        figures.update({
            "images embedded": embed.get("n_items"), "products": embed.get("n_products"),
            "files skipped": embed.get("n_skipped"),
            "model": f"{embed.get('model_handle')} ({embed.get('dim')}-d, resize={embed.get('resize')}, "
                     f"runtime={embed.get('runtime')}, engine={embed.get('engine')})",
            "embedding throughput (images/s)": embed.get("images_per_second"),
        })
        if embed.get("previous_store"):
            figures["images embedded in this run"] = (
                f"{embed.get('n_embedded_now')} ({embed.get('n_reused')} reused, {embed.get('n_removed')} removed; "
                f"previous store {embed.get('previous_store')})")
    choice = runfolder.record(run_dir, "index")
    if choice:
        from .index import PARAMETERS

        setting = "exact search" if choice["backend"] == "exact" else " ".join(
            [choice["backend"]] + [f"{name}={choice[name]}" for name in PARAMETERS.get(choice["backend"], ())
                                   if choice.get(name) is not None])
        figures["index recommended by 02"] = f"{setting} (recall@k {choice.get('recall')})"
    neighbors = runfolder.record(run_dir, "neighbors")
    if neighbors:
        figures["neighbours written"] = (f"{neighbors.get('pairs')} pairs for {neighbors.get('masters')} "
                                         f"{neighbors.get('level')}s (backend {neighbors.get('backend')})")
        figures["near-duplicate pairs"] = neighbors.get("near_duplicate_pairs")
        if neighbors.get("refreshed"):
            figures["neighbour lists refreshed"] = (
                f"{neighbors.get('items_searched')} images searched again; "
                f"{neighbors.get('masters_with_changed_neighbors')} {neighbors.get('level')}s changed neighbours")
    for name, value in runfolder.record(run_dir, "evaluate").items():
        if isinstance(value, (int, float, str)):
            figures[name] = value
    return figures


def _table(rows: dict) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in rows.items())
    return f"<table>{cells}</table>"


def _pictures(run_dir: Path, n_grids: int = 3) -> str:
    """The front page leads with pictures: a few of 04's grids, then the catalog map, inline."""
    import base64

    def inline(path: Path, kind: str, alt: str) -> str:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:image/{kind};base64,{data}">'

    grids = sorted((run_dir / runfolder.GRIDS).glob("*.png"))[:n_grids]
    parts = [inline(g, "png", "neighbour grid") for g in grids]
    if grids:
        parts.insert(0, "<h2>Neighbours, as 04 drew them</h2>")
    if (run_dir / runfolder.CATALOG_MAP).exists():
        parts += ["<h2>Catalog map</h2>", inline(run_dir / runfolder.CATALOG_MAP, "jpeg", "catalog map")]
    return "".join(parts)


def write_report(run_dir: str | Path, parameters: dict, notebooks: list[dict]) -> Path:
    """``run_dir/report.html``: parameters, key figures and links to each notebook's HTML.

    ``notebooks``: dicts with name, html (path or None) and status ("ok" or an error text).
    """
    run_dir = Path(run_dir)
    links = []
    for nb in notebooks:
        status = (f'<span class="ok">{html.escape(nb["status"])}</span>' if nb.get("ok", nb["status"] == "ok")
                  else f'<span class="fail">{html.escape(nb["status"])}</span>')
        link = (f'<a href="{html.escape(Path(nb["html"]).relative_to(run_dir).as_posix())}">'
                f'{html.escape(nb["name"])}</a>' if nb.get("html") else html.escape(nb["name"]))
        links.append(f"<tr><td>{link}</td><td>{status}</td></tr>")
    explorer = (f'<p><a href="{runfolder.EXPLORER}"><b>Open the explorer</b></a>: search products, follow '
                'their neighbours, pan the map, review near-duplicates (one file, works offline).</p>'
                if (run_dir / runfolder.EXPLORER).exists() else "")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>lookalike run: {html.escape(run_dir.name)}</title>
<style>{STYLE}</style></head><body>
<h1>lookalike run: {html.escape(run_dir.name)}</h1>
<p class="sub">{html.escape(str(run_dir))} · {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}</p>
{explorer}{_pictures(run_dir)}
<h2>Key figures</h2>{_table(key_figures(run_dir))}
<h2>Notebooks</h2><table><tr><th>notebook</th><th>status</th></tr>{''.join(links)}</table>
<h2>Parameters</h2>{_table(parameters)}
</body></html>"""
    target = run_dir / runfolder.REPORT
    with runfolder.atomic_path(target) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target
