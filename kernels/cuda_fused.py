"""Fully fused training kernels for narrow networks (every width <= FUSED_MAX_WIDTH).

The layer-by-layer path of ``kernels.cuda`` launches about 3 kernels per layer per batch
and sends every activation through global memory. Here, as in tiny-cuda-nn's
FullyFusedMLP, one block carries a tile of batch rows through the whole network: forward,
loss and output delta, backward, all in the block's shared memory. Layout of that memory
(``dtype`` elements, ``T`` = tile rows; widths n_0..n_L):

    [ X tile: T x n_0 | Z_1: T x n_1 | ... | Z_L: T x n_L | A scratch: T x max(n_1..n_L-1) ]

Z_l holds layer l's pre-activations; on the way back it is overwritten in place by the
delta of layer l (the delta of an element needs only that element's Z). The activations
are not kept: the scratch holds the current layer's input, and the backward pass
recomputes f(Z_l) (dropout mask included) where a weight gradient needs it. One
activation more per element buys one scratch instead of a copy of every hidden layer,
so more rows fit. ``kernels.cuda.fused_smem_bytes`` is the formula, ``fused_tile_rows``
the size rule.

Weights are read from global memory: every block reads the same ones (at most 64 KB a
layer at width 128 in float32), so they stay in L1/L2, and shared memory goes to the
tile's activations, which is what keeps the rows on chip. (Staging W in shared memory as
tiny-cuda-nn does would need the >48 KB opt-in, which numba-cuda does not expose.)

Weight gradients: a block adds its tiles' [A, 1]^T @ D into its own slot of ``partials``
(one row of n_params per block, written only by that block), and a second phase sums the
slots in a fixed order into the flat gradient vector: deterministic, no float atomics.
The batch's loss and metric sums go the same way through ``part`` (one row per block).

Launches: ``fused_train_chunk`` is ONE cooperative kernel per chunk. Per batch: fused
forward/backward of the block's tiles, grid sync, gradient reduction + optimizer update
(a second grid sync first when clipping needs the global norm), grid sync, next batch.
``fused_batch_grads`` + ``fused_reduce`` are the same two phases as separate launches;
the engine uses them for single gradient steps (data-parallel training) and where a
cooperative launch is not possible. The simulator's grid sync only syncs a one-block
grid: there the chunk kernel runs on one block, and the tests cover many blocks through
these launches. ``fused_members_chunk`` is the chunk kernel for the members of an
ensemble: one row of the grid per member, all of them in the same launch (a narrow net
alone fills a few of a GPU's multiprocessors; a few dozen members fill it).
"""
import math

import numpy as np
from numba import config, cuda, from_dtype

from . import cuda as kc

NT = kc.FUSED_THREADS
U = np.uint64         # array index type without negative wrap-around
RB = kc.FUSED_ROW_BLOCK
activate = kc.activate
activate_grad = kc.activate_grad
dropout_keep = kc.dropout_keep
loss_scale = kc.loss_scale


# Interleaved partial sums per parameter in _reduce_grad (the simulator's few blocks still
# go through the main loop with 2).
RED_LANES = 2 if config.ENABLE_CUDASIM else 8


@cuda.jit(device=True)
def _reduce_grad(partials, used, grads, i):
    """grads[i] = the sum of the first ``used`` blocks' partials.

    RED_LANES interleaved sums keep that many loads in flight: one serial chain per
    parameter was latency-bound, slower than the whole forward/backward kernel
    (bench/results/code-notes.md). The lanes are
    added in a fixed order, so the result is deterministic."""
    acc = cuda.local.array(RED_LANES, partials.dtype)
    lanes = min(RED_LANES, used)
    iu = U(i)
    for j in range(RED_LANES):
        if j < lanes:
            acc[j] = partials[U(j), iu]
    q = lanes
    while q + RED_LANES <= used:
        for j in range(RED_LANES):
            acc[j] += partials[U(q + j), iu]
        q += RED_LANES
    while q < used:
        acc[0] += partials[U(q), iu]
        q += 1
    g = acc[0]
    for j in range(1, RED_LANES):
        if j < lanes:
            g += acc[j]
    grads[iu] = g
    return g


