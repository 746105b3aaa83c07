"""Run the notebooks in order with papermill: ``python -m helpers.run --config configs/sample.yaml``.

Parameters come from a YAML file with ``-p name value`` overrides, using the names of the
notebooks' ``parameters`` cells; a name that no notebook knows is an error. Executed
notebooks go to ``<run_dir>/notebooks/`` with a self-contained HTML copy each, and
``<run_dir>/report.html`` is the front page.

Sweeps: a list given for a single-valued parameter (e.g. ``resize: [crop, pad]``) runs every
combination into its own sub-folder of ``run_dir``; embeddings are computed once per
combination of 01's parameters and reused by runs that differ only downstream.
``sweep_summary.csv`` and ``sweep_summary.html`` compare the runs.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import itertools
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path

import yaml

from . import console, explorer, report, runfolder

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = ["01_embed.ipynb", "02_index_sweep.ipynb", "03_neighbors.ipynb", "04_visual_grids.ipynb",
             "05_evaluate.ipynb"]
EMBED_NOTEBOOK = "01_embed.ipynb"
PATH_PARAMETERS = {"image_dir", "catalog", "run_dir", "data_dir", "labels", "backgrounds"}


class ParameterError(ValueError):
    """A parameter that no notebook declares, or a missing required one."""


class RunError(RuntimeError):
    """A notebook failed; the message names the cell and the partial HTML."""


def notebook_parameters(notebook: Path) -> dict:
    """Names and default values (as source text) of a notebook's ``parameters`` cell."""
    return dict(_inspect(str(notebook), Path(notebook).stat().st_mtime_ns))


@functools.lru_cache(maxsize=32)
def _inspect(path: str, _mtime: int) -> tuple:
    import papermill as pm  # a sweep asks about each notebook many times: read it once

    return tuple((name, spec["default"]) for name, spec in pm.inspect_notebook(path).items())


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


def resolve_parameters(config: dict, notebooks: list[Path], base: Path) -> dict[Path, dict]:
    """Split ``config`` into each notebook's parameters; unknown names raise ParameterError."""
    declared = {nb: notebook_parameters(nb) for nb in notebooks}
    known = set().union(*declared.values()) if declared else set()
    unknown = sorted(set(config) - known)
    if unknown:
        raise ParameterError(
            f"unknown parameter(s) {', '.join(unknown)}; the notebooks take: {', '.join(sorted(known))}"
        )
    if "run_dir" not in config:
        raise ParameterError("run_dir is required (the folder this run writes to)")
    # YAML spells nothing null or ~; the notebooks' (Python) None is accepted too
    values = {name: None if value == "None" else value for name, value in config.items()}
    for name in PATH_PARAMETERS & set(values):
        if values[name] not in (None, ""):
            values[name] = str((base / str(values[name])).expanduser().resolve())
    return {nb: {k: v for k, v in values.items() if k in declared[nb]} for nb in notebooks}


def run(config: dict, base: Path | None = None, notebooks: list[str] | None = None,
        embeddings_from: Path | None = None) -> Path:
    """Execute the notebooks into ``run_dir/notebooks`` and write the report; return run_dir.

    ``embeddings_from``: a finished run folder with the same 01 parameters; its store and
    executed 01 are copied instead of embedding again.
    """
    base = base or Path.cwd()
    paths = [NOTEBOOK_DIR / n for n in (notebooks or NOTEBOOKS)]
    per_notebook = resolve_parameters(config, paths, base)
    run_dir = Path(str((base / str(config["run_dir"])).expanduser().resolve()))
    out_dir = run_dir / runfolder.NOTEBOOKS
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # run_dir is a file, or a folder we may not write
        raise ParameterError(f"run_dir={str(run_dir)!r}: cannot make the run folder there "
                             f"({exc.strerror or exc})") from None
    done: list[dict] = []
    log = run_dir / runfolder.LOG
    with _one_run(run_dir):
        log.unlink(missing_ok=True)  # this run's chatter only
        with console.chatter_to(log) as terminal:
            for nb in paths:
                done.append(_run_notebook(nb, out_dir, per_notebook[nb], embeddings_from, terminal))
                if not done[-1]["ok"]:
                    report.write_report(run_dir, config, done)
                    raise RunError(f"{done[-1]['status']}\n  partial notebook: {done[-1]['html']}\n  log: {log}")
            if runfolder.record(run_dir, "embed"):
                explorer.write_explorer(run_dir)
        report.write_report(run_dir, config, done)
    return run_dir


