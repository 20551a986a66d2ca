"""Subprocess suites started as soon as collection ends, beside the rest of the run.

The CUDA checks under the simulator take minutes of one core each and need nothing from
the other tests; started early (``conftest.pytest_collection_modifyitems`` starts those
of the selected tests) they run on the second core while the rest of the suite runs, and
their test only waits for the result. Output goes to files, not pipes, so a child never
blocks on a full pipe while nobody reads it.
"""
import subprocess
import tempfile

_RUNS = {}   # key -> (Popen, stdout file, stderr file)


def start(key, cmd, env, cwd):
    """Start ``cmd`` under ``key`` unless it is already running or done."""
    if key not in _RUNS:
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        _RUNS[key] = (proc, out, err)
    return _RUNS[key][0]


def result(key, cmd, env, cwd, timeout):
    """(returncode, stdout, stderr) of the run under ``key``, started now if it was not."""
    proc = start(key, cmd, env, cwd)
    _, out, err = _RUNS[key]
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    texts = []
    for f in (out, err):
        f.seek(0)
        texts.append(f.read())
        f.close()
    return proc.returncode, texts[0], texts[1]


def early(spec):
    """Mark a test whose subprocess ``spec() -> (key, cmd, env, cwd)`` starts early."""
    def mark(test):
        test.early_subprocess = spec
        return test
    return mark
