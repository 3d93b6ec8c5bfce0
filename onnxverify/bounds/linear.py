"""Linear bound propagation over the IR: forward maps (LBP) and backward passes (CROWN).

Shapes: ``B`` batch, ``n0`` flattened input size, ``K`` rows of a backward pass.

* Forward maps of a node: lower/upper linear functions of the input (PAPER_NOTES.md §2,
  eq. 17–18), stored as ``(Lk, Lc, Uk, Uc)``: coefficients ``(B, n0, *shape)`` of the
  flattened input and constants ``(B, *shape)``. While a map is exact (no activation
  crossed yet) ``Lk is Uk``, and affine ops apply it once.
* A backward pass from node ``s`` with coefficients ``Lam (B, K, *shape_s)`` pushes
  ``Lam`` through the graph in reverse topological order (adjoints of affine ops,
  bounding lines of activations) to the input, or stops after ``depth`` nonlinear nodes
  and substitutes the forward maps of the node reached (Relaxed-CROWN-v, eq. 16).
"""
from __future__ import annotations

import numpy as np

from ..specs.input_sets import LpBall
from ..ir import Graph
from ..ops import rule_for
from ..ops.lines import activation_lines

ELEMENTWISE = {"Relu", "LeakyRelu", "ParamRamp", "Sigmoid", "Tanh"}
NONLINEAR = ELEMENTWISE | {"MaxPool"}


def _flat(bk, a, lead: int):
    return bk.reshape(a, tuple(a.shape[:lead]) + (-1,))


