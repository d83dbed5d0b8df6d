"""The README is a front door under 15 kB, and every relative link between the pages resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target); a target ends at whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _without_code(text: str) -> str:
    """The page without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    in_fence = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and (m := re.match(r"^#{1,6} (.*)$", line)):
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-"))
    return out


def _links(page: Path) -> list[str]:
    return [t for t in LINK.findall(_without_code(page.read_text())) if "://" not in t]


def test_the_docs_pages_exist() -> None:
    assert len(PAGES) > 1, "README.md links its details out to docs/*.md"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in _links(page):
        if target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with id {anchor!r}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_check_can_fail(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[a](missing.md) [b](#title) [c](#nope) `[d](x.md)`\n")
    assert _links(page) == ["missing.md", "#title", "#nope"]
    assert "title" in _anchors(page) and "nope" not in _anchors(page)


def test_readme_is_a_front_door() -> None:
    assert (ROOT / "README.md").stat().st_size < 15_000


def test_readme_holds_the_ci_test_command_verbatim() -> None:
    """.ci/run runs the README's second command as it is written there."""
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    assert f"```bash\n{command}\n```" in (ROOT / "README.md").read_text()


# --- the built-in profiles, listed once: from the profile folder ---------------------------------
PROFILE_BLOCK = re.compile(r"<!-- profiles -->(.*?)<!-- /profiles -->", re.S)


def _profiles() -> list[str]:
    from search._resources import builtin_names

    return builtin_names("profile")


def test_profile_lists_are_the_profile_folder() -> None:
    """Wherever the docs list the built-in profiles, the list is the folder's, in full: the
    marked lists in the pages, the quickstart's comment, docs/hardware.md's table, CLI help."""
    want = _profiles()
    assert {"mcu", "mcu_m4", "phone", "cloud_gpu", "host"} <= set(want)
    blocks = {
        page.relative_to(ROOT).as_posix(): PROFILE_BLOCK.findall(page.read_text())
        for page in PAGES
    }
    assert blocks["README.md"] and blocks["docs/experiments.md"], "lists to check are marked"
    for page, found in blocks.items():
        for block in found:
            assert re.findall(r"`([^`]+)`", block) == want, f"{page}: {block}"
    comment = (ROOT / "experiments" / "quickstart.yaml").read_text()
    listed = re.search(r"Built-in profiles: ([\w,#\s]+?) \(", comment)
    assert listed, "the quickstart names the built-in profiles"
    assert re.findall(r"\w+", listed[1].replace("#", "")) == want
    table = (ROOT / "docs" / "hardware.md").read_text().split("| profile | device |")[1]
    rows = re.findall(r"^\| `(\w+)` \|", table.split("\n\n")[0], flags=re.M)
    assert sorted(rows) == want
    from search.cli import _parser

    run_help = _parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert all(name in " ".join(run_help.split()) for name in want)