@contextlib.contextmanager
def _one_run(run_dir: Path):
    """Hold the run folder's lock for the whole run; the notebooks' kernels share it."""
    previous = os.environ.get(runfolder.RUN_TOKEN)
    os.environ[runfolder.RUN_TOKEN] = uuid.uuid4().hex  # kernels inherit the environment
    try:
        with runfolder.lock(run_dir, "helpers.run"):
            yield
    except runfolder.RunFolderBusy as exc:
        raise RunError(str(exc)) from None
    finally:
        if previous is None:
            os.environ.pop(runfolder.RUN_TOKEN, None)
        else:
            os.environ[runfolder.RUN_TOKEN] = previous


def _run_notebook(nb: Path, out_dir: Path, parameters: dict, embeddings_from: Path | None,
                  terminal) -> dict:
    """Execute one notebook (or copy 01's store from ``embeddings_from``); print its line."""
    import papermill as pm

    executed = out_dir / nb.name
    started = time.perf_counter()
    if embeddings_from is not None and nb.name == EMBED_NOTEBOOK:
        run_dir = out_dir.parent
        for name in (runfolder.WHITENING, runfolder.ADAPTATION_PAIRS) + runfolder.STORE_FILES:  # the record last
            if (embeddings_from / name).exists():
                shutil.copy2(embeddings_from / name, run_dir / name)
        for suffix in (".ipynb", ".html"):
            shutil.copy2(embeddings_from / runfolder.NOTEBOOKS / nb.with_suffix(suffix).name,
                         out_dir / nb.with_suffix(suffix).name)
        status = f"ok (embeddings reused from {embeddings_from.name})"
        print(console.step_line(nb.stem, time.perf_counter() - started, status), flush=True)
        return {"name": nb.stem, "html": executed.with_suffix(".html"), "status": status, "ok": True}
    bar = {"file": terminal, "desc": nb.stem, "leave": False, "disable": not terminal.isatty()}
    try:
        pm.execute_notebook(str(nb), str(executed), parameters=parameters, cwd=str(NOTEBOOK_DIR),
                            progress_bar=bar, kernel_manager_class=_quiet_kernel_manager())
        status = "ok"
    except pm.PapermillExecutionError as exc:
        status = f"{nb.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
    html = report.notebook_to_html(executed)
    shown = "ok" if status == "ok" else "failed"
    print(console.step_line(nb.stem, time.perf_counter() - started, shown), flush=True)
    return {"name": nb.stem, "html": html, "status": status, "ok": status == "ok"}


def _quiet_kernel_manager():
    """jupyter_client's kernel manager, without the interrupt it sends a finished notebook's
    idle kernel before shutting it down: the kernel logs that interrupt as
    "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel" after a successful run."""
    from jupyter_client import AsyncKernelManager

    class QuietShutdown(AsyncKernelManager):
        async def _async_interrupt_kernel(self) -> None:
            if not getattr(self, "shutting_down", False):
                await super()._async_interrupt_kernel()

    return QuietShutdown


def expand_sweep(config: dict, notebooks: list[Path] | None = None) -> list[dict]:
    """Every combination of the list-valued settings of single-valued parameters.

    A parameter whose default is a list (e.g. ``n_trees_grid``) is swept only when given a
    list of lists.
    """
    declared = {}
    for nb in notebooks or [NOTEBOOK_DIR / n for n in NOTEBOOKS]:
        declared.update(notebook_parameters(nb))
    axes = {}
    for name, value in config.items():
        list_typed = isinstance(_literal(declared.get(name, "None")), list)
        if isinstance(value, list) and (not list_typed or (value and all(isinstance(v, list) for v in value))):
            axes[name] = value
    if not axes:
        return [dict(config)]
    combos = []
    for values in itertools.product(*axes.values()):
        combo = dict(config)
        combo.update(zip(axes, values))
        combo["_swept"] = dict(zip(axes, values))
        combos.append(combo)
    return combos


def _slug(swept: dict) -> str:
    text = ",".join(f"{k}={Path(str(v)).name if k in PATH_PARAMETERS else v}" for k, v in swept.items())
    return re.sub(r"[^A-Za-z0-9=,._-]+", "_", text)[:120]


def run_folder_names(combos: list[dict]) -> list[str]:
    """A readable, distinct folder name per combination: names that would collide
    (/shop1/images and /shop2/images both read "image_dir=images") get a hash of the values."""
    slugs = [_slug(c["_swept"]) for c in combos]
    repeated = {s for s in slugs if slugs.count(s) > 1}
    return [f"{s}-{runfolder.key_of(repr(sorted(c['_swept'].items())))[:8]}" if s in repeated else s
            for s, c in zip(slugs, combos)]


