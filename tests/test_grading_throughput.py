"""bnlab.grading.throughput: the mix of submissions cycles through every chapter and every kind, built from the
real exercise notebooks (the timing itself is measured by running it, never in a test)."""

import nbformat

from bnlab.exercises import SETS
from bnlab.grading.throughput import KINDS, answer_cell, main, mixed_submission, write_mix


def test_the_mix_cycles_through_every_set_and_every_kind():
    seen = [mixed_submission(i)[:2] for i in range(len(SETS) * len(KINDS))]
    assert {s for s, _ in seen} == set(SETS) and {k for _, k in seen} == set(KINDS)
    assert len(set(seen)) == len(seen)


def test_each_kind_holds_the_answers_it_says():
    for index in range(len(SETS) * len(KINDS)):
        set_key, kind, notebook = mixed_submission(index)
        sources = [notebook.cells[answer_cell(notebook, e)].source for e in SETS[set_key]]
        solved = [s == e.solution_code for s, e in zip(sources, SETS[set_key])]
        expected = {"solved": [True] * len(solved), "raises": [True] * len(solved),
                    "untouched": [False] * len(solved), "half": [i % 2 == 0 for i in range(len(solved))]}[kind]
        assert solved == expected, (set_key, kind)
        assert any("raise RuntimeError" in c.source for c in notebook.cells) == (kind == "raises")


def test_the_mix_is_written_as_notebooks_named_for_their_kind(tmp_path):
    n = len(SETS) + 2  # every set solved, then the second kind begins
    paths = write_mix(tmp_path, n)
    assert len(paths) == n and all(p.exists() for p in paths)
    assert paths[0].name == "learner000_solved_ex01.ipynb" and f"_{KINDS[1]}_ex01" in paths[len(SETS)].name
    nbformat.validate(nbformat.read(paths[3], as_version=4))


def test_an_empty_mix_reports_without_grading(capsys):
    assert main(["--submissions", "0"]) == 0
    assert "0 notebooks in" in capsys.readouterr().out
