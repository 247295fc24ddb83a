"""Every relative link in README.md, CHANGELOG.md and docs/*.md leads to a file that exists, and
every #anchor into a Markdown file to one of its headings: a newcomer following the guides never
meets a dead link."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDES = [ROOT / "README.md", ROOT / "CHANGELOG.md"] + sorted((ROOT / "docs").glob("*.md"))
# [text](target) and ![alt](target), but not inside inline code.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
EXTERNAL = ("http://", "https://", "mailto:")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    found: set[str] = set()
    in_code = False
    for line in markdown.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            slug = github_slug(line.lstrip("#"))
            # GitHub numbers repeated headings: slug, slug-1, slug-2 ...
            count = sum(1 for existing in found if existing == slug or re.fullmatch(re.escape(slug) + r"-\d+", existing))
            found.add(f"{slug}-{count}" if count else slug)
    found |= set(re.findall(r'<a id="([^"]+)"', markdown.read_text()))
    return found


def links(markdown: Path) -> list[tuple[int, str]]:
    found = []
    in_code = False
    for number, line in enumerate(markdown.read_text().splitlines(), start=1):
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if not target.startswith(EXTERNAL):
                found.append((number, target))
    return found


def test_the_guides_exist():
    names = {guide.name for guide in GUIDES}
    assert {"README.md", "getting_started.md", "troubleshooting.md", "awx.md", "ci.md"} <= names


@pytest.mark.parametrize("guide", GUIDES, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_lead_somewhere(guide: Path):
    dead = []
    for number, target in links(guide):
        path_part, _separator, anchor = target.partition("#")
        destination = (guide.parent / path_part).resolve() if path_part else guide
        if not destination.exists():
            dead.append(f"{guide.name}:{number}: {target} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            dead.append(f"{guide.name}:{number}: {target} (no heading with this anchor)")
    assert not dead, "\n".join(dead)


def test_the_checker_finds_a_dead_link(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\nSee [the lab](lab.md), [here](#title), [gone](#nowhere) and `[code](x.md)`.\n")
    (tmp_path / "lab.md").write_text("# Lab\n")
    assert links(page) == [(3, "lab.md"), (3, "#title"), (3, "#nowhere")]
    assert "title" in anchors(page) and "nowhere" not in anchors(page)
