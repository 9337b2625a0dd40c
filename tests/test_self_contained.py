"""The repository is self-contained: no file points to a document outside it.

Code, recipes, tests and docs cite the official repository file or paper table they follow (or a file under
docs/); a path that leaves the checkout (``../shared/...``) or a section of a markdown file that the checkout
does not hold is a reference nobody who clones the repository can follow.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Built from parts so that this file does not match its own patterns.
_OUTSIDE_PATHS = ("..", "/shared"), ("shared", "/spec")
_OUTSIDE = re.compile("|".join(re.escape(a + b) for a, b in _OUTSIDE_PATHS))
# A markdown document called a specification: ``spec `NAME.md```, ``spec: NAME.md``.
_SPEC_DOC = re.compile(r"\bspec\b[:\s]+`?[\w./-]+\.md", re.IGNORECASE)
# A numbered section of a markdown file: ``NAME.md §3.2`` or ``NAME.md`` §3.2 (docs/ has no numbered sections).
_MD_SECTION = re.compile(r"\.md`?\s*" + "\u00a7")


def _repo_files() -> list[Path]:
    """Tracked files plus new files git does not ignore (so a reference added before ``git add`` is caught)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    return [ROOT / p for p in out.split("\0") if p and (ROOT / p).is_file()]


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None  # binary (PNG, ...)


def outside_references(files: list[Path]) -> list[str]:
    """``path:line: text`` for every reference to a document outside the repository."""
    found = []
    for path in files:
        text = _text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if _OUTSIDE.search(line) or _MD_SECTION.search(line) or _SPEC_DOC.search(line):
                where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
                found.append(f"{where}:{number}: {line.strip()[:160]}")
    return found


def test_no_reference_leaves_the_repository():
    found = outside_references([p for p in _repo_files() if p != Path(__file__).resolve()])
    assert not found, ("references to documents outside the repository (cite the official file / paper table, "
                       "or vendor what is needed under docs/):\n" + "\n".join(found))


@pytest.mark.parametrize("line", [
    "see ../shared/spec/dense.md", "(dense.md \u00a71.2)", "the spec `analyses.md`", "(`sepvit.md` \u00a73.2)",
    "paper tables in shared/spec/paper_tables.json",
])
def test_the_check_catches_outside_references(tmp_path, line):
    """Each kind of reference the repository once held is found."""
    probe = tmp_path / "probe.txt"
    probe.write_text(f"ok line\n{line}\n")
    assert outside_references([probe]) == [f"probe.txt:2: {line}"]


def test_the_check_accepts_in_repository_and_official_citations(tmp_path):
    probe = tmp_path / "probe.txt"
    probe.write_text("docs/detection.md, README.md, liwei109/SepViT segmentation/configs/README.md, "
                     "docs/sepvit.md, SHViT paper Table 5 (\u00a73.1), ysj9909/SHViT downstream/README.md, results.md, "
                     "a format spec such as .2f\n")
    assert outside_references([probe]) == []