class LinearEngine:
    """State of one bound computation: concrete bounds, forward maps and relaxations."""

    def __init__(self, graph: Graph, input_set, bk, dtype, strategy: str, ibp_env: dict):
        self.g, self.bk, self.dtype, self.strategy = graph, bk, dtype, strategy
        self.ibp = ibp_env
        self.bounds: dict = {}  # name -> (lower, upper), (B, *shape): the best known
        self.maps: dict = {}  # name -> (Lk, Lc, Uk, Uc)
        self.relax: dict = {}  # nonlinear node name -> its relaxation
        self.input_set = input_set
        xl, xu = input_set.box()
        self.xl = bk.asarray(np.asarray(xl).reshape(len(xl), -1), dtype=dtype)
        self.xu = bk.asarray(np.asarray(xu).reshape(len(xu), -1), dtype=dtype)
        self.B, self.n0 = self.xl.shape
        self.lp = isinstance(input_set, LpBall)
        if self.lp:
            self.x0 = bk.asarray(np.asarray(input_set.x0).reshape(self.B, -1), dtype=dtype)
        self._offsets: dict = {}
        self._consumers = graph.consumers()

    # ---- concretisation --------------------------------------------------------------------
    def concretize(self, A, c, upper: bool):
        """Bound of ``A x + c`` over the input set: A ``(B, K, n0)``, c ``(B, K)`` -> ``(B, K)``."""
        bk = self.bk
        if self.lp:
            q = self.input_set.q
            center = bk.einsum("bkn,bn->bk", A, self.x0)
            aa = bk.abs(A)
            norm = bk.amax(aa, axis=2) if q == np.inf else bk.sqrt(bk.sum(aa * aa, axis=2))
            rad = norm * self.input_set.eps
            return center + c + rad if upper else center + c - rad
        lo_x, hi_x = (self.xu, self.xl) if upper else (self.xl, self.xu)
        return bk.einsum("bkn,bn->bk", bk.pos(A), lo_x) + bk.einsum("bkn,bn->bk", bk.neg(A), hi_x) + c

    def concretize_maps(self, name):
        Lk, Lc, Uk, Uc = self.maps[name]
        bk, B = self.bk, self.B
        shape = (B,) + tuple(self.g[name].shape)
        t = lambda k: bk.transpose(bk.reshape(k, (B, self.n0, -1)), (0, 2, 1))  # noqa: E731  (B, N, n0)
        lo = self.concretize(t(Lk), bk.reshape(Lc, (B, -1)), upper=False)
        hi = self.concretize(t(Uk), bk.reshape(Uc, (B, -1)), upper=True)
        return bk.reshape(lo, shape), bk.reshape(hi, shape)

    def tighten(self, name, lo, hi):
        """Intersect new bounds with the best known ones for ``name``."""
        bk = self.bk
        old = self.bounds.get(name, self.ibp[name])
        self.bounds[name] = (bk.maximum(old[0], lo), bk.minimum(old[1], hi))

    def best(self, name):
        return self.bounds.get(name, self.ibp[name])

    # ---- relaxations -------------------------------------------------------------------------
    def relax_node(self, name):
        node = self.g[name]
        lo, hi = self.best(node.inputs[0])
        if node.op in ELEMENTWISE:
            self.relax[name] = activation_lines(self.bk, node, lo, hi, self.strategy)
        elif node.op == "MaxPool":
            self.relax[name] = rule_for("MaxPool").relax(self.bk, node, lo, hi)
        else:
            raise KeyError(f"no relaxation for op {node.op}")

    def offset(self, name):
        if name not in self._offsets:
            node = self.g[name]
            shapes = [self.g[i].shape for i in node.inputs]
            self._offsets[name] = rule_for(node.op).offset(self.bk, node, shapes, self.dtype)
        return self._offsets[name]

    # ---- forward maps (LBP) ----------------------------------------------------------------------
    def input_maps(self):
        bk, B, n0, shape = self.bk, self.B, self.n0, tuple(self.g.input_shape)
        eye = np.broadcast_to(np.eye(n0).reshape((1, n0) + shape), (B, n0) + shape)
        k = bk.asarray(np.ascontiguousarray(eye), dtype=self.dtype)
        c = bk.zeros((B,) + shape, dtype=self.dtype)
        self.maps[self.g.input.name] = (k, c, k, c)

    def forward_maps(self, name):
        """Forward linear bounds of node ``name`` from the maps of its inputs."""
        bk, node = self.bk, self.g[name]
        rule = rule_for(node.op)
        B, n0, shape = self.B, self.n0, tuple(node.shape)
        ins = [self.maps[i] for i in node.inputs]
        fold = lambda m: bk.reshape(m, (B * n0,) + tuple(m.shape[2:]))  # noqa: E731
        unfold = lambda m: bk.reshape(m, (B, n0) + shape)  # noqa: E731
        if rule.affine:
            # centre/radius form: W+ L + W- U = W mid - |W| rad (two ops instead of four)
            if all(Lk is Uk and Lc is Uc for Lk, Lc, Uk, Uc in ins):  # exact maps stay exact
                k = unfold(rule.apply(bk, node, *[fold(m[0]) for m in ins], bias=False))
                c = rule.apply(bk, node, *[m[1] for m in ins], bias=True)
                self.maps[name] = (k, c, k, c)
                return
            mid = unfold(rule.apply(bk, node, *[fold((Lk + Uk) / 2) for Lk, _, Uk, _ in ins], bias=False))
            rad = unfold(rule.apply_abs(bk, node, *[fold((Uk - Lk) / 2) for Lk, _, Uk, _ in ins]))
            cmid = rule.apply(bk, node, *[(Lc + Uc) / 2 for _, Lc, _, Uc in ins], bias=True)
            crad = rule.apply_abs(bk, node, *[(Uc - Lc) / 2 for _, Lc, _, Uc in ins])
            self.maps[name] = (mid - rad, cmid - crad, mid + rad, cmid + crad)
        elif node.op in ELEMENTWISE:
            # every bounding line has a slope >= 0 (relaxations.py), so lower maps scale lower maps
            aL, bL, aU, bU = self.relax[name]
            (Lk, Lc, Uk, Uc), = ins
            self.maps[name] = (aL[:, None] * Lk, aL * Lc + bL, aU[:, None] * Uk, aU * Uc + bU)
        elif node.op == "MaxPool":
            select, decided, upper = self.relax[name]
            (Lk, Lc, Uk, Uc), = ins
            gk = lambda m: unfold(rule.gather(bk, node, fold(m), select))  # noqa: E731
            gc = lambda m: rule.gather(bk, node, m, select)  # noqa: E731
            self.maps[name] = (gk(Lk), gc(Lc), gk(Uk) * decided[:, None], gc(Uc) * decided + (1 - decided) * upper)
        else:
            raise KeyError(f"no forward linear rule for op {node.op}")

    # ---- backward pass (CROWN) --------------------------------------------------------------------
    def backward(self, start: str, lam, depth: int | None = None, upper: bool = True, window=None):
        """Bounds of ``lam . node(start)``: lam ``(B, K, *shape)`` -> ``(lower, upper)`` ``(B, K)``
        (``upper`` None when not requested). ``depth``: stop after crossing this many
        nonlinear nodes and substitute forward maps (None: go to the input).

        ``window = (r0, r1, c0, c1)``: ``lam`` is ``(B, K, C, r1 - r0, c1 - c0)``, the only
        non-zero rows/cols of a ``(C, H, W)`` start node. Convolutions, elementwise ops and
        residual adds then work on the receptive field only (far less work for conv nets);
        any other op first pads the coefficients back to the full shape."""
        bk, g = self.bk, self.g
        B, K = lam.shape[0], lam.shape[1]
        acc = {start: [lam, lam if upper else None]}
        wins = {start: window} if window is not None else {}
        dist = {start: 0}
        bias = [bk.zeros((B, K), dtype=self.dtype), bk.zeros((B, K), dtype=self.dtype) if upper else None]
        coef = [None, None]  # (B, K, n0) on the input
        order = [n for n in reversed(g.nodes) if n.name in self._ancestors(start)]
        for node in order:
            if node.name not in acc:
                continue
            AL, AU = acc.pop(node.name)
            d = dist[node.name]
            win = wins.pop(node.name, None)
            if win is not None:
                cut = depth is not None and d >= depth and node.name != start and node.name in self.maps
                if node.op in WINDOWED and not cut:
                    self._windowed_step(node, AL, AU, win, acc, wins, dist, d, bias)
                    continue
                AL, AU = (None if A is None else _pad_window(bk, A, win, node.shape) for A in (AL, AU))
            if node.op == "Input":
                self._add_coef(coef, 0, _flat(bk, AL, 2))
                if upper:
                    self._add_coef(coef, 1, _flat(bk, AU, 2))
                continue
            if depth is not None and d >= depth and node.name != start and node.name in self.maps:
                self._substitute(node.name, AL, AU, coef, bias)
                continue
            rule = rule_for(node.op)
            if rule.affine:
                shapes = [g[i].shape for i in node.inputs]
                off = bk.reshape(self.offset(node.name), (-1,))
                outs = []
                for s, A in enumerate((AL, AU)):
                    if A is None:
                        outs.append([None] * len(node.inputs))
                        continue
                    bias[s] = bias[s] + bk.einsum("bkn,n->bk", _flat(bk, A, 2), off)
                    adj = rule.adjoint(bk, node, bk.reshape(A, (B * K,) + tuple(node.shape)), shapes)
                    outs.append([bk.reshape(a, (B, K) + tuple(sh)) for a, sh in zip(adj, shapes)])
                for i, name in enumerate(node.inputs):
                    self._accumulate(acc, dist, name, outs[0][i], outs[1][i], d, wins)
                continue
            if node.name not in self.relax:
                self.relax_node(node.name)
            if node.op in ELEMENTWISE:
                new = self._through_lines(node, AL, AU, bias, lambda v: v[:, None])
                self._accumulate(acc, dist, node.inputs[0], new[0], new[1], d + 1, wins)
            elif node.op == "MaxPool":
                select, decided, upper_c = self.relax[node.name]
                in_hw = tuple(g[node.inputs[0]].shape[1:])
                dec = decided[:, None]
                new = []
                for s, A in enumerate((AL, AU)):
                    if A is None:
                        new.append(None)
                        continue
                    lower_part, upper_part = (bk.pos(A), bk.neg(A)) if s == 0 else (bk.neg(A), bk.pos(A))
                    # lower line y >= x_j*, upper line y <= x_j* (decided) or max u (not decided)
                    through = lower_part + upper_part * dec
                    bias[s] = bias[s] + bk.sum(_flat(bk, upper_part * (1 - dec) * upper_c[:, None], 2), axis=2)
                    new.append(rule.scatter(bk, node, through, select, in_hw))
                self._accumulate(acc, dist, node.inputs[0], new[0], new[1], d + 1, wins)
            else:
                raise KeyError(f"no backward rule for op {node.op}")
        lo = self.concretize(coef[0], bias[0], upper=False) if coef[0] is not None else bias[0]
        hi = None
        if upper:
            hi = self.concretize(coef[1], bias[1], upper=True) if coef[1] is not None else bias[1]
        return lo, hi

    def _ancestors(self, start):
        cache = self.__dict__.setdefault("_anc", {})
        if start not in cache:
            seen, stack = set(), [start]
            while stack:
                n = stack.pop()
                if n not in seen:
                    seen.add(n)
                    stack.extend(self.g[n].inputs)
            cache[start] = seen
        return cache[start]

    def _through_lines(self, node, AL, AU, bias, view):
        """Backward through an elementwise activation's bounding lines: returns the new
        coefficients and adds the intercepts to ``bias``. ``view`` shapes a line array
        ``(B, *shape)`` like the coefficients (batch-broadcast, maybe cropped to a window)."""
        bk = self.bk
        aL, bL, aU, bU = (view(v) for v in self.relax[node.name])
        new = []
        for s, A in enumerate((AL, AU)):
            if A is None:
                new.append(None)
                continue
            lo_a, lo_b, hi_a, hi_b = (aL, bL, aU, bU) if s == 0 else (aU, bU, aL, bL)
            # pos(A) * lo + neg(A) * hi, for the intercepts (a sum) and the slopes
            Af = _flat(bk, A, 2)
            bias[s] = (bias[s] + bk.einsum("bkn,bn->bk", Af, _flat(bk, lo_b[:, 0], 1))
                       + bk.einsum("bkn,bn->bk", bk.neg(Af), _flat(bk, (hi_b - lo_b)[:, 0], 1)))
            new.append(bk.line_backward(A, lo_a, hi_a))
        return new

    def _windowed_step(self, node, AL, AU, win, acc, wins, dist, d, bias):
        """One backward step of a windowed pass (see :meth:`backward`)."""
        bk = self.bk
        r0, r1, c0, c1 = win
        if node.op in ELEMENTWISE:
            if node.name not in self.relax:
                self.relax_node(node.name)
            new = self._through_lines(node, AL, AU, bias, lambda v: v[:, None, :, r0:r1, c0:c1])
            self._accumulate(acc, dist, node.inputs[0], new[0], new[1], d + 1, wins, win)
            return
        off = bk.reshape(self.offset(node.name)[0, :, r0:r1, c0:c1], (-1,))
        for s, A in enumerate((AL, AU)):
            if A is not None:
                bias[s] = bias[s] + bk.einsum("bkn,n->bk", _flat(bk, A, 2), off)
        if node.op == "Conv":
            outs = [None if A is None else self._conv_window_adjoint(node, A, win) for A in (AL, AU)]
            new_win = next(o[1] for o in outs if o is not None)
            self._accumulate(acc, dist, node.inputs[0], outs[0][0], None if outs[1] is None else outs[1][0], d,
                             wins, new_win)
        elif node.op == "Affine":
            from ..ir import params_as

            scale = _crop_param(params_as(bk, node, "scale", AL.dtype), win)
            self._accumulate(acc, dist, node.inputs[0], AL * scale, None if AU is None else AU * scale, d, wins, win)
        else:  # Add / Sub of two computed tensors
            sign = -1.0 if node.op == "Sub" else 1.0
            self._accumulate(acc, dist, node.inputs[0], AL, AU, d, wins, win)
            self._accumulate(acc, dist, node.inputs[1], AL * sign, None if AU is None else AU * sign, d, wins, win)

    def _conv_window_adjoint(self, node, A, win):
        """Transpose of a Conv restricted to an output window -> (coefficients, input window)."""
        from ..ir import params_as

        bk, a = self.bk, node.attrs
        B, K = A.shape[:2]
        r0, r1, c0, c1 = win
        w = params_as(bk, node, "weight", A.dtype)
        (sh, sw), (dh, dw), (kh, kw) = a["stride"], a["dilation"], tuple(w.shape[2:])
        H, W = self.g[node.inputs[0]].shape[1:]
        base_h, base_w = (r1 - r0 - 1) * sh + dh * (kh - 1) + 1, (c1 - c0 - 1) * sw + dw * (kw - 1) + 1
        flat = bk.reshape(A, (B * K,) + tuple(A.shape[2:]))
        out = bk.conv_transpose2d(flat, w, a["stride"], (0, 0, 0, 0), a["dilation"], a["groups"], (base_h, base_w))
        off_r, off_c = r0 * sh - a["pads"][0], c0 * sw - a["pads"][1]
        lo_r, hi_r = max(0, off_r), min(H, off_r + base_h)
        lo_c, hi_c = max(0, off_c), min(W, off_c + base_w)
        out = out[:, :, lo_r - off_r:hi_r - off_r, lo_c - off_c:hi_c - off_c]
        return bk.reshape(out, (B, K) + tuple(out.shape[1:])), (lo_r, hi_r, lo_c, hi_c)

    def _accumulate(self, acc, dist, name, AL, AU, d, wins=None, win=None):
        if wins is not None and (win is not None or name in wins):
            old = wins.get(name) if name in acc else win
            if name in acc and old != win:  # different windows (or one dense): bring both to the union
                shape = self.g[name].shape
                both = [w for w in (old, win) if w is not None]
                union = None if (old is None and name in acc) or win is None else (
                    min(w[0] for w in both), max(w[1] for w in both), min(w[2] for w in both), max(w[3] for w in both))
                AL, AU = (None if A is None else _rewindow(self.bk, A, win, union, shape) for A in (AL, AU))
                cur = acc[name]
                acc[name] = [_rewindow(self.bk, cur[0], old, union, shape),
                             None if cur[1] is None else _rewindow(self.bk, cur[1], old, union, shape)]
                win = union
            if win is None:
                wins.pop(name, None)
            else:
                wins[name] = win
        self._accumulate_dense(acc, dist, name, AL, AU, d)

    @staticmethod
    def _accumulate_dense(acc, dist, name, AL, AU, d):
        if name in acc:
            cur = acc[name]
            acc[name] = [cur[0] + AL, None if AU is None else cur[1] + AU]
            dist[name] = max(dist[name], d)
        else:
            acc[name] = [AL, AU]
            dist[name] = d

    def _add_coef(self, coef, s, A):
        coef[s] = A if coef[s] is None else coef[s] + A

    def _substitute(self, name, AL, AU, coef, bias):
        """Replace ``node(name)`` by its forward maps (eq. 16)."""
        bk, B, n0 = self.bk, self.B, self.n0
        Lk, Lc, Uk, Uc = self.maps[name]
        k_flat = lambda k: bk.reshape(k, (B, n0, -1))  # noqa: E731
        c_flat = lambda c: bk.reshape(c, (B, -1))  # noqa: E731
        for s, A in enumerate((AL, AU)):
            if A is None:
                continue
            Af = _flat(bk, A, 2)
            Ap, An = bk.pos(Af), bk.neg(Af)
            (fk, fc), (sk, sc) = ((Lk, Lc), (Uk, Uc)) if s == 0 else ((Uk, Uc), (Lk, Lc))
            self._add_coef(coef, s, bk.einsum("bkn,bin->bki", Ap, k_flat(fk)) + bk.einsum("bkn,bin->bki", An, k_flat(sk)))
            bias[s] = bias[s] + bk.einsum("bkn,bn->bk", Ap, c_flat(fc)) + bk.einsum("bkn,bn->bk", An, c_flat(sc))


