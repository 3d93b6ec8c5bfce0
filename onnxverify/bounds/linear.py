"""Linear bound propagation over the IR: forward maps (LBP) and backward passes (CROWN).

Shapes: ``B`` batch, ``n0`` flattened input size, ``K`` rows of a backward pass.

* Forward maps of a node: lower/upper linear functions of the input,
  ``(B, n0 + 1, *shape)`` — columns ``0..n0-1`` are coefficients of the flattened input,
  column ``n0`` is the constant (PAPER_NOTES.md §2, eq. 17–18).
* A backward pass from node ``s`` with coefficients ``Lam (B, K, *shape_s)`` pushes
  ``Lam`` through the graph in reverse topological order (adjoints of affine ops,
  bounding lines of activations) to the input, or stops after ``depth`` nonlinear nodes
  and substitutes the forward maps of the node reached (Relaxed-CROWN-v, eq. 16).
"""
from __future__ import annotations

import numpy as np

from ..input_sets import LpBall
from ..ir import Graph
from ..ops import rule_for
from ..relaxations import activation_lines

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
        self.maps: dict = {}  # name -> (Lmap, Umap), (B, n0 + 1, *shape)
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
        L, U = self.maps[name]
        shape = (self.B,) + tuple(self.g[name].shape)
        n0 = self.n0
        Lf, Uf = _flat(self.bk, L, 2), _flat(self.bk, U, 2)  # (B, n0+1, N)
        lo = self.concretize(self.bk.transpose(Lf[:, :n0], (0, 2, 1)), Lf[:, n0], upper=False)
        hi = self.concretize(self.bk.transpose(Uf[:, :n0], (0, 2, 1)), Uf[:, n0], upper=True)
        return self.bk.reshape(lo, shape), self.bk.reshape(hi, shape)

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
        bk, B, n0 = self.bk, self.B, self.n0
        eye = np.zeros((n0 + 1, n0))
        eye[np.arange(n0), np.arange(n0)] = 1.0
        m = bk.asarray(np.broadcast_to(eye.reshape((1, n0 + 1) + tuple(self.g.input_shape)),
                                       (B, n0 + 1) + tuple(self.g.input_shape)).copy(), dtype=self.dtype)
        self.maps[self.g.input.name] = (m, m)

    def forward_maps(self, name):
        """Forward linear bounds of node ``name`` from the maps of its inputs."""
        bk, node = self.bk, self.g[name]
        rule = rule_for(node.op)
        B, n1 = self.B, self.n0 + 1
        ins = [self.maps[i] for i in node.inputs]
        if rule.affine:
            # centre/radius form: W+ L + W- U = W mid - |W| rad (two ops instead of four)
            fold = lambda m: bk.reshape(m, (B * n1,) + tuple(m.shape[2:]))  # noqa: E731
            mids = [fold((L + U) / 2) for L, U in ins]
            rads = [fold((U - L) / 2) for L, U in ins]
            mid = bk.reshape(rule.apply(bk, node, *mids, bias=False), (B, n1) + tuple(node.shape))
            rad = bk.reshape(rule.apply_abs(bk, node, *rads), (B, n1) + tuple(node.shape))
            const = bk.reshape(self.offset(name), (1, 1) + tuple(node.shape))
            L, U = self._add_const(mid - rad, const), self._add_const(mid + rad, const)
        elif node.op in ELEMENTWISE:
            aL, bL, aU, bU = (v[:, None] for v in self.relax[name])
            (Li, Ui), = ins
            L = self._add_const(bk.pos(aL) * Li + bk.neg(aL) * Ui, bL)
            U = self._add_const(bk.pos(aU) * Ui + bk.neg(aU) * Li, bU)
        elif node.op == "MaxPool":
            select, decided, upper = self.relax[name]
            (Li, Ui), = ins
            fold = lambda m: bk.reshape(m, (B * n1,) + tuple(m.shape[2:]))  # noqa: E731
            L = bk.reshape(rule.gather(bk, node, fold(Li), select), (B, n1) + tuple(node.shape))
            Ug = bk.reshape(rule.gather(bk, node, fold(Ui), select), (B, n1) + tuple(node.shape))
            d = decided[:, None]
            U = self._add_const(Ug * d, (1 - decided[:, None]) * upper[:, None])
        else:
            raise KeyError(f"no forward linear rule for op {node.op}")
        self.maps[name] = (L, U)

    def _add_const(self, m, const):
        """Add ``const`` (broadcastable to ``(B, 1, *shape)``) to the constant column of ``m``."""
        bk, n0 = self.bk, self.n0
        return bk.concat([m[:, :n0], m[:, n0:] + const], axis=1)

    # ---- backward pass (CROWN) --------------------------------------------------------------------
    def backward(self, start: str, lam, depth: int | None = None, upper: bool = True):
        """Bounds of ``lam . node(start)``: lam ``(B, K, *shape)`` -> ``(lower, upper)`` ``(B, K)``
        (``upper`` None when not requested). ``depth``: stop after crossing this many
        nonlinear nodes and substitute forward maps (None: go to the input)."""
        bk, g = self.bk, self.g
        B, K = lam.shape[0], lam.shape[1]
        acc = {start: [lam, lam if upper else None]}
        dist = {start: 0}
        bias = [bk.zeros((B, K), dtype=self.dtype), bk.zeros((B, K), dtype=self.dtype) if upper else None]
        coef = [None, None]  # (B, K, n0) on the input
        order = [n for n in reversed(g.nodes) if n.name in self._ancestors(start)]
        for node in order:
            if node.name not in acc:
                continue
            AL, AU = acc.pop(node.name)
            d = dist[node.name]
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
                off = bk.reshape(self.offset(node.name), (1, 1, -1))
                outs = []
                for s, A in enumerate((AL, AU)):
                    if A is None:
                        outs.append([None] * len(node.inputs))
                        continue
                    bias[s] = bias[s] + bk.sum(_flat(bk, A, 2) * off, axis=2)
                    adj = rule.adjoint(bk, node, bk.reshape(A, (B * K,) + tuple(node.shape)), shapes)
                    outs.append([bk.reshape(a, (B, K) + tuple(sh)) for a, sh in zip(adj, shapes)])
                for i, name in enumerate(node.inputs):
                    self._accumulate(acc, dist, name, outs[0][i], outs[1][i], d)
                continue
            if node.name not in self.relax:
                self.relax_node(node.name)
            if node.op in ELEMENTWISE:
                aL, bL, aU, bU = (v[:, None] for v in self.relax[node.name])
                new = []
                for s, A in enumerate((AL, AU)):
                    if A is None:
                        new.append(None)
                        continue
                    lo_a, lo_b, hi_a, hi_b = (aL, bL, aU, bU) if s == 0 else (aU, bU, aL, bL)
                    Ap, An = bk.pos(A), bk.neg(A)
                    bias[s] = bias[s] + bk.sum(_flat(bk, Ap * lo_b + An * hi_b, 2), axis=2)
                    new.append(Ap * lo_a + An * hi_a)
                self._accumulate(acc, dist, node.inputs[0], new[0], new[1], d + 1)
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
                self._accumulate(acc, dist, node.inputs[0], new[0], new[1], d + 1)
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

    @staticmethod
    def _accumulate(acc, dist, name, AL, AU, d):
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
        bk, n0 = self.bk, self.n0
        Lm, Um = self.maps[name]
        Lf, Uf = _flat(bk, Lm, 2), _flat(bk, Um, 2)  # (B, n0+1, N)
        for s, A in enumerate((AL, AU)):
            if A is None:
                continue
            Af = _flat(bk, A, 2)
            Ap, An = bk.pos(Af), bk.neg(Af)
            first, second = (Lf, Uf) if s == 0 else (Uf, Lf)
            full = bk.einsum("bkn,bin->bki", Ap, first) + bk.einsum("bkn,bin->bki", An, second)
            self._add_coef(coef, s, full[:, :, :n0])
            bias[s] = bias[s] + full[:, :, n0]


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
