"""bnlab.exercises (the package): the registry finds every chapter's set, a new chapter adds one by adding a module,
and the exercise notebooks match the checks."""

import json
import re
import sys
from pathlib import Path

import pytest

import bnlab.exercises as exercises
from bnlab.exercises import POINTS, SETS, ChoiceExercise, ExerciseSet, FunctionExercise, ValueExercise, exercise

REPO = Path(__file__).resolve().parents[1]
ALL = [e for s in SETS.values() for e in s]
NOTEBOOKS = {json.loads(p.read_text())["metadata"]["bnlab"]["exercises"]: p
             for p in sorted((REPO / "chapters" / "exercises").glob("ex*.ipynb"))}


def test_the_registry_finds_every_chapters_set_in_order():
    assert list(SETS) == ["ch01", "ch02", "ch03", "ch04", "ch05", "ch06", "ch07"]
    assert all(getattr(exercises, key) is SETS[key] for key in SETS)
    assert [SETS[k].title for k in SETS][:2] == ["BatchNorm in an MLP", "Placement"]


def test_points_come_from_each_exercise():
    assert set(POINTS) == {e.key for e in ALL}
    assert all(POINTS[e.key] == e.points > 0 for e in ALL)
    assert SETS["ch04"].max_points == sum(POINTS[k] for k in POINTS if k.startswith("ch04."))


def test_every_chapter_has_at_least_three_exercises_of_mixed_kinds():
    for exercise_set in SETS.values():
        kinds = {e.kind for e in exercise_set}
        assert len(exercise_set) >= 3 and "implement" in kinds and kinds & {"predict", "diagnose"}


def test_exercise_looks_up_keys_and_rejects_unknown_ones():
    assert exercise("ch04.q1") is SETS["ch04"].q1
    for key in ("ch09.q1", "ch01.q9", "ch01.title", "ch01"):
        with pytest.raises(ValueError, match="key must name an exercise"):
            exercise(key)


CHAPTER = '''
from bnlab.exercises.core import ChoiceExercise, ExerciseSet

EXERCISES = ExerciseSet("ch09", "A new chapter", [
    ChoiceExercise("ch09.q1", "a question", "answer_q1", points=2, options={"A": "yes", "B": "no"}, correct="A",
                   why={"A": "because", "B": "because not"}, hint="think"),
])
'''


@pytest.fixture
def extra_package_path(tmp_path, monkeypatch):
    monkeypatch.setattr(exercises, "__path__", [*exercises.__path__, str(tmp_path)])
    yield tmp_path
    for name in [n for n in sys.modules if n.startswith("bnlab.exercises.new_")]:
        del sys.modules[name]


def test_a_new_chapter_adds_its_set_by_adding_one_module(extra_package_path):
    (extra_package_path / "new_chapter.py").write_text(CHAPTER)
    found = exercises.discover()
    assert list(found)[-1] == "ch09" and found["ch09"].q1.points == 2
    assert list(found)[:-1] == list(SETS)


def test_a_chapter_module_without_a_set_or_with_a_taken_key_is_refused(extra_package_path):
    (extra_package_path / "new_empty.py").write_text("x = 1\n")
    with pytest.raises(TypeError, match="must define EXERCISES"):
        exercises.discover()
    (extra_package_path / "new_empty.py").unlink()
    (extra_package_path / "new_taken.py").write_text(CHAPTER.replace("ch09", "ch01"))
    with pytest.raises(ValueError, match="two chapter modules define the exercise set 'ch01'"):
        exercises.discover()


# --- the notebooks match the checks ---------------------------------------------------------------------------


