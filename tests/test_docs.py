"""The README is a front page, the docs hold the rest, every link in them leads somewhere, and the tables code can
print are what it prints now."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "experiments" / "README.md",
         ROOT / "experiments" / "LEDGER.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", path.read_text(), re.M)}


def test_the_readme_is_a_front_page_that_leads_to_every_doc():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{doc.name})" in readme, f"README does not link docs/{doc.name}"
    for needed in ("make demo", "make test", "## Documentation", "## The repository", "## Headline results"):
        assert needed in readme


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_local_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_the_generated_tables_are_what_the_code_prints_now():
    from peerlab.doc_tables import main

    assert main(["--check"]) == 0, "run: python -m peerlab.doc_tables"


def test_a_stale_table_is_caught():
    from peerlab.doc_tables import refresh

    text = "before\n<!-- generated: cards -->\n| stale |\n<!-- end generated -->\nafter\n"
    new, changed = refresh(text)
    assert changed == ["cards"] and "| stale |" not in new and new.startswith("before\n") and new.endswith("after\n")