def run_sweep(config: dict, base: Path | None = None, notebooks: list[str] | None = None) -> Path:
    """Run every combination into ``run_dir/<name>/``; return the page to open.

    Without list-valued settings this is a single run and the page is its report.html;
    otherwise it is ``run_dir/sweep_summary.html``.
    """
    import pandas as pd

    base = base or Path.cwd()
    names = notebooks or NOTEBOOKS
    paths = [NOTEBOOK_DIR / n for n in names]
    combos = expand_sweep(config, paths)
    if len(combos) == 1 and "_swept" not in combos[0]:
        return run(config, base, names) / runfolder.REPORT
    root = (base / str(config["run_dir"])).expanduser().resolve()
    embed_names = set(notebook_parameters(NOTEBOOK_DIR / EMBED_NOTEBOOK)) - {"run_dir", "n_examples"}
    for combo in combos:  # check every combination before spending time on any
        resolve_parameters({k: v for k, v in combo.items() if k != "_swept"}, paths, base)
    embedded: dict[str, Path] = {}
    rows = []
    for combo, name in zip(combos, run_folder_names(combos)):
        swept = combo.pop("_swept")
        run_dir = root / name
        combo["run_dir"] = str(run_dir)
        key = repr(sorted((k, repr(v)) for k, v in combo.items() if k in embed_names))
        reuse = embedded.get(key) if EMBED_NOTEBOOK in names else None
        print(f"== {run_dir.name}", flush=True)
        try:
            run(combo, base, names, embeddings_from=reuse)
            status = "ok"
        except RunError as exc:
            status = str(exc).splitlines()[0]
        if status == "ok":
            embedded.setdefault(key, run_dir)
        rows.append({"run": run_dir.name, **swept, "status": status, **report.key_figures(run_dir)})
    summary = pd.DataFrame(rows)
    runfolder.write_table(root / runfolder.SWEEP_SUMMARY, summary)
    finished = [root / r for r, status in zip(summary["run"], summary["status"])
                if status == "ok" and runfolder.record(root / r, "embed")]
    if finished:  # one product's neighbours under each configuration, side by side
        explorer.write_sweep_explorer(root, finished)
    page = write_sweep_page(root, summary)
    failed = summary[summary["status"] != "ok"]
    if len(failed):  # make, CI and schedulers must see it
        listed = "\n".join(f"  {r}: {status}" for r, status in zip(failed["run"], failed["status"]))
        raise RunError(f"{len(failed)} of {len(summary)} sweep runs failed:\n{listed}\n  summary: {page}")
    return page


def write_sweep_page(root: Path, summary) -> Path:
    """``sweep_summary.html``: the comparison table and a bar chart per numeric figure."""
    import base64
    import html
    import io
    from urllib.parse import quote

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    summary = summary.assign(**{"#": range(1, len(summary) + 1)})
    numeric = [c for c in summary.columns if c not in ("run", "status", "#")
               and pd.api.types.is_numeric_dtype(summary[c]) and summary[c].nunique() > 1]
    picture = ""
    if numeric:
        fig, axes = plt.subplots(1, len(numeric), figsize=(3.6 * len(numeric), 1.5 + 0.35 * len(summary)),
                                 squeeze=False)
        for ax, column in zip(axes[0], numeric):
            ax.barh([f"#{i}" for i in summary["#"]], summary[column], color="tab:blue")
            ax.invert_yaxis()
            ax.set_title(column, fontsize=9), ax.tick_params(labelsize=7)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        picture = f'<img alt="comparison" src="data:image/png;base64,{data}">'
    # every value is text (run names, swept paths, error messages): escaped, then the links added
    links = summary.astype(object).map(lambda v: "" if pd.isna(v) else html.escape(str(v)))
    links.columns = [html.escape(str(c)) for c in links.columns]
    links["run"] = [f'<a href="{html.escape(quote(r))}/{runfolder.REPORT}">{html.escape(r)}</a>'
                    for r in summary["run"]]
    links = links[["#"] + [c for c in links.columns if c != "#"]]
    compare = (f'<p><a href="{runfolder.EXPLORER}"><b>Compare the runs in the explorer</b></a>: one '
               "product's neighbours under each configuration, side by side.</p>"
               if (root / runfolder.EXPLORER).exists() else "")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>sweep: {html.escape(root.name)}</title>"
            f"<style>{report.STYLE}</style></head><body><h1>Sweep: {html.escape(root.name)}</h1>{compare}"
            f"{links.to_html(index=False, escape=False)}{picture}</body></html>")
    target = root / runfolder.SWEEP_PAGE
    with runfolder.atomic_path(target) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target


def parse_value(text: str):
    """A command-line value read as YAML: 20 -> int, true -> bool, [1, 5] -> list."""
    return yaml.safe_load(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-f", type=Path, help="YAML file of parameters")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"), help="override one parameter")
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.config.read_text()) if args.config else {}
    config = dict(config or {})
    for name, value in args.parameter:
        config[name] = parse_value(value)
    try:
        page = run_sweep(config)
    except ParameterError as exc:
        parser.error(str(exc))
    except RunError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"report: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
