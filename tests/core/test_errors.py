"""One error family: every exception pardo raises on purpose derives from PardoError and
from the standard exception users already catch for it; the ``pardo`` command prints a user
error on one line and lets a bug through as a traceback."""

import ast
import concurrent.futures.process
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import pardo
from pardo import _errors

SRC = Path(pardo.__file__).parent
# What pardo may raise besides its own family, as the standard library would (see the
# docstring of pardo._errors): misuse, a bounded wait running out, the OS saying no, and
# task data that cannot be pickled (delivered as that task's outcome).
STANDARD = {"TypeError", "RuntimeError", "TimeoutError", "AttributeError", "OSError",
            "PicklingError", "UnpicklingError"}


def test_every_exception_class_is_in_the_family_and_subclasses_the_standard_one():
    assert issubclass(_errors.UsageError, ValueError)
    for cls in (_errors.BatchError, _errors.TemplateError, _errors.InputError):
        assert issubclass(cls, _errors.UsageError) and issubclass(cls, ValueError), cls
    assert issubclass(pardo.BrokenPool, concurrent.futures.process.BrokenProcessPool)
    for name in dir(_errors) + ["BrokenPool"]:
        obj = getattr(_errors, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, pardo.PardoError), name


def test_broken_pool_is_one_class_and_pickles():
    import pardo._pool.executor as executor

    assert pardo.BrokenPool is _errors.BrokenPool is executor.BrokenPool
    err = pickle.loads(pickle.dumps(pardo.BrokenPool("gone")))
    assert type(err) is pardo.BrokenPool and str(err) == "gone"


def test_import_pardo_does_not_import_the_process_pool_module():
    code = "import sys, pardo; print('concurrent.futures.process' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("call", [
    lambda: pardo.run([]),
    lambda: pardo.run(["true"], timeout=-1),
    lambda: pardo.run(["true"], memory_limit="plenty"),
    lambda: pardo.configure(isolation="bogus"),
    lambda: pardo.ResultQueue(max_running=0),
    lambda: pardo.Pool(0),
    lambda: next(pardo.map_commands("echo", ["a"], jobs="many")),
    lambda: next(pardo.map_commands("echo {= 1 =}", ["a"])),
], ids=["empty-argv", "negative-timeout", "bad-size", "rung", "max-running", "pool-jobs",
        "batch-option", "template"])
def test_bad_values_raise_usage_errors(call):
    with pytest.raises(_errors.UsageError) as info:
        call()
    assert isinstance(info.value, pardo.PardoError) and isinstance(info.value, ValueError)


def test_unreadable_input_file_is_an_input_error(tmp_path):
    from pardo._batch.inputs import Source

    with pytest.raises(_errors.InputError):
        Source(path=str(tmp_path / "missing")).open()


def _raised_names(tree):
    """(line, class name) of every ``raise SomeClass(...)`` in a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            func = node.exc.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name[:1].isupper():  # a class; calls like self._make_broken() build BrokenPool
                yield node.lineno, name


def test_every_raise_in_the_source_is_in_the_family_or_standard():
    family = {n for n in dir(_errors) + ["BrokenPool"]
              if isinstance(getattr(_errors, n), type)}
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        for line, name in _raised_names(ast.parse(path.read_text(), str(path))):
            if name not in family and name not in STANDARD:
                wrong.append(f"{path.relative_to(SRC)}:{line}: raise {name}")
    assert not wrong, "\n".join(wrong)


def _cli(args, prelude=""):
    code = f"import sys\n{prelude}\nfrom pardo._cli import main\nsys.exit(main({args!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args,says", [
    (["run", "-j", "many", "echo", ":::", "1"], "-j/--jobs: 'many'"),
    (["run", "--halt", "later", "echo", ":::", "1"], "--halt: 'later'"),
    (["run", "echo {= s/( =}", ":::", "1"], "cannot use the perl expression"),
    (["run", "echo", "::::", "/nonexistent/pardo-input"], "cannot open input file"),
    (["run", "--memory-limit", "plenty", "true", ":::", "1"], "--memory-limit"),
    (["run", "--kill-grace", "-1", "true", ":::", "1"], "kill_grace"),
    (["run", "--isolation", "bogus", "true", ":::", "1"], "isolation 'bogus'"),
])
def test_cli_user_error_is_one_line_and_exit_255(args, says):
    p = _cli(args)
    assert p.returncode == 255, p.stderr
    assert p.stderr.count("\n") == 1 and says in p.stderr, p.stderr
    assert p.stderr.startswith("pardo run: ") and "Traceback" not in p.stderr


def test_cli_bug_is_a_traceback():
    # A ValueError from pardo's own code is a bug, not a user error: it must not be
    # dressed up as a one-line message.
    prelude = ("import pardo._batch.template as t\n"
               "def bug(*args, **kwargs):\n"
               "    raise ValueError('injected bug')\n"
               "t.Template.__init__ = bug\n")
    p = _cli(["run", "echo", ":::", "1"], prelude)
    assert p.returncode == 1, p.stderr
    assert "Traceback (most recent call last)" in p.stderr
    assert p.stderr.rstrip().endswith("ValueError: injected bug"), p.stderr
