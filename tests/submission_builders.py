"""Submissions for the grader's tests, built from the real exercise notebooks: honest ones (solved, partly solved,
typical mistakes) and hostile ones (each attacks the grader one way). Not a test module: the grading tests import
it."""

from __future__ import annotations

import textwrap

import nbformat

from bnlab.exercises import SETS
from bnlab.grading.grader import kernel_command
from bnlab.grading.sandbox import isolation_problem
from bnlab.grading.throughput import exercise_notebook, solved, with_answers

# Whether the grader isolates learner code here (root, and Python reachable by its sandbox users).
ISOLATED = isolation_problem(kernel_command("python3")) is None


def code(source: str):
    return nbformat.v4.new_code_cell(textwrap.dedent(source).strip("\n"))


def insert(notebook, index: int, source: str):
    notebook.cells.insert(index, code(source))
    return notebook


def append(notebook, source: str):
    notebook.cells.append(code(source))
    return notebook


def answers(set_key: str, sources: dict, *, base=None):
    """``base`` (default: the set's solved notebook) with the answers in ``sources`` (``{"q1": source}``)."""
    notebook = solved(set_key) if base is None else base
    return with_answers(notebook, {getattr(SETS[set_key], name): textwrap.dedent(source).strip("\n")
                                   for name, source in sources.items()})


def after_imports(notebook) -> int:
    """The index just after the cell that imports the exercises."""
    return next(i for i, c in enumerate(notebook.cells) if "from bnlab.exercises import" in c.source) + 1


def solved_then(set_key: str, name: str, statement: str) -> str:
    """An exercise's reference solution that runs ``statement`` before it returns."""
    return getattr(SETS[set_key], name).solution_code.replace("    return ", f"    {statement}\n    return ", 1)


def untouched(set_key: str):
    return exercise_notebook(set_key)


# --- honest mistakes --------------------------------------------------------------------------------------------

FLOAT64_FORWARD = '''
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    x = x.double()                                   # "more precision"
    return gamma * (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps) + beta'''

IN_PLACE_2D = '''
def batchnorm2d_forward(x, gamma, beta, eps=1e-5):
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    x -= mean                                        # changes the caller's tensor
    x /= torch.sqrt(var + eps)
    return gamma.view(1, -1, 1, 1) * x + beta.view(1, -1, 1, 1)'''

WRONG_AXIS_2D = '''
def batchnorm2d_forward(x, gamma, beta, eps=1e-5):
    mean, var = x.mean(0, keepdim=True), x.var(0, unbiased=False, keepdim=True)   # over the batch axis only
    return gamma.view(1, -1, 1, 1) * (x - mean) / torch.sqrt(var + eps) + beta.view(1, -1, 1, 1)'''

IN_PLACE_RUNNING = '''
def update_running_stats(running_mean, running_var, x, momentum=0.1):
    running_mean.mul_(1 - momentum).add_(momentum * x.mean(dim=0))   # as BatchNorm updates its buffers
    running_var.mul_(1 - momentum).add_(momentum * x.var(dim=0, unbiased=True))
    return running_mean, running_var'''

TOP_LEVEL_PREDICT = '''
def predict(model, x):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.train(was_training)                    # every layer back to the model's mode'''

UNPAIRED_T = '''
import statistics
before = [97.62, 97.81, 97.70, 97.55, 97.87]
after = [97.71, 97.93, 97.78, 97.66, 97.95]
se = (statistics.variance(after) / 5 + statistics.variance(before) / 5) ** 0.5    # as if unpaired
answer_q2 = (statistics.fmean(after) - statistics.fmean(before)) / se'''

DROPOUT_COUNTED = '''
def redundant_biases(model):
    layers = [m for m in model]
    found = []
    for i, layer in enumerate(layers[:-1]):
        after = [m for m in layers[i + 1:] if not isinstance(m, nn.Dropout)]   # "Dropout changes nothing"
        if isinstance(layer, nn.Linear) and after and isinstance(after[0], nn.BatchNorm1d):
            found.append(i)
    return found'''

NO_SHIFT = '''
def fold_into_next(bn, linear):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Linear(linear.in_features, linear.out_features)
    with torch.no_grad():
        fused.weight.copy_(linear.weight * scale)
        fused.bias.copy_(linear.bias if linear.bias is not None else torch.zeros(linear.out_features))
    return fused'''

ONE_PASS = '''
def recalibrate(model, x):
    model.train()
    with torch.no_grad():
        model(x)                                     # with momentum 0 this changes nothing
    return model.eval()'''

BN_LEFT_IN_TRAIN = '''
def train_with_frozen_batchnorm(model):
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.eval()
    model.train()                                    # undoes it'''

