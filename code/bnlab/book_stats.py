"""How long each chapter is for a learner: ``python -m bnlab.book_stats [NOTEBOOK ...]``.

For every chapter notebook (default: ``chapters/[0-9]*.ipynb`` under the current folder) it counts what a learner
reads in the built book:

* **words** of prose: the Markdown cells, without code blocks, math and MyST markup; a glued number counts as
  one word;
* **visible code lines**: non-blank lines of the code cells the book shows. A cell tagged ``remove-cell``,
  ``remove-input``, ``hide-input`` or ``hide-cell`` is hidden (``hide-*`` behind a click), and so is a cell whose
  first line is a Colab ``#@title`` form (collapsed in Colab);
* **glue calls and asserts in visible code**: bookkeeping a learner should not have to read (both should be 0,
  except asserts where checking is itself the lesson);
* **reading time** at 200 words and 20 visible code lines a minute.

The counts read the notebook files only; nothing is executed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

HIDDEN_TAGS = frozenset({"remove-cell", "remove-input", "hide-input", "hide-cell"})
WORDS_PER_MINUTE = 200
CODE_LINES_PER_MINUTE = 20

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_DISPLAY_MATH = re.compile(r"\$\$.*?\$\$", re.DOTALL)
_INLINE_MATH = re.compile(r"\$[^$\n]+\$")
_ROLE = re.compile(r"\{[\w:-]+\}`([^`]*)`")  # {glue:text}`name:.2f`, {cite}`key`, {doc}`text <target>`
_WORD = re.compile(r"[A-Za-z0-9][\w'’.,%-]*")


@dataclass(frozen=True)
class ChapterStats:
    """What a learner reads in one chapter."""

    path: str
    words: int
    visible_code_lines: int
    hidden_code_lines: int
    visible_glue_calls: int
    visible_asserts: int

    @property
    def minutes(self) -> float:
        """Estimated reading time: prose at 200 words and visible code at 20 lines a minute."""
        return self.words / WORDS_PER_MINUTE + self.visible_code_lines / CODE_LINES_PER_MINUTE


def cell_source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def is_hidden(cell: dict) -> bool:
    """Whether the book hides this code cell's source (tags) or Colab collapses it (a ``#@title`` form)."""
    tags = set(cell.get("metadata", {}).get("tags", []))
    return bool(tags & HIDDEN_TAGS) or cell_source(cell).lstrip().startswith("#@title")


def prose_words(markdown: str) -> int:
    """Words a reader reads in one Markdown cell: no code blocks, math or markup; a role counts as one word."""
    text = _FENCE.sub(" ", markdown)
    text = _DISPLAY_MATH.sub(" ", text)
    text = _INLINE_MATH.sub(" x ", text)
    text = _ROLE.sub(" x ", text)
    text = re.sub(r"^:::?\{?[\w-]*\}?.*$|^:[\w-]+:.*$", " ", text, flags=re.MULTILINE)  # directive lines
    return len(_WORD.findall(text))


def code_lines(source: str) -> list[str]:
    return [line for line in source.splitlines() if line.strip()]


def chapter_stats(path: str | Path) -> ChapterStats:
    """Count the prose and the code a learner reads in the notebook at ``path``."""
    path = Path(path)
    try:
        notebook = json.loads(path.read_text())
        cells = notebook["cells"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a readable notebook ({err}).") from err
    words = visible = hidden = glue_calls = asserts = 0
    for cell in cells:
        source = cell_source(cell)
        if cell.get("cell_type") == "markdown":
            words += prose_words(source)
        elif cell.get("cell_type") == "code":
            lines = code_lines(source)
            if is_hidden(cell):
                hidden += len(lines)
                continue
            visible += len(lines)
            glue_calls += sum(bool(re.search(r"\bglue\(", line)) for line in lines)
            asserts += sum(line.lstrip().startswith("assert ") for line in lines)
    return ChapterStats(str(path), words, visible, hidden, glue_calls, asserts)


def format_table(stats: list[ChapterStats]) -> str:
    header = ("chapter", "words", "visible code lines", "hidden code lines", "glue in view", "asserts in view", "minutes")
    rows = [
        (Path(s.path).stem, str(s.words), str(s.visible_code_lines), str(s.hidden_code_lines),
         str(s.visible_glue_calls), str(s.visible_asserts), f"{s.minutes:.0f}")
        for s in stats
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in [header, *rows]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m bnlab.book_stats", description=__doc__.split("\n\n")[0])
    cli.add_argument("notebooks", nargs="*", help="chapter notebooks (default: chapters/[0-9]*.ipynb)")
    args = cli.parse_args(argv)
    paths = [Path(p) for p in args.notebooks] or sorted(Path("chapters").glob("[0-9]*.ipynb"))
    if not paths:
        print("error: no chapter notebooks found; run from the repository root or name them.", file=sys.stderr)
        return 2
    try:
        stats = [chapter_stats(path) for path in paths]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
