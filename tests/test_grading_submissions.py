"""bnlab.grading.submissions: a notebook is read whole and leniently, only its code counts (stored outputs are
dropped before the size limit), and whatever is wrong with a file becomes its error, with the real size."""

import json
from pathlib import Path

import nbformat
import pytest

from bnlab.exercises import SETS
from bnlab.grading import submissions
from bnlab.grading.submissions import code_cells, detect_exercise_set, expand, read_submission
from bnlab.grading.throughput import exercise_notebook, solved

KNOWN = set(SETS)


def write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        nbformat.write(content, path)
    return path


@pytest.mark.parametrize("content, reason", [
    ('{"cells": [', "malformed JSON"), (b"\xff\xfe\x00", "UTF-8"), ("", "malformed JSON"),
    ("[1, 2]", "no list of cells"), ('{"cells": 5}', "no list of cells"), ("[" * 100_000, "malformed JSON"),
])
def test_unreadable_files_become_the_submissions_error(tmp_path, content, reason):
    submission = read_submission(write(tmp_path / "alice_ex03.ipynb", content), KNOWN)
    assert submission.exercise_set == "ch03" and submission.cells == () and reason in submission.error


def test_a_missing_file_says_so(tmp_path):
    assert "cannot read the file" in read_submission(tmp_path / "bob_ex01.ipynb", KNOWN).error


def test_stored_outputs_are_dropped_before_the_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(submissions, "MAX_CODE_BYTES", 100_000)
    notebook = solved("ch01")
    notebook.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="x" * 2_000_000)]
    submission = read_submission(write(tmp_path / "carol_ex01.ipynb", notebook), KNOWN)
    assert submission.error is None and len(submission.cells) > 5
    assert all("x" * 100 not in source for _, source in submission.cells)


def test_code_over_the_limit_is_refused_with_its_real_size(tmp_path, monkeypatch):
    monkeypatch.setattr(submissions, "MAX_CODE_BYTES", 1024**2)
    notebook = solved("ch01")
    notebook.cells.append(nbformat.v4.new_code_cell("# " + "y" * int(2.5 * 1024**2)))
    error = read_submission(write(tmp_path / "dave_ex01.ipynb", notebook), KNOWN).error
    assert "its code cells hold 2.5 MB, more than the grader runs (1.0 MB; stored outputs do not count)" in error


def test_a_file_over_what_the_grader_reads_is_refused_with_its_real_size(tmp_path, monkeypatch):
    monkeypatch.setattr(submissions, "MAX_FILE_BYTES", 1024**2)
    path = write(tmp_path / "erin_ex01.ipynb", "{" + " " * (3 * 1024**2) + "}")
    assert "the file is 3.0 MB, more than the grader reads (1.0 MB" in read_submission(path, KNOWN).error


def test_cells_nbformat_would_reject_are_skipped_and_numbering_counts_every_cell(tmp_path):
    data = json.loads(nbformat.writes(solved("ch02")))
    data["cells"] += [5, {"cell_type": "code", "source": 7}, {"cell_type": "code"}, {"cell_type": "raw", "source": 1},
                      {"cell_type": "code", "source": ["x = ", "1"]}]
    cells = code_cells(data)
    assert cells[-1] == (len(data["cells"]), "x = 1") and all(isinstance(s, str) for _, s in cells)


def test_nbformat_3_notebooks_are_read():
    notebook = {"worksheets": [{"cells": [{"cell_type": "code", "input": "answer_q2 = 1"}]}]}
    assert code_cells(notebook) == [(1, "answer_q2 = 1")]


def test_the_exercise_set_comes_from_metadata_the_import_line_or_the_file_name():
    notebook = exercise_notebook("ch03")
    assert detect_exercise_set(notebook, Path("anything.ipynb"), KNOWN) == "ch03"
    del notebook.metadata["bnlab"]
    assert detect_exercise_set(notebook, Path("anything.ipynb"), KNOWN) == "ch03"  # its import line
    assert detect_exercise_set({"cells": []}, Path("alice_ex05_eval_mode.ipynb"), KNOWN) == "ch05"
    assert detect_exercise_set({"cells": []}, Path("alice_ex09.ipynb"), KNOWN) is None
    assert detect_exercise_set({"cells": []}, Path("alice.ipynb"), KNOWN) is None


def test_an_unknown_set_is_an_error_that_names_the_fix(tmp_path):
    path = write(tmp_path / "anonymous.ipynb", nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]))
    assert "--exercises" in read_submission(path, KNOWN).error
    assert read_submission(path, KNOWN, exercises="ch02").exercise_set == "ch02"


def test_folders_expand_to_their_notebooks_in_order(tmp_path):
    for name in ("b.ipynb", "a.ipynb", "notes.txt"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in expand([tmp_path, tmp_path / "c.ipynb"])] == ["a.ipynb", "b.ipynb", "c.ipynb"]
