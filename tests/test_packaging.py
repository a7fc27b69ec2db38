"""The gateway's dependencies: bounded above in pyproject.toml, and deploy/constraints.txt (the
exact versions a Pi install uses) within those bounds (security review)."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement

from .conftest import ROOT


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(text) for text in project["dependencies"]]


def _pins() -> dict[str, str]:
    pins = {}
    for raw in (ROOT / "deploy" / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = raw.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_every_dependency_has_an_upper_bound() -> None:
    for requirement in _requirements():
        assert any(spec.operator in ("<", "<=", "~=", "==") for spec in requirement.specifier), (
            f"{requirement} has no upper bound"
        )


def test_the_constraints_pin_every_dependency_within_its_range() -> None:
    pins = _pins()
    for requirement in _requirements():
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"deploy/constraints.txt does not pin {requirement.name}"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} vs {requirement}"
