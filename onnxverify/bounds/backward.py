"""Backward passes (CROWN): bounds of ``lam . node(start)`` by pushing ``lam`` to the input.

A pass from node ``s`` with coefficients ``lam (B, K, *shape_s)`` visits the ancestors of
``s`` in reverse topological order; each node's rule maps the coefficients of its output to
those of its inputs (``backward_linear``) and adds its constant terms. The pass stops at the
input (concretised by the input set) or, with ``depth``, after crossing that many nonlinear
nodes, where it substitutes the forward maps of the node reached (Relaxed-CROWN-v, eq. 16).

Windowed passes: ``lam`` may cover only the rows/cols ``win = (r0, r1, c0, c1)`` of a
``(C, H, W)`` start node. Rules with ``windowed = True`` (convolutions, elementwise ops,
residual adds) then work on the receptive field only; any other rule first gets the
coefficients padded back to the full shape.

Patch passes: ``lam`` may be :class:`~onnxverify.ops.patches.Patches` (one window per row,
e.g. identity patches of a conv layer's neurons). Each rule's ``backward_patches`` maps them
on (a rule without a patch form goes dense by default); they become dense at a forward-map
cut, where two different kinds meet, and once a window covers its node. Patches that reach
the input are concretised window by window (``InputSet.concretize_patches``) unless a cut
already put dense coefficients there.
"""
from __future__ import annotations

from ..ops.base import each_side
from ..ops.generic import flat
from ..ops.patches import Patches
from ..ops.patches import add as add_patches


def backward(eng, start: str, lam, depth: int | None = None, upper: bool = True, window=None,
             relax: dict | None = None, extra: dict | None = None, capture: dict | None = None):
    """``(lower, upper)`` of ``lam . node(start)``, each ``(B, K)`` (``upper`` None when not
    requested); see the module docstring for ``depth`` and ``window``.

    ``relax``: ``{node name: relaxation}`` used instead of the engine's for this pass (e.g.
    optimised lines with one slope per row and neuron, ``(B, K, *shape)``). ``extra``:
    ``{node name: (cL, cU)}``, coefficients ``(B, K, *shape)`` (or None) added to the lower /
    upper pass when it reaches that node: the bound is then of ``lam . node(start) +
    sum c . node`` (Lagrangian terms of split constraints). ``capture``: a dict whose keys
    name nodes; the lower pass's coefficients on each of them (on its output, ``(B, K,
    *shape)``; None where they are patches or a window) are stored under its name, and the
    input coefficients ``(B, K, n0)`` (None if patches) and the constant ``(B, K)`` under
    ``"<input>"`` and ``"<bias>"`` (what the input set concretises)."""
    bk, g = eng.bk, eng.g
    B, K = (lam.data if isinstance(lam, Patches) else lam).shape[:2]
    pass_ = _Pass(eng)
    pass_.acc[start] = [lam, lam if upper else None]
    if window is not None:
        pass_.wins[start] = window
    pass_.dist[start] = 0
    for name, (cL, cU) in (extra or {}).items():  # extra terms start where their node is
        if name not in g.ancestors(start):
            raise ValueError(f"extra coefficients at {name}, which {start} does not depend on")
        zero = bk.zeros((B, K) + tuple(g[name].shape), dtype=eng.dtype)
        pass_.accumulate(name, zero if cL is None else cL, (zero if cU is None else cU) if upper else None, 0)
    bias = [bk.zeros((B, K), dtype=eng.dtype), bk.zeros((B, K), dtype=eng.dtype) if upper else None]
    coef = [None, None]  # (B, K, n0) on the input
    for node in eng.plan.order(start):
        if node.name not in pass_.acc:
            continue
        AL, AU = pass_.acc.pop(node.name)
        d = pass_.dist[node.name]
        win = pass_.wins.pop(node.name, None)
        if capture is not None and node.name in capture:
            capture[node.name] = None if isinstance(AL, Patches) or win is not None else AL
        cut = depth is not None and d >= depth and node.name != start and node.name in eng.maps
        if isinstance(AL, Patches) and cut:
            AL, AU = _dense_pair(bk, AL, AU)
        if node is g.input:
            if win is not None:
                AL, AU = (None if A is None else _pad_window(bk, A, win, node.shape) for A in (AL, AU))
            for s, A in enumerate((AL, AU)):
                _add_coef(bk, coef, s, A)
            continue
        rule = eng.plan.rules[node.name]
        if win is not None and (cut or not rule.windowed):
            AL, AU = (None if A is None else _pad_window(bk, A, win, node.shape) for A in (AL, AU))
            win = None
        if cut:
            _substitute(eng, node.name, AL, AU, coef, bias)
            continue
        step = eng.step(node) if not (relax and node.name in relax) else _Override(eng.step(node), relax[node.name])
        nd = d if rule.affine else d + 1
        if isinstance(AL, Patches):
            outs, biases = rule.backward_patches(bk, node, step, AL, AU)
            for name, (al, au) in zip(node.inputs, outs):
                pass_.accumulate(name, al, au, nd)
        elif win is not None:
            outs, biases = rule.backward_window(bk, node, step, AL, AU, win)
            for name, (al, au, w) in zip(node.inputs, outs):
                pass_.accumulate(name, al, au, nd, w)
        else:
            outs, biases = rule.backward_linear(bk, node, step, AL, AU)
            for name, (al, au) in zip(node.inputs, outs):
                pass_.accumulate(name, al, au, nd)
        for s in range(2):
            if biases[s] is not None and bias[s] is not None:
                bias[s] = bias[s] + biases[s]
    if capture is not None:
        capture["<input>"] = None if isinstance(coef[0], Patches) else coef[0]
        capture["<bias>"] = bias[0]
    if coef[0] is None and coef[1] is None:
        return bias[0], bias[1]
    (ends,), _ = each_side(coef[0], coef[1], lambda A, up: ([eng.concretize(A, bias[int(up)], up)], None))
    lo = ends[0] if coef[0] is not None else bias[0]
    return lo, ((ends[1] if coef[1] is not None else bias[1]) if upper else None)


