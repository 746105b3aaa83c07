"""environment.yml (conda) and pyproject.toml (pip) install the same packages."""
import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project.get("optional-dependencies", {}).values() for r in group]
    return {normalise(r) for r in project["dependencies"] + extras}


def conda_requirements() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return {normalise(r) for r in pip if not r.startswith("-e")}


def normalise(requirement: str) -> str:
    name, rest = re.match(r"([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?)(.*)", requirement.strip()).groups()
    return re.sub(r"[-_.]+", "-", name).lower() + rest.replace(" ", "")


def test_same_packages_and_versions():
    assert pyproject_requirements() == conda_requirements()


def test_environment_installs_the_project():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"])


def imported_top_modules() -> set[str]:
    """Third-party modules that src/helpers imports (anywhere, also inside functions)."""
    modules = set()
    for path in (ROOT / "src" / "helpers").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m != "helpers"}


def installed_closure(requirements: list[str]) -> set[str]:
    """Distribution names installed by these requirements, following their own requirements."""
    seen, todo = set(), [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            subs = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:  # an extra this environment did not install
            subs = []
        for extra in requirement.extras or {""}:
            for sub in subs:
                sub = Requirement(sub)
                if sub.marker is None or sub.marker.evaluate({"extra": extra}):
                    todo.append(sub)
    return seen


def test_every_import_of_the_package_is_installed_by_its_dependencies():
    """A plain `pip install .` (no test extra) must provide what the helpers import at run
    time; ray is the scale extra's, imported only for engine="ray"."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    provided = installed_closure(project["dependencies"])
    allowed = {"ray": installed_closure(project["optional-dependencies"]["scale"])}
    distributions = metadata.packages_distributions()
    missing = {module: distributions.get(module) for module in imported_top_modules()
               if not {canonicalize_name(d) for d in distributions.get(module, [module])} & allowed.get(module, provided)}
    assert not missing, f"imported by src/helpers but not installed by pyproject's dependencies: {missing}"