def cell_text(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def section(notebook, number):
    """The Markdown of "## Exercise <number>", whitespace and backticks normalised."""
    for cell in notebook["cells"]:
        text = cell_text(cell)
        if cell["cell_type"] == "markdown" and text.startswith(f"## Exercise {number}:"):
            return " ".join(text.replace("`", "").split())
    raise AssertionError(f"no section for exercise {number}")


def test_every_set_has_an_exercise_notebook():
    assert set(NOTEBOOKS) == set(SETS)


@pytest.mark.parametrize("set_key", list(SETS))
def test_exercise_notebook_matches_its_checks(set_key):
    notebook = json.loads(NOTEBOOKS[set_key].read_text())
    first, title = notebook["cells"][:2]
    assert first["cell_type"] == "code" and first["metadata"].get("tags") == ["remove-cell"]
    assert title["cell_type"] == "markdown" and cell_text(title).startswith("# Exercises: ")
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    code = "\n".join(cell_text(c) for c in notebook["cells"] if c["cell_type"] == "code")
    names = ", ".join(e.name for e in SETS[set_key])
    assert f"from bnlab.exercises import {set_key}\n\n{names} = {set_key}" in code
    assert all(not c.get("outputs") for c in notebook["cells"] if c["cell_type"] == "code")
    for ex in SETS[set_key]:
        text = section(notebook, int(ex.name[1:]))
        pattern = rf"^def {ex.answer}\(" if isinstance(ex, FunctionExercise) else rf"^{ex.answer} = None"
        assert re.search(pattern, code, re.M) and f"{ex.name}.check({ex.answer})" in code, ex.key
        if isinstance(ex, ValueExercise):  # the question states the parameters the answer is computed from
            for value in ex.params.values():
                for item in value if isinstance(value, (tuple, list)) else [value]:
                    assert str(item) in text, (ex.key, item)
        if isinstance(ex, ChoiceExercise):
            for letter, option in ex.options.items():
                assert f"**{letter}** {option}" in text, (ex.key, letter)
    assert f"{set_key}.check_all()" in code


def test_exercise_notebooks_state_the_dtype_and_that_inputs_stay_unchanged():
    for set_key, path in NOTEBOOKS.items():
        intro = cell_text(json.loads(path.read_text())["cells"][1])
        if any(isinstance(e, FunctionExercise) for e in SETS[set_key]):
            assert "float32" in intro and "leave" in intro, set_key


def test_a_set_refuses_exercises_of_another_set():
    with pytest.raises(ValueError, match="must start with its set's key"):
        ExerciseSet("ch01", "x", [SETS["ch02"].q3])


def markdown(notebook) -> str:
    return "\n".join(cell_text(c) for c in notebook["cells"] if c["cell_type"] == "markdown")


def test_no_statement_prints_a_formula_to_type():
    """The statements ask for predictions, diagnoses and fixes; the forward passes to implement (ch01.q1, and
    ch06.q2 for BatchNorm2d) are written from the chapters, so no statement prints a displayed formula or a square
    root to copy."""
    for set_key, path in NOTEBOOKS.items():
        text = markdown(json.loads(path.read_text()))
        assert "$$" not in text and "sqrt" not in text, set_key
    assert [e.key for e in ALL if "forward" in e.title and not e.title.startswith("debug")] == ["ch01.q1", "ch06.q2"]


def test_the_drafts_to_debug_are_shown_as_the_checks_know_them():
    from bnlab.exercises.batchnorm_in_an_mlp import BUGGY_BATCHNORM2D
    from bnlab.exercises.bias_redundancy import BUGGY_FOLD
    from bnlab.exercises.running_statistics import BUGGY_UPDATE

    for set_key, draft in (("ch01", BUGGY_BATCHNORM2D), ("ch03", BUGGY_FOLD), ("ch04", BUGGY_UPDATE)):
        code = [cell_text(c) for c in json.loads(NOTEBOOKS[set_key].read_text())["cells"] if c["cell_type"] == "code"]
        assert any(c.startswith(draft) for c in code), set_key


def test_the_collapsed_model_is_handed_over_in_its_notebook():
    code = "\n".join(cell_text(c) for c in json.loads(NOTEBOOKS["ch05"].read_text())["cells"])
    assert "from bnlab.exercises.scenarios import collapsed_model" in code
    assert "model, (train_x, train_y), (test_x, test_y) = collapsed_model()" in code
