"""environment.yml (conda) and pyproject.toml (pip) install the same packages."""
import re
import tomllib
from pathlib import Path

import yaml

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
