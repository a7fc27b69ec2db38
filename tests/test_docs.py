"""The README and the changelog, which GitHub shows outside the documentation site: their links
resolve. The site's own pages are checked by `mkdocs build --strict` in scripts/test (links,
anchors, the nav, the snippets); these two files are read from the repository's root, where
mkdocs does not look."""

from __future__ import annotations

import re

import pytest

from .conftest import ROOT

LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("name", ["README.md", "CHANGELOG.md"])
def test_every_relative_link_resolves(name: str) -> None:
    text = (ROOT / name).read_text(encoding="utf-8")
    targets = [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]
    missing = [t for t in targets if not (ROOT / t.split("#", 1)[0]).exists()]
    assert not missing, f"{name} links to what the repository does not hold: {missing}"


def test_the_readme_stays_short() -> None:
    """One page for every reader: what edgeveil is, the two commands, the demo, a link per
    reader. The guides live in docs/."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move the detail into docs/"
