"""Checks run on every rank under ``mpiexec -n 2`` by tests/test_mpi.py; rank 0 prints JSON."""
import json
import os
import sys

import numpy as np
from mpi4py import MPI

import fastbp
from fastbp.callbacks import CSVLogger, EarlyStopping
from fastbp.distributed import DistributedError

comm = MPI.COMM_WORLD
rank, size = comm.rank, comm.size
out_dir = sys.argv[1]
result = {}

# Uneven shards built from blocks of b rows dealt round-robin; one process at batch size*b
# over the same rows in the same order must give the same weights.
b = 8
rng = np.random.default_rng(0)
X = rng.normal(size=(size * 40 + 3, 5))
y = rng.integers(0, 3, len(X))
blocks = [np.arange(i, min(i + b, len(X))) for i in range(0, len(X), b)]
shards = [blocks[q::size] for q in range(size)]
mine = np.concatenate(shards[rank])
for opt in ("adam", "sgd"):
    net = fastbp.MLP([5, 16, 3], dtype="float64", seed=1)
    net.fit(X[mine], y[mine], epochs=3, batch_size=b, optimizer=opt, lr=0.05, shuffle=False,
            comm=comm)
    if rank == 0:
        steps = max(len(s) for s in shards)
        order = np.concatenate([shards[q][k] for k in range(steps) for q in range(size)
                                if k < len(shards[q])])
        ref = fastbp.MLP([5, 16, 3], dtype="float64", seed=1)
        ref.fit(X[order], y[order], epochs=3, batch_size=size * b, optimizer=opt, lr=0.05,
                shuffle=False)
        result[f"equiv_{opt}"] = max(float(np.max(np.abs(a - c))) for a, c in
                                     zip(net.get_weights(), ref.get_weights()))

# Shuffled, with validation and rank-0-only logging: ranks end bitwise identical.
log = os.path.join(out_dir, "log.csv")
net = fastbp.MLP([5, 16, 3], dtype="float32", seed=2)
h = net.fit(X[mine], y[mine], epochs=4, batch_size=b, comm=comm, validation_split=0.2,
            callbacks=[CSVLogger(log), EarlyStopping(monitor="val_loss", patience=50)])
flat = np.concatenate([w.ravel() for w in net.get_weights()])
gathered = comm.gather(flat, root=0)
val = comm.gather(h.history["val_loss"], root=0)
if rank == 0:
    result["sync_shuffled"] = all(np.array_equal(g, gathered[0]) for g in gathered)
    result["val_same_on_all_ranks"] = all(v == val[0] for v in val)
    result["csv_rows"] = sum(1 for _ in open(log)) - 1

# Local SGD: parameters averaged every 3 steps; ranks end in sync and the loss falls.
net = fastbp.MLP([5, 16, 3], dtype="float64", seed=3)
h = net.fit(X[mine], y[mine], epochs=5, batch_size=b, comm=comm, sync_every=3)
flat = np.concatenate([w.ravel() for w in net.get_weights()])
gathered = comm.gather(flat, root=0)
if rank == 0:
    result["sync_local_sgd"] = all(np.array_equal(g, gathered[0]) for g in gathered)
    result["local_sgd_loss"] = h.history["loss"]

# Bad input on one rank only: every rank raises, nobody waits forever.
bad_y = y[mine].copy()
if rank == 1:
    bad_y[0] = 99
try:
    fastbp.MLP([5, 16, 3], seed=1).fit(X[mine], bad_y, epochs=1, comm=comm)
    raised = None
except (ValueError, DistributedError) as e:
    raised = type(e).__name__
raised = comm.gather(raised, root=0)
if rank == 0:
    result["bad_input_raised"] = raised
    print(json.dumps(result))
