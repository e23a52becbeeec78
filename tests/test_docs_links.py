"""The front door and the docs hold together: every relative link in README.md and docs/*.md names a file
that exists and, with a #fragment, a heading of that file (GitHub's anchor rule); every repository path they,
.ci/run and pyproject.toml name exists; the README stays a front door (under 200 lines, the quickstart command in its
first 40)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .support import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
#: a path in the repository as the docs name it, in prose or a command (up to a `::test` id; `*` a glob)
REPO_PATH = re.compile(r"(?<![\w/.-])(?:tests|dpnp_ray|analysis|studies|bench)/[\w/.*-]*[\w*]")


def github_anchor(heading: str) -> str:
    """GitHub's fragment for a Markdown heading: lower case, punctuation but '-' and '_' dropped, spaces -> '-'."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    headings = {github_anchor(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}
    return headings | set(re.findall(r'<a id="([^"]+)"></a>', text))


def test_github_anchor_rule():
    assert github_anchor("A study on a cluster: token authentication, storage") == \
        "a-study-on-a-cluster-token-authentication-storage"
    assert github_anchor("Digits at eps 0.2") == "digits-at-eps-02"
    assert github_anchor("`tune` runner") == "tune-runner"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading #{fragment} in {resolved.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_every_repository_path_named_exists():
    """Modules, scripts, tests and run logs named by the docs exist (a glob matches something); a line that calls
    a file retired may name one that is gone."""
    named = {(page.relative_to(REPO).as_posix(), path) for page in [*PAGES, REPO / ".ci" / "run", REPO / "pyproject.toml"]
             for line in page.read_text().splitlines() if "retired" not in line for path in REPO_PATH.findall(line)}
    assert any(path.startswith("tests/") for _, path in named), "the docs name no test file"
    missing = sorted(f"{page}: {path}" for page, path in named
                     if not (any(REPO.glob(path)) if "*" in path else (REPO / path).exists()))
    assert not missing, f"no such path: {missing}"


def test_the_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines; the details belong in docs/"
    first = "\n".join(lines[:40])
    assert "## Quickstart" in first and "studies/ablation.py --smoke" in first