def _add_coef(bk, coef, s, A):
    """Add input coefficients ``A`` (an array on the input, or Patches: kept as they are while
    nothing else reached the input, so the input set can use their windows) to ``coef[s]``."""
    if A is None:
        return
    if coef[s] is None:
        coef[s] = A if isinstance(A, Patches) else flat(bk, A, 2)
        return
    dense = [flat(bk, a.dense(bk) if isinstance(a, Patches) else a, 2) for a in (coef[s], A)]
    coef[s] = dense[0] + dense[1]


class _Override:
    """A step context whose relaxation is given for one pass."""

    def __init__(self, step, relax):
        self.in_shapes, self.relax, self._step = step.in_shapes, relax, step

    @property
    def offset(self):
        return self._step.offset


class _Pass:
    """Coefficients waiting at each node of one pass, their windows and crossing depths."""

    def __init__(self, eng):
        self.eng = eng
        self.acc: dict = {}
        self.wins: dict = {}
        self.dist: dict = {}

    def accumulate(self, name, AL, AU, d, win=None):
        bk, shape = self.eng.bk, self.eng.g[name].shape
        if isinstance(AL, Patches) or (name in self.acc and isinstance(self.acc[name][0], Patches)):
            if name in self.acc:
                AL, AU = _sum_pair(bk, self.acc[name], (AL, AU))
                d = max(self.dist[name], d)
            if isinstance(AL, Patches) and AL.covers_node():
                AL, AU = _dense_pair(bk, AL, AU)
            self.acc[name] = [AL, AU]
            self.dist[name] = d
            return
        if name in self.acc:
            old = self.wins.get(name)
            if old != win:  # different windows (or one dense): bring both to their union
                union = None if old is None or win is None else (
                    min(old[0], win[0]), max(old[1], win[1]), min(old[2], win[2]), max(old[3], win[3]))
                AL, AU = (None if A is None else _rewindow(bk, A, win, union, shape) for A in (AL, AU))
                cur = self.acc[name]
                self.acc[name] = [None if A is None else _rewindow(bk, A, old, union, shape) for A in cur]
                win = union
            cur = self.acc[name]
            self.acc[name] = [cur[0] + AL, None if AU is None else cur[1] + AU]
            self.dist[name] = max(self.dist[name], d)
        else:
            self.acc[name] = [AL, AU]
            self.dist[name] = d
        if win is None:
            self.wins.pop(name, None)
        else:
            self.wins[name] = win


def _dense_pair(bk, PL, PU):
    """Patches (or arrays) ``PL``/``PU`` as dense arrays, sharing one when ``PU is PL``."""
    AL = PL.dense(bk) if isinstance(PL, Patches) else PL
    if PU is None or PU is PL:
        return AL, (None if PU is None else AL)
    return AL, (PU.dense(bk) if isinstance(PU, Patches) else PU)


def _sum(bk, a, b):
    if isinstance(a, Patches) and isinstance(b, Patches):
        return add_patches(bk, a, b)
    return (a.dense(bk) if isinstance(a, Patches) else a) + (b.dense(bk) if isinstance(b, Patches) else b)


def _sum_pair(bk, cur, new):
    """``cur + new`` for (lower, upper) pairs of patches or arrays; an upper shared with its
    lower on both sides stays shared."""
    lo = _sum(bk, cur[0], new[0])
    if new[1] is None or cur[1] is None:
        return lo, None
    if cur[1] is cur[0] and new[1] is new[0]:
        return lo, lo
    return lo, _sum(bk, cur[1], new[1])


def _substitute(eng, name, AL, AU, coef, bias):
    """Replace ``node(name)`` by its forward maps (eq. 16)."""
    bk, B, n0 = eng.bk, eng.B, eng.n0
    m = eng.maps[name]
    k_flat = lambda k: bk.reshape(k, (B, n0, -1))  # noqa: E731
    c_flat = lambda c: bk.reshape(c, (B, -1))  # noqa: E731
    for s, A in enumerate((AL, AU)):
        if A is None:
            continue
        Af = flat(bk, A, 2)
        Ap, An = bk.pos(Af), bk.neg(Af)
        (fk, fc), (sk, sc) = ((m.Lk, m.Lc), (m.Uk, m.Uc)) if s == 0 else ((m.Uk, m.Uc), (m.Lk, m.Lc))
        term = bk.einsum("bkn,bin->bki", Ap, k_flat(fk)) + bk.einsum("bkn,bin->bki", An, k_flat(sk))
        _add_coef(bk, coef, s, term)
        bias[s] = bias[s] + bk.einsum("bkn,bn->bk", Ap, c_flat(fc)) + bk.einsum("bkn,bn->bk", An, c_flat(sc))


def _pad_window(bk, A, win, shape):
    """``(B, K, C, h, w)`` coefficients of a window -> the full ``(B, K, C, H, W)``."""
    r0, r1, c0, c1 = win
    H, W = shape[1:]
    return bk.pad(A, [(0, 0), (0, 0), (0, 0), (r0, H - r1), (c0, W - c1)])


def _rewindow(bk, A, win, new, shape):
    """Coefficients on window ``win`` (None: full) re-expressed on window ``new`` (None: full)."""
    full = A if win is None else _pad_window(bk, A, win, shape)
    if new is None:
        return full
    return full[:, :, :, new[0]:new[1], new[2]:new[3]]
