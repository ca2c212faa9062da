"""The documentation a reader follows: the README is a short front page, every relative link in it and in the
pages it leads to resolves, and each command's --help names the page that explains it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from nerepro.cli import app

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)  # fenced code blocks: their brackets are not links
CODE_SPAN = re.compile(r"`[^`\n]*`")
INLINE = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)  # [label]: target


def relative_links(page: Path) -> list[str]:
    """The relative link targets of a Markdown page, anchors stripped; web, mail and same-page links left out."""
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    targets = INLINE.findall(text) + REFERENCE.findall(text)
    found = []
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
            continue
        path = target.split("#", 1)[0]
        if path:
            found.append(path)
    return found


def linked_pages() -> dict[Path, list[str]]:
    """The README and every Markdown page reachable from it through relative links: page -> broken targets."""
    broken, todo, seen = {}, [README], set()
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        broken[page] = []
        for target in relative_links(page):
            resolved = (page.parent / target).resolve()
            if not resolved.exists():
                broken[page].append(target)
            elif resolved.is_file() and resolved.suffix == ".md":
                todo.append(resolved)
    return broken


def test_every_relative_link_of_the_readme_and_its_pages_resolves():
    pages = linked_pages()
    assert len(pages) > 5  # the README leads to the pages beside what they document
    for page in ("configs/README.md", "results/README.md", "scripts/README.md", "results/noise/README.md",
                 "results/performance.md"):
        assert (REPO / page).resolve() in pages, f"README.md does not lead to {page}"
    broken = {str(p.relative_to(REPO)): targets for p, targets in pages.items() if targets}
    assert not broken, f"links that resolve to nothing: {broken}"


def test_the_link_checker_finds_a_broken_link_and_skips_code_and_web_links(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# there\n")
    page.write_text("[ok](there.md#part) [web](https://example.org/x) [gone](missing.md) `[code](nope.md)`\n"
                    "![figure](gone.png)\n```\n[fenced](nope2.md)\n```\n[ref]: other/missing.md\n")
    assert sorted(relative_links(page)) == ["gone.png", "missing.md", "other/missing.md", "there.md"]


def test_the_readme_is_a_front_page_with_the_quick_start_on_top():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 250
    top = "\n".join(lines[:40])
    assert "make test" in top and "make quick" in top
    assert any(line.startswith("## What reproduces") for line in lines)


def commands(group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf command of the CLI as its argument path, e.g. ('data', 'download'). (A group is told by its
    `commands`: recent Typer vendors click, so click's own classes may not be the ones in use.)"""
    if hasattr(group, "commands"):
        return [p for name, cmd in sorted(group.commands.items()) for p in commands(cmd, path + (name,))]
    return [path]


COMMANDS = commands(typer.main.get_command(app))


def test_the_cli_has_the_commands_the_readme_names():
    assert {("train",), ("sweep",), ("report",), ("noise",), ("bench",), ("data", "download")} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_each_command_help_ends_with_the_page_that_explains_it(path):
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    assert "Details:" in result.output, f"`nerepro {' '.join(path)} --help` names no page"
    epilog = result.output.rsplit("Details:", 1)[1]
    pages = re.findall(r"[\w./-]+\.md", epilog)
    assert pages, epilog
    for page in pages:
        assert (REPO / page).is_file(), f"`nerepro {' '.join(path)} --help` names {page}, which does not exist"


def test_the_readmes_f1_numbers_are_what_the_records_give():
    """The README's table of Table 2's F1 rows and the NE claim is the report's, computed from results/f1 now
    (scripts/readme_numbers.py rewrites it)."""
    from nerepro.headline import BEGIN, END, readme_block
    from nerepro.report import load_results

    text = README.read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    written = text[text.index(BEGIN):text.index(END) + len(END)]
    assert written == readme_block(load_results(REPO / "results" / "f1"))