PYTORCH_BATCHNORM = '''
def batchnorm2d_train(x, gamma, beta, running_mean, running_var, momentum=0.1, eps=1e-5):
    new_mean, new_var = running_mean.clone(), running_var.clone()
    y = torch.nn.functional.batch_norm(x, new_mean, new_var, gamma, beta, True, momentum, eps)   # the shortcut
    return y, new_mean, new_var'''

FOLD_WITHOUT_EPS = '''
def fold_conv_bn(conv, bn):
    scale = bn.weight / torch.sqrt(bn.running_var)           # eps forgotten
    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_((b - bn.running_mean) * scale + bn.bias)
    return fused'''


def honest() -> dict:
    return {
        "partial_ex01": answers("ch01", {"q2": "answer_q2 = None", "q3": WRONG_AXIS_2D}),
        "mistakes_ex01": answers("ch01", {"q1": FLOAT64_FORWARD, "q3": IN_PLACE_2D}),
        "mistakes_ex04": answers("ch04", {"q1": IN_PLACE_RUNNING, "q2": "answer_q2 = 2 * (1 - 0.1 ** 10)"}),
        "mistakes_ex02": answers("ch02", {"q2": UNPAIRED_T, "q4": 'answer_q4 = "B"'}),
        "mistakes_ex03": answers("ch03", {"q3": DROPOUT_COUNTED, "q5": NO_SHIFT}),
        "mistakes_ex06": answers("ch06", {"q2": PYTORCH_BATCHNORM, "q3": FOLD_WITHOUT_EPS}),
        "mistakes_ex05": answers("ch05", {"q2": TOP_LEVEL_PREDICT, "q5": BN_LEFT_IN_TRAIN, "q6": 'answer_q6 = "C"',
                                          "q7": ONE_PASS}),
        "float64_default_ex03": insert(solved("ch03"), after_imports(solved("ch03")),
                                       "torch.set_default_dtype(torch.float64)"),
        "reordered_ex01": reordered(solved("ch01")),
        "renamed_ex01": answers("ch01", {"q1": SETS["ch01"].q1.solution_code.replace(
            "def batchnorm_forward", "def batch_norm_fwd")}),
        "exceptions_ex02": insert(insert(solved("ch02"), 3, 'raise RuntimeError("boom")'), 5, "def broken(:\n    pass"),
    }


def reordered(notebook):
    """Setup and imports first, then every other code cell in reverse order (checks before the answers)."""
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    notebook.cells = cells[:2] + cells[2:][::-1]
    return notebook


# --- hostile ------------------------------------------------------------------------------------------------------

REACH_THE_GRADER = '''
import os, shutil, subprocess, sys

def targets():
    """Every path on a grader's command line, and every process's working folder (from /proc)."""
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            args = [a.decode(errors="ignore") for a in open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")]
        except OSError:
            continue
        if any("bnlab" in a for a in args):
            found.update(a for a in args if a.startswith("/"))
        try:
            found.add(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            pass
    return found

def attack(paths):
    for path in paths:
        for step in (lambda p: open(p, "w").write("hacked,0\\n"), lambda p: shutil.rmtree(p), lambda p: os.remove(p),
                     lambda p: open(os.path.join(p, "grades.csv"), "w").write("hacked")):
            try:
                step(path)
            except Exception:
                pass

attack(targets() | {"/run/bnlab-grader"})
DAEMON = """
import os, sys, time
os.setsid()
if os.fork():
    os._exit(0)
while True:
    time.sleep(0.2)
    for path in sys.argv[1:]:
        try:
            open(path, "w").write("rewritten by a process that outlived its kernel")
        except Exception:
            pass
"""
subprocess.Popen([sys.executable, "-c", DAEMON, *sorted(targets())], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
'''

PATCH_EVERYTHING = '''
import importlib, importlib.util, json, math, os, torch
import bnlab.exercises as E
import bnlab.exercises.core as core

real_dumps, real_loads = json.dumps, json.loads

def dumps(obj, *args, **kwargs):   # the probe's record becomes a claim of full points
    if isinstance(obj, dict) and "token" in obj:
        return real_dumps({"token": obj["token"], "observed": {"status": "passed", "points": 100}})
    return real_dumps(obj, *args, **kwargs)

json.dumps = dumps
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.Tensor.allclose = lambda *a, **k: True
math.isclose = lambda *a, **k: True
os.replace = lambda *a, **k: None
importlib.util.spec_from_file_location = lambda *a, **k: None
core.FunctionExercise.judge = lambda self, cases, observed: self.result(core.PASSED, "passed")
for q in ch01:
    q.check = lambda *a, **k: print("✔ passed")
print("Total: 9 of 9 points.")'''