WINDOWED = ELEMENTWISE | {"Conv", "Affine", "Add", "Sub"}


def _crop_param(p, win):
    """Crop a parameter broadcastable to ``(C, H, W)`` to the window's rows/cols."""
    r0, r1, c0, c1 = win
    index = [slice(None)] * p.ndim
    if p.ndim >= 2 and p.shape[-2] > 1:
        index[-2] = slice(r0, r1)
    if p.ndim >= 1 and p.shape[-1] > 1:
        index[-1] = slice(c0, c1)
    return p[tuple(index)]


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


def bound_nodes(graph: Graph) -> list:
    """Names of nodes whose bounds a relaxation needs (inputs of nonlinear nodes), in order."""
    need = {n.inputs[0] for n in graph.nodes if n.op in NONLINEAR}
    return [n.name for n in graph.nodes if n.name in need]


def undecided_mask(bk, graph: Graph, name: str, lo, hi):
    """Neurons of bound node ``name`` whose activation is not linear on ``[lo, hi]``
    (bool ``(B, *shape)``): only those need backward passes."""
    mask = None
    for c in graph.consumers()[name]:
        if c.op in ("Relu", "LeakyRelu"):
            m = (lo < 0) & (hi > 0)
        elif c.op == "ParamRamp":
            from ..ir import params_as

            r = bk.clip_min(params_as(bk, c, "r", lo.dtype), 1e-4)
            m = ~((hi <= 0) | ((lo >= 0) & (hi <= r)) | (lo >= r))
        elif c.op in NONLINEAR:
            m = (lo < hi) | (lo >= hi)  # every neuron
        else:
            continue
        mask = m if mask is None else (mask | m)
    return mask
