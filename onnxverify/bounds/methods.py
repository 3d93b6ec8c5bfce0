"""Compositions of the linear bound machinery into the paper's methods (PAPER_NOTES.md §2).

| method            | intermediate bounds                       | output bounds                     |
|-------------------|-------------------------------------------|-----------------------------------|
| lbp               | forward maps (LBP)                        | backward, 1 layer, then maps      |
| crown-ibp         | IBP                                       | full backward pass                |
| crown-lbp         | forward maps (LBP)                        | full backward pass                |
| crown             | full backward pass per bound node         | full backward pass                |
| relaxed-crown-V   | backward V layers, then forward maps      | backward V layers, then maps      |

Intermediate bounds are intersected with IBP (always sound, never looser). Backward passes
are chunked over rows so that peak memory stays under ``max_memory`` bytes.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import InputError, MemoryLimitError
from ..ops import rule_for
from .linear import NONLINEAR, LinearEngine, bound_nodes, undecided_mask


def parse_method(method: str):
    """-> (intermediate kind, output depth or None). Kinds: ibp, lbp, crown, relaxed."""
    m = method.lower()
    if m == "lbp":
        return "lbp", 1, None
    if m == "crown-ibp":
        return "ibp", None, None
    if m == "crown-lbp":
        return "lbp", None, None
    if m == "crown":
        return "crown", None, None
    if m.startswith("relaxed-crown-"):
        try:
            v = int(m.rsplit("-", 1)[1])
        except ValueError:
            v = 0
        if v < 1:
            raise InputError(f"method {method!r}: V must be an integer >= 1 (e.g. relaxed-crown-2)")
        return "relaxed", v, v
    raise InputError(f"unknown method {method!r}")


def default_max_memory() -> int:
    """60% of physical memory."""
    try:
        return int(0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def _itemsize(dtype) -> int:
    try:
        return np.dtype(dtype).itemsize
    except TypeError:  # a torch dtype
        return dtype.itemsize


def _gb(x):
    return f"{x / 2**30:.2f} GB"


def intermediate_bounds(graph, input_set, method, strategy, bk, dtype, ibp_env, max_memory=None,
                        stop_after: str | None = None) -> LinearEngine:
    """The engine after the intermediate-bound phase of ``method``: ``eng.best(name)``
    holds the bounds of every node that feeds a nonlinear node (``eng.relax`` their lines).
    ``stop_after``: stop once this node is done (the output pass is then not possible)."""
    kind, out_depth, v = parse_method(method)
    max_memory = max_memory or default_max_memory()
    eng = LinearEngine(graph, input_set, bk, dtype, strategy, ibp_env)
    eng.max_memory, eng.itemsize, eng.out_depth = max_memory, _itemsize(dtype), out_depth
    B, n0 = eng.B, eng.n0
    biggest = max(n.size for n in graph.nodes)
    needs = set(bound_nodes(graph))

    use_maps = kind in ("lbp", "relaxed")
    if use_maps:
        need = B * n0 * biggest * eng.itemsize * 6
        if need > max_memory:
            raise MemoryLimitError(
                f"{method}: forward linear maps need about {_gb(need)} ({B} x {n0} x {biggest} values, "
                f"with temporaries) but the memory limit is {_gb(max_memory)}; use crown-ibp or crown, "
                "fewer images at once, or raise --max-memory")
        eng.input_maps()
    keep_maps = set(needs) if kind == "relaxed" else _output_cut_nodes(graph, needs, out_depth)
    exact = exact_by_ibp(graph)
    consumers_left = {name: len(cs) for name, cs in graph.consumers().items()}

    for node in graph.nodes[1:]:
        if node.op in NONLINEAR:
            eng.relax_node(node.name)  # its input's bounds are final by now
        if use_maps:
            eng.forward_maps(node.name)
            for i in node.inputs:
                consumers_left[i] -= 1
                if consumers_left[i] == 0 and i not in keep_maps:
                    eng.maps.pop(i, None)
        if node.name in needs:
            # re-run IBP from the tightened input bounds (cheap, sound, often tighter)
            eng.tighten(node.name, *rule_for(node.op).ibp(bk, node, *[eng.best(i) for i in node.inputs]))
            if use_maps:
                eng.tighten(node.name, *eng.concretize_maps(node.name))
            # a monotone activation's output is as tight as its input's bounds allow, and IBP
            # bounds some prefix nodes exactly: neither needs backward passes
            if kind in ("crown", "relaxed") and node.op not in NONLINEAR and node.name not in exact:
                _backward_undecided(eng, node.name, v, max_memory, eng.itemsize)
        if node.name == stop_after:
            break
    return eng


def run_linear_method(graph, input_set, method, C, strategy, bk, dtype, ibp_env, max_memory=None):
    """Output bounds ``(B, K)`` of ``C @ y`` (C ``(B, K, n_out)``) by a linear method."""
    eng = intermediate_bounds(graph, input_set, method, strategy, bk, dtype, ibp_env, max_memory)
    out = graph[graph.output]
    lam = bk.reshape(bk.asarray(C, dtype=dtype), (eng.B, C.shape[1]) + tuple(out.shape))
    return _chunked_backward(eng, graph.output, lam, eng.out_depth, eng.max_memory, eng.itemsize)


MIXING = {"Linear", "Conv", "AvgPool", "Add", "Sub"}


def exact_by_ibp(graph) -> set:
    """Nodes of the affine prefix that IBP bounds exactly for any input box (and the l_p
    prefix bounds are exact by the dual norm): every path from the input crosses at most
    one op that mixes coordinates (elementwise affine, reshape, transpose, pad, concat
    map boxes to boxes exactly)."""
    from .affine_maps import affine_prefix

    mixes = {graph.input.name: 0}
    for name in affine_prefix(graph):
        node = graph[name]
        mixes[name] = max(mixes[i] for i in node.inputs) + (node.op in MIXING)
    return {n for n, m in mixes.items() if m <= 1 and n != graph.input.name}


def _output_cut_nodes(graph, needs, depth):
    """Bound nodes where the output pass of depth ``depth`` substitutes forward maps."""
    if depth is None:
        return set()
    dist, cuts = {graph.output: 0}, set()
    for n in reversed(graph.nodes):
        if n.name not in dist:
            continue
        d = dist[n.name]
        if d >= depth and n.name in needs:
            cuts.add(n.name)
            continue
        step = 0 if (n.op == "Input" or rule_for(n.op).affine) else 1
        for i in n.inputs:
            dist[i] = max(dist.get(i, 0), d + step)
    return cuts


def _rows_per_chunk(eng, start, max_memory, itemsize):
    """Rows of a backward pass that fit in ``max_memory``: per row, a few arrays of the
    largest ancestor's size plus the im2col buffer of the widest kernel (kh * kw copies)."""
    ancestors = [eng.g[n] for n in eng._ancestors(start)]
    biggest = max(n.size for n in ancestors)
    kernel = max([int(np.prod(n.params["weight"].shape[2:])) for n in ancestors if n.op == "Conv"]
                 + [int(np.prod(n.attrs["kernel"])) for n in ancestors if n.op in ("MaxPool", "AvgPool")] + [1])
    per_row = eng.B * max(biggest, eng.n0) * itemsize * (8 + 2 * kernel)
    rows = int(max_memory // max(per_row, 1))
    if rows < 1:
        raise MemoryLimitError(f"one backward row from {start} needs about {_gb(per_row)}, over the memory limit "
                               f"{_gb(max_memory)}")
    return rows


def _chunked_backward(eng, start, lam, depth, max_memory, itemsize):
    bk = eng.bk
    K = lam.shape[1]
    step = _rows_per_chunk(eng, start, max_memory, itemsize)
    if step >= K:
        return eng.backward(start, lam, depth)
    los, his = [], []
    for k in range(0, K, step):
        lo, hi = eng.backward(start, lam[:, k:k + step], depth)
        los.append(lo)
        his.append(hi)
    return bk.concat(los, axis=1), bk.concat(his, axis=1)


TILE_ROWS = 512  # rows per windowed backward pass (a spatial tile times the channels)


def _backward_undecided(eng, name, depth, max_memory, itemsize):
    """Tighten the bounds of ``name`` by backward passes for its undecided neurons."""
    bk, g = eng.bk, eng.g
    lo, hi = eng.best(name)
    mask = undecided_mask(bk, g, name, lo, hi)
    if mask is None:
        return
    flat = np.asarray(bk.to_numpy(bk.reshape(mask, (eng.B, -1))))
    if not flat.any():
        return
    shape = tuple(g[name].shape)
    many = flat.sum(axis=1).max() > 2 * TILE_ROWS  # few rows: one dense pass is cheaper than many small ones
    if many and len(shape) == 3 and shape[1] * shape[2] > 1 and bk.name in ("numpy", "cupy"):
        _backward_tiles(eng, name, depth, flat.reshape((eng.B,) + shape), max_memory, itemsize)
        return
    K = int(flat.sum(axis=1).max())
    N = flat.shape[1]
    idx = np.zeros((eng.B, K), dtype=np.int64)
    valid = np.zeros((eng.B, K))
    for b in range(eng.B):
        nz = np.flatnonzero(flat[b])
        idx[b, : len(nz)] = nz
        valid[b, : len(nz)] = 1.0
    step = _rows_per_chunk(eng, name, max_memory, itemsize)
    new_lo, new_hi = bk.reshape(lo, (eng.B, N)), bk.reshape(hi, (eng.B, N))
    for k in range(0, K, step):
        sl = slice(k, min(K, k + step))
        onehot = np.zeros((eng.B, sl.stop - sl.start, N))
        for b in range(eng.B):
            onehot[b, np.arange(sl.stop - sl.start), idx[b, sl]] = valid[b, sl]
        lam = bk.asarray(onehot, dtype=eng.dtype)
        l_k, h_k = eng.backward(name, bk.reshape(lam, (eng.B, sl.stop - sl.start) + shape), depth)
        hit = bk.sum(lam, axis=1) > 0
        new_lo = bk.where(hit, bk.maximum(new_lo, bk.einsum("bk,bkn->bn", l_k, lam)), new_lo)
        new_hi = bk.where(hit, bk.minimum(new_hi, bk.einsum("bk,bkn->bn", h_k, lam)), new_hi)
    eng.tighten(name, bk.reshape(new_lo, (eng.B,) + shape), bk.reshape(new_hi, (eng.B,) + shape))


def _backward_tiles(eng, name, depth, mask, max_memory, itemsize):
    """Backward passes for the undecided neurons of a ``(C, H, W)`` node, one spatial tile at
    a time: each pass only touches the tile's receptive field (see LinearEngine.backward)."""
    bk = eng.bk
    B, (C, H, W) = eng.B, mask.shape[1:]
    T = max(1, int(np.sqrt(max(1, TILE_ROWS // C))))
    step = max(1, min(_rows_per_chunk(eng, name, max_memory, itemsize) * 4, 4 * TILE_ROWS))
    lo, hi = (np.array(bk.to_numpy(a), dtype=np.float64).reshape(B, -1) for a in eng.best(name))
    for r0 in range(0, H, T):
        for c0 in range(0, W, T):
            r1, c1 = min(H, r0 + T), min(W, c0 + T)
            sub = mask[:, :, r0:r1, c0:c1].reshape(B, -1)
            counts = sub.sum(axis=1)
            if counts.max() == 0:
                continue
            h, w = r1 - r0, c1 - c0
            local = [np.flatnonzero(sub[b]) for b in range(B)]
            for k in range(0, int(counts.max()), step):
                rows = [loc[k:k + step] for loc in local]
                kk = max(len(r) for r in rows)
                onehot = np.zeros((B, kk, C * h * w))
                for b, r in enumerate(rows):
                    onehot[b, np.arange(len(r)), r] = 1.0
                lam = bk.asarray(onehot.reshape(B, kk, C, h, w), dtype=eng.dtype)
                l_k, h_k = (np.asarray(bk.to_numpy(v), dtype=np.float64)
                            for v in eng.backward(name, lam, depth, window=(r0, r1, c0, c1)))
                for b, r in enumerate(rows):
                    ch, rem = np.divmod(r, h * w)
                    gidx = ch * H * W + (r0 + rem // w) * W + (c0 + rem % w)
                    lo[b, gidx] = np.maximum(lo[b, gidx], l_k[b, :len(r)])
                    hi[b, gidx] = np.minimum(hi[b, gidx], h_k[b, :len(r)])
    shape = (B, C, H, W)
    eng.tighten(name, bk.asarray(lo.reshape(shape), dtype=eng.dtype), bk.asarray(hi.reshape(shape), dtype=eng.dtype))
