"""The README and docs/ as a user reads them: every ``python`` block runs (the blocks of one page in order,
in one namespace per block, from the repository root), the README stays short, every relative link
resolves, and the recipes page lists exactly the built-in recipes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stepcredit.recipe import builtin_recipes

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
BLOCKS = [(page, i, m.group(1)) for page in PAGES for i, m in enumerate(BLOCK.finditer(page.read_text()))]


def test_there_are_pages_and_blocks() -> None:
    assert len(PAGES) > 5 and len(BLOCKS) > 5


def test_readme_is_at_most_300_lines() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


@pytest.mark.parametrize(("page", "index", "code"), BLOCKS,
                         ids=[f"{p.relative_to(ROOT)}[{i}]" for p, i, _ in BLOCKS])
def test_python_block_runs(page: Path, index: int, code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if "../shared/data" in code and not (ROOT.parent / "shared" / "data").is_dir():
        pytest.skip("needs ../shared/data")
    monkeypatch.chdir(ROOT)
    exec(compile(code, f"{page.relative_to(ROOT)}[{index}]", "exec"), {"__name__": "__docs__"})


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to a missing {target}"


def test_recipes_page_lists_the_builtin_recipes() -> None:
    text = (ROOT / "docs" / "methods.md").read_text()
    section = text.split("## Recipes", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([a-z0-9_]+)` \|", section, re.M)
    assert sorted(listed) == sorted(builtin_recipes())
