"""Every code block of README.md and docs/*.md that reads the committed study data (docs/data/) runs
against it: Python blocks as they are, the analysis commands with their outputs sent to a temporary
directory. A schema change that leaves docs/data/ behind fails here."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .support import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
OUTPUT_FLAGS = {"--out", "--figures"}


def blocks(language: str) -> list[tuple[str, str]]:
    """(page, code) of every fenced block in that language that names docs/data/."""
    found = []
    for page in PAGES:
        for lang, code in FENCE.findall(page.read_text()):
            if lang == language and "docs/data/" in code:
                found.append((page.relative_to(REPO).as_posix(), code))
    return found


def analysis_commands(tmp: Path) -> list[list[str]]:
    """The `python analysis/report.py` / `python -m analysis.markdown` lines over docs/data/, outputs into tmp,
    each distinct command once; --png is left out (it needs a browser, tested with the report)."""
    commands: dict[tuple[str, ...], None] = {}
    for _, code in blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if len(words) < 3 or words[0] != "python" or not any(w.startswith("docs/data/") for w in words):
                continue
            if words[1:3] != ["-m", "analysis.markdown"] and words[1] != "analysis/report.py":
                continue
            rewritten, out = [], iter(range(100))
            skip = False
            for word in words[1:]:
                if skip:
                    rewritten.append(str(tmp / f"out{next(out)}{Path(word).suffix}"))
                    skip = False
                elif word in OUTPUT_FLAGS:
                    rewritten.append(word)
                    skip = True
                elif word != "--png":
                    rewritten.append(word)
            commands[tuple(rewritten)] = None
    return [list(c) for c in commands]


def test_the_docs_read_the_committed_data_somewhere():
    assert blocks("python"), "README's Optuna join over docs/data/search_digits"
    assert len(analysis_commands(Path("/tmp"))) >= 3  # every page of record names its commands


@pytest.mark.parametrize("page,code", blocks("python"), ids=lambda v: v if v.endswith(".md") else "")
def test_python_blocks_over_docs_data_run(page, code):
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{page}: the block failed\n{code}\n{proc.stderr[-3000:]}"


def test_analysis_commands_over_docs_data_run(tmp_path):
    sys.path.insert(0, str(REPO))
    from analysis import markdown, report

    for command in analysis_commands(tmp_path):
        main = markdown.main if command[:2] == ["-m", "analysis.markdown"] else report.main
        argv = command[2:] if main is markdown.main else command[1:]
        assert main(argv) == 0, command
    written = list(tmp_path.iterdir())
    assert written and all(p.stat().st_size > 0 for p in written)
