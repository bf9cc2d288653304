import json

import pytest

from bnlab.book_stats import chapter_stats, format_table, main, prose_words


def notebook(tmp_path, cells, name="01_demo.ipynb"):
    path = tmp_path / name
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def code(source, tags=()):
    return {"cell_type": "code", "source": source, "metadata": {"tags": list(tags)}, "outputs": []}


def markdown(source):
    return {"cell_type": "markdown", "source": source, "metadata": {}}


def test_prose_words_leave_out_code_blocks_and_math_and_count_a_role_as_one_word():
    text = "Two words $x^2 + y$ here {glue:text}`acc:.2f` %.\n\n```python\nnot counted at all\n```\n$$\na = b\n$$\nend"
    assert prose_words(text) == len(["Two", "words", "x", "here", "x", "end"])


def test_hidden_cells_and_colab_forms_are_not_visible_code(tmp_path):
    path = notebook(tmp_path, [
        markdown("A question in five words."),
        code("x = 1\n\ny = 2\n"),                                   # 2 visible lines
        code("glue('a', 1)\nassert x == 1", tags=["remove-input"]),  # hidden by tag
        code("#@title Checks behind the text\nassert y == 2\nglue('b', y)"),  # collapsed in Colab
        code("glue('c', 3)\nassert x + y == 3"),                      # bookkeeping in the learner's way
    ])
    stats = chapter_stats(path)
    assert (stats.words, stats.visible_code_lines, stats.hidden_code_lines) == (5, 4, 5)
    assert (stats.visible_glue_calls, stats.visible_asserts) == (1, 1)
    assert stats.minutes == pytest.approx(5 / 200 + 4 / 20)


def test_the_table_has_a_row_per_chapter(tmp_path):
    stats = [chapter_stats(notebook(tmp_path, [markdown("one two")], name=f"0{i}_x.ipynb")) for i in (1, 2)]
    table = format_table(stats)
    assert table.splitlines()[0].startswith("| chapter") and "01_x" in table and "02_x" in table


def test_command_line_prints_the_table_and_refuses_a_broken_notebook(tmp_path, capsys):
    good = notebook(tmp_path, [markdown("hello world")])
    assert main([str(good)]) == 0
    assert "01_demo" in capsys.readouterr().out
    broken = tmp_path / "02_broken.ipynb"
    broken.write_text("{not json")
    assert main([str(broken)]) == 2
    assert "02_broken.ipynb is not a readable notebook" in capsys.readouterr().err
