"""The documentation stands on its own: no file of the project names the first design brief, and
every link between the Markdown pages, and every page a docstring or comment cites, resolves.

A link resolves when its file exists inside the repository and, where it has an ``#anchor``, when
that anchor is a heading of the file under GitHub's rules (:func:`github_slug`).
"""

from __future__ import annotations

import io
import re
import subprocess
import tokenize
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]

# spelled in parts, so that this file does not name them itself
FORBIDDEN_NAMES = ("DESIGN" + ".md", "/work/" + "shared")

FENCE = re.compile(r"^\s*(```|~~~)")
ATX_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
INLINE_CODE = re.compile(r"(`+)(?:.+?)\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
SCHEME = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")
DOCS_MENTION = re.compile(r"(?<![\w/.-])(docs/[\w./-]*?\.md)(?:#([\w-]+))?")


def project_files() -> list[Path]:
    """The files git tracks, plus the untracked ones it does not ignore (those that exist)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout: {error}")
    names = sorted({name for name in listed.decode().split("\0") if name})
    return [ROOT / name for name in names if (ROOT / name).is_file()]


def checked_markdown_pages() -> list[Path]:
    """The Markdown pages whose links must resolve."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: the text of its inline markup (link targets and
    backticks dropped), lower case, every character other than a letter, digit, ``-``, ``_`` or
    space removed, spaces turned into ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](target) -> text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()  # inline HTML tags
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def prose_lines(page: Path) -> list[tuple[int, str]]:
    """``(line number, line)`` of a Markdown page outside its fenced code blocks."""
    out, fence = [], None
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        opening = FENCE.match(line)
        if opening and (fence is None or opening.group(1) == fence):
            fence = opening.group(1) if fence is None else None
            continue
        if fence is None:
            out.append((number, line))
    return out


@cache
def anchors(page: Path) -> frozenset[str]:
    """Every anchor of a Markdown page: its headings' slugs (a repeated slug gets ``-1``, ``-2``,
    ... as on GitHub) and explicit ``<a name=...>`` / ``<a id=...>`` anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(page):
        found.update(HTML_ANCHOR.findall(line))
        heading = ATX_HEADING.match(line)
        if heading is None:
            continue
        slug = github_slug(heading.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return frozenset(found)


def link_targets(page: Path) -> list[tuple[int, str]]:
    """``(line number, target)`` of every inline and reference link of a page (code left out)."""
    out = []
    for number, line in prose_lines(page):
        definition = REFERENCE_LINK.match(line)
        if definition:
            out.append((number, definition.group(1)))
            continue
        out += [(number, target) for target in INLINE_LINK.findall(INLINE_CODE.sub("", line))]
    return out


def broken(base: Path, path: str, anchor: str) -> str | None:
    """Why the link ``path#anchor`` (relative to the folder ``base``; an empty path is ``base``
    itself, a file) does not resolve, or None."""
    target = (base if not path else base / unquote(path)).resolve()
    if not target.is_relative_to(ROOT):
        return "points outside the repository"
    if not target.exists():
        return "no such file"
    if anchor and target.suffix != ".md":
        return "an anchor on a file that is not Markdown"
    if anchor and unquote(anchor) not in anchors(target):
        return f"no heading of {target.relative_to(ROOT).as_posix()} has the anchor #{anchor}"
    return None


def broken_links(page: Path) -> list[str]:
    """The relative links of a Markdown page that do not resolve, as ``page:line: target (why)``."""
    out = []
    for number, target in link_targets(page):
        if not target or SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        reason = broken(page if not path else page.parent, path, anchor)
        if reason:
            out.append(f"{page.relative_to(ROOT).as_posix()}:{number}: {target} ({reason})")
    return out


def comment_and_string_texts(source: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of every comment and string literal (docstrings included) of a file."""
    kinds = {tokenize.COMMENT, tokenize.STRING}
    if hasattr(tokenize, "FSTRING_MIDDLE"):
        kinds.add(tokenize.FSTRING_MIDDLE)
    tokens = tokenize.generate_tokens(io.StringIO(source.read_text(encoding="utf-8")).readline)
    return [(token.start[0], token.string) for token in tokens if token.type in kinds]


def test_no_file_names_the_first_design_brief() -> None:
    named = [
        f"{path.relative_to(ROOT).as_posix()} ({name})"
        for path in project_files()
        for name in FORBIDDEN_NAMES
        if name.encode() in path.read_bytes()
    ]
    assert named == [], "the project cites the papers and docs/, never its first brief"


def test_slugs_follow_github() -> None:
    assert github_slug("Box from a map") == "box-from-a-map"
    assert github_slug("Re-ID ranking") == "re-id-ranking"
    assert github_slug("The contracts (`cama/protocols.py`)") == "the-contracts-camaprotocolspy"
    assert github_slug("Average Drop and Increase in Confidence") == "average-drop-and-increase-in-confidence"
    assert github_slug("See [the runs](runs.md) and `max_box_acc`") == "see-the-runs-and-max_box_acc"


@pytest.mark.parametrize("page", checked_markdown_pages(), ids=lambda page: page.relative_to(ROOT).as_posix())
def test_markdown_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_docs_cited_by_python_files_resolve() -> None:
    sources = [path for path in project_files() if path.suffix == ".py"]
    assert sources, "no Python file found"
    wrong = []
    for source in sources:
        for number, text in comment_and_string_texts(source):
            for path, anchor in DOCS_MENTION.findall(text):
                reason = broken(ROOT, path, anchor)
                if reason:
                    name = source.relative_to(ROOT).as_posix()
                    wrong.append(f"{name}:{number}: {path}{'#' + anchor if anchor else ''} ({reason})")
    assert wrong == []