@cuda.jit(device=True)
def _part_sum(part, used, col, buf):
    """Sum of part[:used, col] by the block's first NT threads: strided partial sums, then a
    tree in shared ``buf`` (NT float64). The order is fixed, so every block (and both fused
    paths) gets the same bits. Every thread of the block must call it (a serial sum in
    every thread repeated the same chain of dependent loads in each of them)."""
    t = cuda.threadIdx.x
    if t < NT:
        acc = 0.0
        for q in range(t, used, NT):
            acc += part[q, col]
        buf[t] = acc
    kc._block_sum(buf, t, NT)
    total = buf[0]
    cuda.syncthreads()      # buf is free again
    return total


def _build(ft):
    # Dynamic shared memory wants a Numba type (the simulator reads its itemsize).
    smem_type = from_dtype(np.dtype(ft))
    k = kc.kernels_for(ft)
    row_loss_delta = k["row_loss_delta"]

    # The tile helpers address the block's shared memory S as one flat array: base offset
    # + row * width + column. Reshaped 2-D views called a run-time helper and made every
    # access generic (not ld.shared), and numba wraps negative signed indices with a
    # compare and select per access: hence unsigned indices, which cut the integer
    # instructions per FMA of the inner loops to a third (bench/results/code-notes.md).

    @cuda.jit(device=True)
    def tile_forward(S, ain, n_in, params, off, n_out, z, T):
        """S[z:] = [A, 1] @ [W; b] for the T rows of the tile (A = S[ain:], T x n_in).

        Thread item = (column c, block of RB rows): W[k, c] is loaded once for RB rows, and
        consecutive threads read consecutive columns (coalesced)."""
        acc = cuda.local.array(RB, ft)
        for e in range(cuda.threadIdx.x, (T // RB) * n_out, NT):
            g = e // n_out
            c = e - g * n_out
            a0 = ain + g * RB * n_in
            for i in range(RB):
                acc[i] = ft(0.0)
            kk = 0
            while kk < n_in:       # a while loop: numba's range hides the trip count
                w = params[U(off + kk * n_out + c)]
                for i in range(RB):
                    acc[i] += S[U(a0 + i * n_in + kk)] * w
                kk += 1
            b = params[U(off + n_in * n_out + c)]   # the bias last, as in dense_forward
            z0 = z + g * RB * n_out + c
            for i in range(RB):
                S[U(z0 + i * n_out)] = acc[i] + b

    @cuda.jit(device=True)
    def tile_activate(S, z, a, n, T, act, rate, seed, step, layer, row0):
        """S[a:] = f(S[z:]) (T x n) with inverted dropout keyed by (row in batch, unit), as
        dense_forward."""
        for e in range(cuda.threadIdx.x, T * n, NT):
            v = activate(act, S[U(z + e)])
            if rate != 0.0:
                r = e // n
                if dropout_keep(seed, step, layer, np.int64(row0 + r), np.int64(e - r * n),
                                rate):
                    v = v * (1.0 / (1.0 - rate))
                else:
                    v = ft(0.0)
            S[U(a + e)] = v

    @cuda.jit(device=True)
    def tile_weight_grad(S, ain, d, partials, slot, off, n_in, n_out, T, first):
        """The tile's [A, 1]^T @ D (A = S[ain:], D = S[d:]) into the block's slot (= on its
        first tile, then +=).

        Thread item = (column c, block of RB rows of W), plus one item per column for the
        bias row (the sum of D over the rows)."""
        acc = cuda.local.array(RB, ft)
        nkb = (n_in + RB - 1) // RB
        for e in range(cuda.threadIdx.x, (nkb + 1) * n_out, NT):
            kb = e // n_out
            c = e - kb * n_out
            if kb == nkb:
                gb = ft(0.0)
                for r in range(T):
                    gb += S[U(d + r * n_out + c)]
                o = U(off + n_in * n_out + c)
                if first:
                    partials[U(slot), o] = gb
                else:
                    partials[U(slot), o] += gb
                continue
            k0 = kb * RB
            for i in range(RB):
                acc[i] = ft(0.0)
            r = 0
            while r < T:
                dv = S[U(d + r * n_out + c)]
                ar = ain + r * n_in
                for i in range(RB):
                    # Past n_in (the last block), clamp to a valid column: no branch in the
                    # inner loop, and the result is discarded below.
                    acc[i] += S[U(ar + min(k0 + i, n_in - 1))] * dv
                r += 1
            for i in range(RB):
                if k0 + i < n_in:
                    o = U(off + (k0 + i) * n_out + c)
                    if first:
                        partials[U(slot), o] = acc[i]
                    else:
                        partials[U(slot), o] += acc[i]

    @cuda.jit(device=True)
    def tile_input_delta(S, d, params, off, n_in, n_out, z, T, act, rate, seed, step, layer,
                         row0):
        """S[z:] <- (D @ W^T) * f'(S[z:]) (D = S[d:]), dropout mask and scale of ``layer``:
        the delta of the layer below, in place of its pre-activations (as
        dense_input_delta).

        Thread item = (input unit i, block of RB rows); each thread walks row i of W,
        which L1 serves after the first miss."""
        acc = cuda.local.array(RB, ft)
        for e in range(cuda.threadIdx.x, (T // RB) * n_in, NT):
            g = e // n_in
            i = e - g * n_in
            r0 = g * RB
            d0 = d + r0 * n_out
            w0 = off + i * n_out
            for q in range(RB):
                acc[q] = ft(0.0)
            c = 0
            while c < n_out:
                w = params[U(w0 + c)]
                for q in range(RB):
                    acc[q] += S[U(d0 + q * n_out + c)] * w
                c += 1
            for q in range(RB):
                r = r0 + q
                zi = U(z + r * n_in + i)
                zv = S[zi]
                dz = ft(0.0)
                # f(z) rounded to the dtype, as the A the other paths store.
                if rate == 0.0:
                    dz = acc[q] * activate_grad(act, zv, ft(activate(act, zv)))
                elif dropout_keep(seed, step, layer, np.int64(row0 + r), np.int64(i), rate):
                    dz = acc[q] * (activate_grad(act, zv, ft(activate(act, zv)))
                                   * (1.0 / (1.0 - rate)))
                S[zi] = dz

    @cuda.jit(device=True)
    def batch_tiles(S, X, Y, row_w, perm, b0, rows, scale, params, partials, sizes, poff,
                    acts, drop, trainable, lowest, loss, seed, step, T, blk, nblk):
        """Phase 1 of a batch for block ``blk`` of ``nblk``: tiles blk, blk + nblk, ... of
        the batch perm[b0:b0+rows] forward, loss, backward; weight gradients into
        partials[blk]. Returns this thread's (scaled loss sum, metric sum)."""
        t = cuda.threadIdx.x
        L = sizes.shape[0] - 1
        n0 = sizes[0]
        n_out = sizes[L]
        zbase = T * n0
        abase = zbase
        for l in range(1, L + 1):
            abase += T * sizes[l]
        lsum = 0.0
        msum = 0.0
        for tile in range(blk, (rows + T - 1) // T, nblk):
            row0 = tile * T
            # The tile's input rows, gathered through the permutation; rows past the
            # batch are zeros (their delta is zero, so they add nothing to the gradients).
            for e in range(t, T * n0, NT):
                r = e // n0
                v = ft(0.0)
                if row0 + r < rows:
                    v = X[perm[b0 + row0 + r], e - r * n0]
                S[U(e)] = v
            cuda.syncthreads()
            # Forward: Z_{l+1} = [A_l, 1] @ [W; b]; A_{l+1} = f(Z_{l+1}) into the scratch.
            zo = zbase
            for l in range(L):
                n_in = sizes[l]
                n_nx = sizes[l + 1]
                tile_forward(S, 0 if l == 0 else abase, n_in, params, poff[l], n_nx, zo, T)
                cuda.syncthreads()
                if l < L - 1:
                    tile_activate(S, zo, abase, n_nx, T, acts[l], drop[l], seed, step, l,
                                  row0)
                    cuda.syncthreads()
                zo += T * n_nx
            # Loss and output delta, one thread per row; Z_L becomes D_L.
            zo -= T * n_out
            ZL = S[zo:zo + T * n_out].reshape((T, n_out))
            for r in range(t, T, NT):
                if row0 + r < rows:
                    s = perm[b0 + row0 + r]
                    w = row_w[s] * scale
                    msum += kc.row_metric(ZL, r, Y, s, n_out, loss)
                    lsum += w * row_loss_delta(ZL, r, Y, s, w, n_out, loss, ZL)
                else:
                    for j in range(n_out):
                        ZL[r, j] = ft(0.0)
            cuda.syncthreads()
            # Backward, top down to the lowest trainable layer. At layer l, Z_{l+1} holds
            # D_{l+1}; the scratch holds A_l (still there from the forward pass for the
            # top layer, recomputed from Z_l below it).
            for l in range(L - 1, lowest - 1, -1):
                n_in = sizes[l]
                n_nx = sizes[l + 1]
                dbase = zo
                zo -= T * n_in                # Z_l (l = 0: the X tile, not read)
                ain = 0
                if l > 0:
                    ain = abase
                    if l < L - 1 and trainable[l] != 0:
                        tile_activate(S, zo, abase, n_in, T, acts[l - 1], drop[l - 1], seed,
                                      step, l - 1, row0)
                        cuda.syncthreads()
                # Both read D and write disjoint memory (the slot, Z_l): no sync between.
                if trainable[l] != 0:
                    tile_weight_grad(S, ain, dbase, partials, blk, poff[l], n_in, n_nx, T,
                                     tile == blk)
                if l > lowest:
                    tile_input_delta(S, dbase, params, poff[l], n_in, n_nx, zo, T,
                                     acts[l - 1], drop[l - 1], seed, step, l - 1, row0)
                cuda.syncthreads()
        return lsum, msum

    @cuda.jit(device=True)
    def batch_phase1(S, lbuf, mbuf, X, Y, row_w, perm, b0, rows, scale, params, partials,
                     part, sizes, poff, acts, drop, trainable, lowest, loss, seed, step, T):
        """batch_tiles for this block, then its loss and metric sums into part[block]."""
        t = cuda.threadIdx.x
        blk = cuda.blockIdx.x
        lsum, msum = batch_tiles(S, X, Y, row_w, perm, b0, rows, scale, params, partials,
                                 sizes, poff, acts, drop, trainable, lowest, loss, seed, step,
                                 T, blk, cuda.gridDim.x)
        lbuf[t] = lsum
        mbuf[t] = msum
        kc._block_sum(lbuf, t, NT)
        kc._block_sum(mbuf, t, NT)
        if t == 0:
            part[blk, 0] = lbuf[0]
            part[blk, 1] = mbuf[0]

    # Phase 2 of a batch, shared by the one-network and the members' chunk kernels: every
    # thread of a block calls these (they sum through the block's shared buffer), and
    # gid/gsize number the threads of the blocks that work on one network.
    @cuda.jit(device=True)
    def batch_loss(part, used, lbuf, out, kb, gid):
        """The batch's loss and metric sums from the blocks' rows of ``part`` (every block
        gets the same bits); out[kb] = both. Returns the loss."""
        total = _part_sum(part, used, 0, lbuf)
        metric = _part_sum(part, used, 1, lbuf)
        if gid == 0:
            out[kb, 0] = total
            out[kb, 1] = metric
        return total

    @cuda.jit(device=True)
    def reduce_step(partials, used, grads, params, opt, state, slots, ranges, n_total,
                    rates, kb, gid, gsize):
        """Sum the partials of this thread's parameters and step them (no clipping)."""
        for j in range(gid, n_total, gsize):
            i = kc._flat_index(ranges, j)
            g = _reduce_grad(partials, used, grads, i)
            kc.apply_update(opt, params, state, slots, i, g, rates, kb)

    @cuda.jit(device=True)
    def reduce_sq(partials, used, grads, ranges, n_total, part, lbuf, gid, gsize):
        """Sum the partials of this thread's parameters into grads, and the block's share
        of the squared norm into part[block, 2] (the clipped step needs every block's)."""
        sq = 0.0
        for j in range(gid, n_total, gsize):
            g = _reduce_grad(partials, used, grads, kc._flat_index(ranges, j))
            sq += g * g
        t = cuda.threadIdx.x
        lbuf[t] = sq
        kc._block_sum(lbuf, t, NT)
        if t == 0:
            part[cuda.blockIdx.x, 2] = lbuf[0]

    @cuda.jit(device=True)
    def clipped_step(grads, params, opt, state, slots, ranges, n_total, rates, kb, part,
                     nblk, lbuf, clip_norm, gid, gsize):
        """Step this thread's parameters with the gradient scaled to norm clip_norm at
        most (the norm from every block's share, after a grid sync)."""
        gscale = min(1.0, clip_norm / (math.sqrt(_part_sum(part, nblk, 2, lbuf)) + 1e-6))
        for j in range(gid, n_total, gsize):
            i = kc._flat_index(ranges, j)
            kc.apply_update(opt, params, state, slots, i, grads[i] * gscale, rates, kb)

    @cuda.jit
    def fused_train_chunk(X, Y, row_w, perm, start, stop, batch_size, params, grads,
                          partials, part, sizes, poff, acts, drop, trainable, lowest, loss,
                          seed, step, T, opt, state, slots, ranges, n_total, rates,
                          clip_norm, out, status):
        """Every batch of perm[start:stop], one optimizer step each, in one cooperative
        launch (kernels.cpu.train_chunk's semantics).

        ``rates[k]``: the optimizer's coefficients of batch k (from the host, as the layer
        path's ``update`` gets them); out[k] = [loss, metric sum]. A non-finite loss
        sets status = k + 1 and ends the kernel before that batch's update: every thread
        computes the same total from the same partial sums, so every block returns there
        and none is left waiting at a later grid sync.
        """
        S = cuda.shared.array(0, smem_type)
        lbuf = cuda.shared.array(NT, np.float64)
        mbuf = cuda.shared.array(NT, np.float64)
        grid = cuda.cg.this_grid()
        nblk = cuda.gridDim.x
        gid = cuda.grid(1)
        gsize = cuda.gridsize(1)
        n_out = sizes[sizes.shape[0] - 1]
        for kb in range((stop - start + batch_size - 1) // batch_size):
            b0 = start + kb * batch_size
            rows = min(batch_size, stop - b0)
            batch_phase1(S, lbuf, mbuf, X, Y, row_w, perm, b0, rows,
                         loss_scale(loss, rows, n_out), params, partials, part, sizes, poff,
                         acts, drop, trainable, lowest, loss, seed, step + kb + 1, T)
            grid.sync()
            used = min(nblk, (rows + T - 1) // T)
            total = batch_loss(part, used, lbuf, out, kb, gid)
            if not math.isfinite(total):
                if gid == 0:
                    status[0] = kb + 1
                return
            if clip_norm > 0.0:
                reduce_sq(partials, used, grads, ranges, n_total, part, lbuf, gid, gsize)
                grid.sync()
                clipped_step(grads, params, opt, state, slots, ranges, n_total, rates, kb,
                             part, nblk, lbuf, clip_norm, gid, gsize)
            else:
                reduce_step(partials, used, grads, params, opt, state, slots, ranges,
                            n_total, rates, kb, gid, gsize)
            grid.sync()     # the next batch reads the updated parameters and reuses part

    @cuda.jit
    def fused_members_chunk(X, Y, row_w, perm, start, stop, batch_size, params, grads,
                            partials, part, sizes, poff, acts, drop, trainable, lowest, loss,
                            seeds, steps, T, opt, state, slots, ranges, n_total, rates,
                            clip_norm, out, status, members):
        """fused_train_chunk for several networks of one architecture at once (ensemble
        members), in one cooperative launch: the blocks of row y of the grid
        (cuda.blockIdx.y) train member ``members[y]``, whose arrays are row members[y] of
        the member-stacked ``params`` (K, P), ``state`` (K, slots, P), ``row_w`` (K, n),
        ``seeds``, ``steps`` (K,), ``rates`` (K, batches, N_COEFFS), ``out`` (K, batches,
        2) and ``status`` (K,); the scratch ``grads``, ``partials`` and ``part`` have one
        row per grid row. X, Y and perm are shared: every member trains on the same batches.

        A member whose loss stops being finite gets status = k + 1 and takes no step from
        then on, while its blocks keep meeting the others at every grid sync (all of its
        blocks compute the same total, so they stop together)."""
        S = cuda.shared.array(0, smem_type)
        lbuf = cuda.shared.array(NT, np.float64)
        mbuf = cuda.shared.array(NT, np.float64)
        grid = cuda.cg.this_grid()
        y = cuda.blockIdx.y
        m = members[y]
        p = params[m]
        st = state[m]
        w = row_w[m]
        rt = rates[m]
        o = out[m]
        g = grads[y]
        pt = partials[y]
        pr = part[y]
        nblk = cuda.gridDim.x
        gid = cuda.grid(1)
        gsize = cuda.gridsize(1)
        n_out = sizes[sizes.shape[0] - 1]
        live = True
        for kb in range((stop - start + batch_size - 1) // batch_size):
            b0 = start + kb * batch_size
            rows = min(batch_size, stop - b0)
            used = min(nblk, (rows + T - 1) // T)
            if live:
                batch_phase1(S, lbuf, mbuf, X, Y, w, perm, b0, rows,
                             loss_scale(loss, rows, n_out), p, pt, pr, sizes, poff, acts,
                             drop, trainable, lowest, loss, seeds[m], steps[m] + kb + 1, T)
            grid.sync()
            if live:
                total = batch_loss(pr, used, lbuf, o, kb, gid)
                if not math.isfinite(total):
                    live = False
                    if gid == 0:
                        status[m] = kb + 1
            if clip_norm > 0.0:
                if live:
                    reduce_sq(pt, used, g, ranges, n_total, pr, lbuf, gid, gsize)
                grid.sync()
                if live:
                    clipped_step(g, p, opt, st, slots, ranges, n_total, rt, kb, pr, nblk,
                                 lbuf, clip_norm, gid, gsize)
            elif live:
                reduce_step(pt, used, g, p, opt, st, slots, ranges, n_total, rt, kb, gid,
                            gsize)
            grid.sync()

    @cuda.jit
    def fused_batch_grads(X, Y, row_w, perm, b0, rows, scale, params, partials, part, sizes,
                          poff, acts, drop, trainable, lowest, loss, seed, step, T, status):
        """Phase 1 of one batch as its own launch: block q's gradient into partials[q],
        its [loss, metric] sums into part[q]."""
        if status[0] != 0:
            return
        S = cuda.shared.array(0, smem_type)
        lbuf = cuda.shared.array(NT, np.float64)
        mbuf = cuda.shared.array(NT, np.float64)
        batch_phase1(S, lbuf, mbuf, X, Y, row_w, perm, b0, rows, scale, params, partials,
                     part, sizes, poff, acts, drop, trainable, lowest, loss, seed, step, T)

    @cuda.jit
    def fused_forward(X, rows, params, sizes, poff, acts, n_layers, pre_activation, loss, T,
                      out):
        """Inference: every block carries tiles of T rows of X through layers
        1..n_layers in shared memory, [X | Z | A] (``fused_forward_rows`` sizes it), and
        writes out the last layer's pre-activations (pre_activation), its activations, or
        (n_layers = L) the output activation (softmax, sigmoid or identity)."""
        S = cuda.shared.array(0, smem_type)
        t = cuda.threadIdx.x
        L = sizes.shape[0] - 1
        n0 = sizes[0]
        wmax = 0
        for l in range(1, n_layers + 1):
            wmax = max(wmax, sizes[l])
        zb = T * n0
        ab = zb + T * wmax
        n_last = sizes[n_layers]
        activate_last = pre_activation == 0 and n_layers < L
        for tile in range(cuda.blockIdx.x, (rows + T - 1) // T, cuda.gridDim.x):
            row0 = tile * T
            for e in range(t, T * n0, NT):
                r = e // n0
                v = ft(0.0)
                if row0 + r < rows:
                    v = X[row0 + r, e - r * n0]
                S[U(e)] = v
            cuda.syncthreads()
            for l in range(n_layers):
                # Z is written while A (the input) is read; A is rewritten after a sync.
                tile_forward(S, 0 if l == 0 else ab, sizes[l], params, poff[l], sizes[l + 1],
                             zb, T)
                cuda.syncthreads()
                if l < n_layers - 1 or activate_last:
                    tile_activate(S, zb, ab, sizes[l + 1], T, acts[l], 0.0, 0, 0, l, row0)
                    cuda.syncthreads()
            if pre_activation != 0 or n_layers < L:
                src = ab if activate_last else zb
                for e in range(t, T * n_last, NT):
                    r = e // n_last
                    if row0 + r < rows:
                        out[row0 + r, e - r * n_last] = S[U(src + e)]
            else:
                ZL = S[zb:zb + T * n_last].reshape((T, n_last))
                for r in range(t, T, NT):
                    if row0 + r < rows:
                        kc.output_rows(ZL, r, out, row0 + r, 1, n_last, loss)
            cuda.syncthreads()      # the next tile overwrites X, Z and A

    return dict(fused_train_chunk=fused_train_chunk, fused_members_chunk=fused_members_chunk,
                fused_batch_grads=fused_batch_grads, fused_forward=fused_forward)


@cuda.jit
def fused_reduce(partials, part, used, grads, ranges, n_total, out, k, status):
    """Phase 2 of one batch as its own launch: grads = the sum of the first ``used`` blocks'
    partials (trainable spans), out[k] = the sum of their [loss, metric] rows. The layer
    path's ``grad_sq_sum`` and ``update`` follow."""
    if status[0] != 0:
        return
    gid = cuda.grid(1)
    for j in range(gid, n_total, cuda.gridsize(1)):
        _reduce_grad(partials, used, grads, kc._flat_index(ranges, j))
    if cuda.blockIdx.x == 0:
        buf = cuda.shared.array(NT, np.float64)
        total = _part_sum(part, used, 0, buf)
        metric = _part_sum(part, used, 1, buf)
        if gid == 0:
            out[k, 0] = total
            out[k, 1] = metric


_KERNELS = {}


def kernels_for(dtype):
    """The dtype-specific fused kernels (float32 or float64), built on first use."""
    dtype = np.dtype(dtype)
    if dtype not in _KERNELS:
        _KERNELS[dtype] = _build(dtype.type)
    return _KERNELS[dtype]
