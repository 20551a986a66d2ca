"""After warm-up, training makes no heap allocation per mini-batch.

Numba's runtime (NRT) counts its allocations only when NUMBA_NRT_STATS=1 is set before
numba is imported, so the measurement runs in one child interpreter. Passing arrays into a
compiled call costs a fixed number of runtime allocations per call (argument boxing); the
batch loop inside the call must add none. So for each configuration the child measures
one-epoch fits over 1 batch, N rows and 4N rows, counting the compiled chunk calls with a
callback, and the allocation count must be exactly (calls x the cost of a 1-batch call).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(r"""
    import json
    import numpy as np
    import fastbp
    import fastbp.training
    from numba.core.runtime import rtsys

    # Chunks of a fixed 7 batches (they are otherwise sized by time), so that every fit
    # but the 1-batch one makes several compiled calls; the calls are counted below.
    fastbp.training.chunk_batches = lambda per_batch_s: 7

    class CountChunks(fastbp.Callback):
        def __init__(self):
            self.calls = 0

        def on_chunk_end(self, chunk, logs=None):
            self.calls += 1

    def nrt():
        s = rtsys.get_allocation_stats()
        return np.array([s.alloc, s.free, s.mi_alloc, s.mi_free])

    def one_epoch(net, X, y, kw):
        cb = CountChunks()
        before = nrt()
        net.fit(X, y, epochs=1, shuffle=True, callbacks=[cb], **kw)
        d = nrt() - before
        return dict(alloc=int(d[0]), free=int(d[1]), mi_alloc=int(d[2]), mi_free=int(d[3]),
                    calls=cb.calls)

    CONFIGS = {
        "sgd": dict(optimizer="sgd"),
        "sgd_nesterov_wd": dict(optimizer=fastbp.SGD(lr=0.01, momentum=0.9, nesterov=True,
                                                     weight_decay=1e-4)),
        "adam": dict(optimizer="adam"),
        "adamw": dict(optimizer="adamw"),
        "rmsprop_momentum": dict(optimizer=fastbp.RMSprop(lr=1e-3, momentum=0.5)),
        "adam_float64": dict(optimizer="adam", dtype="float64"),
        "adam_clip_norm": dict(optimizer="adam", clip_norm=1.0),
    }
    B, N = 8, 320
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4 * N, 6))
    y = rng.integers(0, 3, 4 * N)
    out = {}
    for name, cfg in CONFIGS.items():
        cfg = dict(cfg)
        dtype = cfg.pop("dtype", "float32")
        kw = dict(cfg, batch_size=B)
        net = fastbp.MLP([6, 16, 16, 3], dtype=dtype, seed=0, device="cpu")
        net.fit(X, y, epochs=2, **kw)                       # warm-up: compile/load
        out[name] = dict(one_batch=one_epoch(net, X[:B], y[:B], kw),
                         n_rows=one_epoch(net, X[:N], y[:N], kw),
                         four_n_rows=one_epoch(net, X, y, kw),
                         batches=[1, N // B, 4 * N // B])
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def nrt_counts():
    env = dict(os.environ, NUMBA_NRT_STATS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


CONFIGS = ["sgd", "sgd_nesterov_wd", "adam", "adamw", "rmsprop_momentum", "adam_float64",
           "adam_clip_norm"]


def test_nrt_statistics_are_enabled(nrt_counts):
    """The measurement can see allocations at all (else the other tests prove nothing)."""
    one = nrt_counts["adam"]["one_batch"]
    assert one["calls"] == 1
    assert one["mi_alloc"] > 0, "NRT statistics are off: NUMBA_NRT_STATS was not honoured"


@pytest.mark.parametrize("config", CONFIGS)
def test_epoch_allocations_do_not_grow_with_batches(nrt_counts, config):
    """Allocations of a one-epoch fit = E + calls x C: E per epoch (the shuffle's compiled
    call), C per compiled chunk call (argument boxing), nothing per batch. E and C come
    from the 1-batch and N-row fits; the 4N-row fit must match them exactly."""
    r = nrt_counts[config]
    one, n, four = r["one_batch"], r["n_rows"], r["four_n_rows"]
    for got, batches in ((n, r["batches"][1]), (four, r["batches"][2])):
        assert 1 < got["calls"] < batches, "no chunking: the measurement would be meaningless"
        # Whatever is allocated is released: no leak per epoch.
        assert got["free"] == got["alloc"] and got["mi_free"] == got["mi_alloc"], got
    for kind in ("alloc", "mi_alloc"):
        per_call, rem = divmod(n[kind] - one[kind], n["calls"] - one["calls"])
        per_epoch = one[kind] - per_call
        assert rem == 0 and 0 < per_call <= 64 and 0 <= per_epoch <= 8, (config, kind, r)
        assert four[kind] == per_epoch + four["calls"] * per_call, (
            f"{config}: {four[kind]} NRT {kind} for {r['batches'][2]} batches in "
            f"{four['calls']} compiled calls; expected {per_epoch} + {four['calls']} x "
            f"{per_call} (the batch loop allocates)")
