"""Run the notebooks in order with papermill: ``python -m helpers.run --config configs/sample.yaml``.

Parameters come from a YAML file with ``-p name value`` overrides, using the names of the
notebooks' ``parameters`` cells; a name that no notebook knows is an error. Executed
notebooks go to ``<run_dir>/notebooks/``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = ["01_embed.ipynb", "02_index_sweep.ipynb", "03_neighbors.ipynb"]
PATH_PARAMETERS = {"image_dir", "catalog", "run_dir", "data_dir"}


class ParameterError(ValueError):
    """A parameter that no notebook declares, or a missing required one."""


def notebook_parameters(notebook: Path) -> dict:
    """Names and default values (as source text) of a notebook's ``parameters`` cell."""
    import papermill as pm

    return {name: spec["default"] for name, spec in pm.inspect_notebook(str(notebook)).items()}


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
    values = dict(config)
    for name in PATH_PARAMETERS & set(values):
        if values[name] not in (None, ""):
            values[name] = str((base / str(values[name])).resolve())
    return {nb: {k: v for k, v in values.items() if k in declared[nb]} for nb in notebooks}


def run(config: dict, base: Path | None = None, notebooks: list[str] | None = None) -> Path:
    """Execute the notebooks into ``run_dir/notebooks``; return the run folder."""
    import papermill as pm

    base = base or Path.cwd()
    paths = [NOTEBOOK_DIR / n for n in (notebooks or NOTEBOOKS)]
    per_notebook = resolve_parameters(config, paths, base)
    run_dir = Path(per_notebook[paths[0]].get("run_dir") or (base / config["run_dir"]).resolve())
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    for nb in paths:
        print(f"running {nb.name} -> {out_dir / nb.name}", flush=True)
        pm.execute_notebook(str(nb), str(out_dir / nb.name), parameters=per_notebook[nb],
                            cwd=str(NOTEBOOK_DIR), progress_bar=False)
    return run_dir


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
        run_dir = run(config)
    except ParameterError as exc:
        parser.error(str(exc))
    print(f"done: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