HOOKS = '''
import ast, json
from IPython.display import display

def requests_in(cell):
    """The requests in a grader's probe cell: the second argument of its __bnlab_probe(...) call."""
    try:
        tree = ast.parse(cell)
    except SyntaxError:
        return []
    return [json.loads(node.args[1].value) for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "id", "") == "__bnlab_probe" and isinstance(node.args[1], ast.Constant)]

def forge(info):
    """Before each cell: if it is the grader's probe, answer its request first, with made-up values."""
    for request in requests_in(getattr(info, "raw_cell", "")):
        echo = [{"value": case["args"][0], "after": dict(zip(case["names"], case["args"]))}
                for case in request.get("cases", [])]   # the inputs, sent back as the results
        fake = {"status": "ran", "callable": True, "runs": echo} if echo else {"status": "ran", "value": "E"}
        for observed in (fake, {"status": "passed"}):
            display({"application/vnd.bnlab.observation+json": json.dumps({"token": request["token"],
                                                                             "observed": observed})}, raw=True)

def sabotage(result):
    raise RuntimeError("a post_run_cell hook that fails every cell")

ip = get_ipython()
ip.events.register("pre_run_cell", forge)
ip.events.register("post_run_cell", sabotage)'''

FRAMES_AND_GC = '''
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    """Look for the checker's reference in the callers' frames and in every object alive."""
    import gc, sys
    frame = sys._getframe(1)
    while frame is not None:
        for value in list(frame.f_locals.values()):
            if hasattr(value, "expected"):
                try:
                    return value.expected(frame.f_locals.get("case"))
                except Exception:
                    pass
        frame = frame.f_back
    for obj in gc.get_objects():
        if type(obj).__name__ in ("BatchNormForward", "Case") and hasattr(obj, "expected"):
            try:
                return obj.expected(obj)
            except Exception:
                pass
    return x   # nothing found'''

DEAF_ANSWER = '''
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    import time
    while True:          # swallows the check's time limit and the kernel interrupt alike
        try:
            time.sleep(0.05)
        except BaseException:
            pass'''

HUGE_PRINT = '''
import os, sys
from IPython.display import HTML, display
os.write(1, b"FORGED 9/9  graded  everyone\\n")   # straight to the kernel's own stdout and stderr
os.write(2, b"FORGED\\n")
for _ in range(40):
    print("x" * 1_000_000)
sys.stdout.write("y" * 30_000_000)
display(HTML("<p>" * 2_000_000))'''


def stored_outputs(notebook, megabytes: int):
    """``notebook`` carrying ``megabytes`` of stored outputs, and outputs and metadata that claim full points."""
    claim = "✔ q1 (the train-mode forward): passed.\nTotal: 9 of 9 points.\n"
    filler = "z" * (1024 * 1024)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.execution_count = 1
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=claim)]
    first = next(c for c in notebook.cells if c.cell_type == "code")
    first.outputs += [nbformat.v4.new_output("stream", name="stdout", text=filler) for _ in range(megabytes)]
    notebook.metadata["bnlab"]["score"] = 9
    return notebook


def hostile(*, destructive: bool) -> dict:
    """The hostile set; ``destructive``: with the notebook that deletes and rewrites every path on the grader's
    command line (only where the grader isolates it: run without isolation, it would succeed)."""
    ex01 = lambda: solved("ch01")  # noqa: E731
    found = {
        "deaf_answer_ex01": answers("ch01", {"q1": DEAF_ANSWER}),
        "os_exit_ex04": insert(insert(answers("ch04", {"q1": solved_then("ch04", "q1", "__import__('os')._exit(0)")}),
                                      3, "import os\nos._exit(1)"), 5, "exit()"),
        "exit_in_answer_ex01": answers("ch01", {"q3": solved_then("ch01", "q3", "exit()")}),
        "sys_exit_ex01": insert(ex01(), after_imports(ex01()), "import sys\nsys.exit(3)"),
        "patched_ex01": append(answers("ch01", {"q1": FLOAT64_FORWARD.replace("x.double()", "x"),
                                                "q2": "answer_q2 = 1", "q3": WRONG_AXIS_2D}), PATCH_EVERYTHING),
        "hooks_ex01": insert(answers("ch01", {"q1": "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n    return x",
                                              "q4": 'answer_q4 = "AB"'}), after_imports(ex01()), HOOKS),
        "frames_ex01": answers("ch01", {"q1": FRAMES_AND_GC}),
        "huge_print_ex01": insert(ex01(), after_imports(ex01()), HUGE_PRINT),
        "stored_outputs_ex01": stored_outputs(ex01(), 60),
        "printed_claims_ex01": stored_outputs(exercise_notebook("ch01"), 0),
    }
    if destructive:
        found["reach_the_grader_ex02"] = insert(solved("ch02"), after_imports(solved("ch02")), REACH_THE_GRADER)
    return found
