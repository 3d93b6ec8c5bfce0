"""VNN-LIB property parser.

A VNN-LIB file describes the *unsafe* set of a network ``y = f(x)``: it declares
``X_0..X_{n-1}`` (inputs, flattened) and ``Y_0..Y_{m-1}`` (outputs, flattened) and
asserts linear constraints over them (all asserts are ANDed).  We compile the whole
property into disjunctive normal form over :class:`Case` objects::

    unsafe(x, y)  <=>  OR_cases [ x in [x_lower, x_upper]  AND  OR_(A, b) (A @ y <= b) ]

Supported: ``declare-const``; ``assert``; ``and`` / ``or`` nested freely; comparisons
``<= >= < > =`` (strict treated as non-strict, chains like ``(<= a b c)`` allowed) over
linear terms built from variables, numbers, ``+ - * /`` (``*`` / ``/`` with constants).
Input atoms must bound a single ``X_i``; output atoms may mix any ``Y_j``.

The parsed property is :class:`.property.Property` (re-exported here).

Speed: one regex tokenises the whole text, an explicit stack builds the nested lists,
formulas are evaluated iteratively (no recursion limit), and all output rows are
assembled into one numpy matrix at the end.  Line numbers are only computed on errors.
"""
from __future__ import annotations

import gc
import gzip
import itertools
import math
import os
import re
from pathlib import Path

import numpy as np

from ..errors import VnnlibError
from .property import Case, Property, is_violated

__all__ = ["VnnlibError", "Case", "Property", "parse_vnnlib", "parse_vnnlib_string",
           "is_violated", "MAX_DISJUNCTS"]

MAX_DISJUNCTS = 100_000          # cap on DNF expansion
_TOKEN_RE = re.compile(r";[^\n]*|[()]|[^\s();]+")
_VAR_RE = re.compile(r"([XY])_(\d+)$")
_CMP = {"<=": False, "<": False, ">=": True, ">": True}   # value: swap sides
_OPS = {"<=", "<", ">=", ">", "=", "+", "-", "*", "/", "and", "or"}
_IGNORED = {"set-logic", "set-info", "set-option", "check-sat", "get-model", "exit"}



class _Err(Exception):
    """Internal semantic error; `tok` (consecutive tokens) is located in its form later."""

    def __init__(self, msg, *tok):
        super().__init__(msg)
        self.msg, self.tok = msg, tok


class _Dnf:
    """Formula value: AND(common) AND OR(disj); atoms are ints, each disjunct a tuple.

    Atom ids >= 0 index input bounds, ids < 0 are ``~row`` of output rows.  A lone
    atom is passed around as a bare int.
    """
    __slots__ = ("common", "disj")

    def __init__(self, common, disj):
        self.common, self.disj = common, disj


def _conjoin(common, disj, child):
    """AND formula value `child` into ``common`` (extended in place); returns new disj."""
    if type(child) is int:
        common.append(child)
        return disj
    common.extend(child.common)
    if len(child.disj) == 1:
        common.extend(child.disj[0])
        return disj
    if len(disj) * len(child.disj) > MAX_DISJUNCTS:
        raise _Err(f"DNF expansion exceeds {MAX_DISJUNCTS} disjuncts "
                   f"({len(disj)} x {len(child.disj)})", "or")
    return [a + b for a in disj for b in child.disj]


class _Parser:
    def __init__(self, text, path):
        self.text, self.path = text, path
        self.tokens = _TOKEN_RE.findall(text)
        self.vars = {}                                         # name -> i (X_i) / ~j (Y_j)
        self.xb_var, self.xb_up, self.xb_val = [], [], []      # input-bound atoms
        self.yr_row, self.yr_col, self.yr_val, self.yr_b = [], [], [], []  # output rows

    # ------------------------------------------------------------------ errors, syntax
    def _fail(self, msg, tok_index=None):
        where = self.path or "<string>"
        if tok_index is None:
            raise VnnlibError(f"{where}: {msg}")
        m = next(itertools.islice(_TOKEN_RE.finditer(self.text), tok_index, None))
        line = self.text.count("\n", 0, m.start()) + 1
        raise VnnlibError(f"{where}:{line}: {msg} (token {m.group()!r})")

    def _spans(self):
        """Token ranges [start, end) of the top-level forms; raises on bad structure."""
        depth, start, spans = 0, 0, []
        for i, t in enumerate(self.tokens):
            if t == "(":
                start = i if depth == 0 else start
                depth += 1
            elif t == ")":
                if depth == 0:
                    self._fail("unbalanced ')'", i)
                depth -= 1
                if depth == 0:
                    spans.append((start, i + 1))
            elif depth == 0 and t[0] != ";":
                self._fail("token outside of any (...) form", i)
        if depth:
            self._fail(f"unbalanced '(': {depth} not closed at end of file", start)
        return spans

    def _forms(self):
        """Nested lists of token strings, one per top-level form (explicit stack)."""
        stack, top = [], []
        cur = top
        try:
            for t in self.tokens:
                if t == "(":
                    stack.append(cur)
                    new = []
                    cur.append(new)
                    cur = new
                elif t == ")":
                    cur = stack.pop()
                elif t[0] != ";":
                    cur.append(t)
        except IndexError:
            stack = None
        if stack or stack is None or any(type(f) is not list for f in top):
            self._spans()                                      # raises with the location
        return top

    def _locate(self, seq, start, end):
        """Token index of the first occurrence of token sequence `seq` in [start, end)."""
        seq = list(seq)
        for i in range(start, end):
            if self.tokens[i:i + len(seq)] == seq:
                return i
        return start

    # ------------------------------------------------------------------ terms, atoms
    def _leaf(self, tok):
        """Term for a variable or number token: ({key: coef}, const)."""
        key = self.vars.get(tok)
        if key is not None:
            return {key: 1.0}, 0.0
        try:
            v = float(tok)
        except ValueError:
            if _VAR_RE.match(tok):
                raise _Err(f"undeclared variable {tok}", tok) from None
            raise _Err("expected a number or a declared variable", tok) from None
        if not math.isfinite(v):
            raise _Err("expected a finite number", tok)
        return {}, v

    def _x_bound(self, key, upper, value):
        self.xb_var.append(key)
        self.xb_up.append(upper)
        self.xb_val.append(value)
        return len(self.xb_var) - 1

    def _y_row(self, coefs, d):
        """Record output row ``sum_k coefs[k] * Y_~k <= d``; returns its atom id."""
        row = len(self.yr_b)
        for k, c in coefs.items():
            if c != 0.0:
                self.yr_row.append(row)
                self.yr_col.append(~k)
                self.yr_val.append(c)
        self.yr_b.append(d)
        return ~row

    def _atom(self, lhs, rhs, tok):
        """Record ``lhs <= rhs`` for linear terms; returns its atom id."""
        coefs = dict(lhs[0])
        for k, c in rhs[0].items():
            coefs[k] = coefs.get(k, 0.0) - c
        d = rhs[1] - lhs[1]
        xs = [k for k, c in coefs.items() if k >= 0 and c != 0.0]
        if not xs:
            return self._y_row(coefs, d)
        if len(xs) > 1 or any(c != 0.0 for k, c in coefs.items() if k < 0):
            names = ", ".join(f"X_{k}" if k >= 0 else f"Y_{~k}" for k, c in coefs.items() if c)
            raise _Err(f"unsupported input constraint over {names}: only bounds on a "
                       "single X_i are allowed (no X-X or X-Y atoms)", tok)
        a = coefs[xs[0]]
        return self._x_bound(xs[0], a > 0, d / a)

    def _simple(self, op, a, b):
        """Fast path for ``(op leaf leaf)``, the overwhelmingly common atom."""
        if _CMP[op]:
            a, b = b, a                                        # now: a <= b
        ka, kb = self.vars.get(a), self.vars.get(b)
        if ka is not None and kb is None:                      # var <= number
            key, num = ka, self._leaf(b)[1]
            return self._x_bound(key, True, num) if key >= 0 else self._y_row({key: 1.0}, num)
        if kb is not None and ka is None:                      # number <= var
            key, num = kb, self._leaf(a)[1]
            return self._x_bound(key, False, num) if key >= 0 else self._y_row({key: -1.0}, -num)
        if ka is not None and ka < 0 and kb < 0 and ka != kb:  # Y_i <= Y_j
            return self._y_row({ka: 1.0, kb: -1.0}, 0.0)
        return self._atom(self._leaf(a), self._leaf(b), op)

    def _compare(self, op, terms):
        if len(terms) < 2 or any(type(t) is not tuple for t in terms):
            raise _Err(f"'{op}' needs two or more linear-term arguments", op)
        ids = []
        for lhs, rhs in zip(terms, terms[1:]):
            if op == "=" or not _CMP[op]:
                ids.append(self._atom(lhs, rhs, op))
            if op == "=" or _CMP[op]:
                ids.append(self._atom(rhs, lhs, op))
        return ids[0] if len(ids) == 1 else _Dnf(ids, [()])

    @staticmethod
    def _arith(op, args):
        """Linear arithmetic on terms; ``*`` and ``/`` need constant factors/divisors."""
        if not args or any(type(t) is not tuple for t in args):
            raise _Err(f"'{op}' needs linear-term arguments", op)
        if op in "+-":
            if op == "-" and len(args) == 1:
                args = [({}, 0.0)] + args
            coefs, const = dict(args[0][0]), args[0][1]
            sign = 1.0 if op == "+" else -1.0
            for cf, c0 in args[1:]:
                for k, c in cf.items():
                    coefs[k] = coefs.get(k, 0.0) + sign * c
                const += sign * c0
            return coefs, const
        if op == "/":
            if any(cf or c0 == 0.0 for cf, c0 in args[1:]):
                raise _Err("'/' needs nonzero constant divisors", op)
            scale, term = math.prod(1.0 / c0 for _, c0 in args[1:]), args[0]
        else:
            var_terms = [t for t in args if t[0]]
            if len(var_terms) > 1:
                raise _Err("nonlinear product of variables", op)
            scale = math.prod(c0 for cf, c0 in args if not cf)
            term = var_terms[0] if var_terms else ({}, 1.0)
        return {k: c * scale for k, c in term[0].items()}, term[1] * scale

    def _apply(self, op, vals):
        if op in ("+", "-", "*", "/"):
            return self._arith(op, vals)
        if op != "and" and op != "or":
            return self._compare(op, vals)
        if not vals or any(type(v) is tuple for v in vals):
            raise _Err(f"'{op}' needs formula arguments", op)
        if len(vals) == 1:
            return vals[0]
        if op == "and":
            common, disj = [], [()]
            for v in vals:
                disj = _conjoin(common, disj, v)
            return _Dnf(common, disj)
        disj = []
        for v in vals:
            if type(v) is int:
                disj.append((v,))
            else:
                c = tuple(v.common)
                disj.extend([c + d for d in v.disj] if c else v.disj)
            if len(disj) > MAX_DISJUNCTS:
                raise _Err(f"DNF expansion exceeds {MAX_DISJUNCTS} disjuncts", op)
        return _Dnf([], disj)

    def _check_head(self, node):
        if not node:
            raise _Err("empty expression '()'", "(", ")")
        if type(node[0]) is not str:
            raise _Err("expected an operator after '('", "(", "(")
        if node[0] not in _OPS:
            raise _Err("unknown operator", node[0])

    def _eval(self, node):
        """Value of an expression: atom id (int), _Dnf, or term tuple.  Iterative."""
        if type(node) is str:
            return self._leaf(node)
        self._check_head(node)
        if node[0] in _CMP and len(node) == 3 and type(node[1]) is str and type(node[2]) is str:
            return self._simple(node[0], node[1], node[2])
        stack = [[node, 1, []]]                                # [node, next child, values]
        while True:
            frame = stack[-1]
            nd, i, vals = frame
            if i < len(nd):
                frame[1] = i + 1
                ch = nd[i]
                if type(ch) is str:
                    vals.append(self._leaf(ch))
                    continue
                self._check_head(ch)
                if ch[0] in _CMP and len(ch) == 3 and type(ch[1]) is str \
                        and type(ch[2]) is str:
                    vals.append(self._simple(ch[0], ch[1], ch[2]))
                else:
                    stack.append([ch, 1, []])
                continue
            stack.pop()
            value = self._apply(nd[0], vals)
            if not stack:
                return value
            stack[-1][2].append(value)

    # ------------------------------------------------------------------ driver
    def parse(self):
        common, disj, n_asserts = [], [()], 0
        for k, form in enumerate(self._forms()):
            try:
                if not form or type(form[0]) is not str:
                    raise _Err("expected a command after '('", "(")
                if form[0] == "assert":
                    if len(form) != 2:
                        raise _Err("'assert' takes exactly one formula", "assert")
                    value = self._eval(form[1])
                    if type(value) is tuple:
                        raise _Err("assert needs a formula, not a term", "assert")
                    disj = _conjoin(common, disj, value)
                    n_asserts += 1
                elif form[0] in ("declare-const", "declare-fun"):
                    self._declare(form)
                elif form[0] not in _IGNORED:
                    raise _Err("unknown command", form[0])
            except _Err as e:
                start, end = self._spans()[k]
                self._fail(e.msg, self._locate(e.tok, start, end))
        if not n_asserts:
            self._fail("no assert statements (empty property file?)")
        return self._finalize(common, disj)

    def _declare(self, form):
        name = form[1] if len(form) > 1 else None
        if type(name) is not str or form[-1] != "Real" or \
                (form[0] == "declare-const" and len(form) != 3):
            raise _Err("expected (declare-const NAME Real)", form[0])
        m = _VAR_RE.match(name)
        if m is None:
            raise _Err("unsupported variable name (expected X_<i> or Y_<j>)", name)
        if name in self.vars:
            raise _Err("variable declared twice", name)
        self.vars[name] = int(m.group(2)) if m.group(1) == "X" else ~int(m.group(2))

    def _finalize(self, common, disj):
        """Group disjuncts by input box and assemble the output matrices with numpy."""
        xs = sorted(k for k in self.vars.values() if k >= 0)
        ys = sorted(~k for k in self.vars.values() if k < 0)
        for kind, idx in (("X", xs), ("Y", ys)):
            if idx != list(range(len(idx))):
                missing = min(set(range(len(idx) + 1)) - set(idx))
                self._fail(f"{kind} variables must be numbered from 0 without gaps: "
                           f"{kind}_{missing} is not declared")
        n_in, n_out = len(xs), len(ys)
        var = np.asarray(self.xb_var, dtype=np.int64)
        up = np.asarray(self.xb_up, dtype=bool)
        val = np.asarray(self.xb_val, dtype=np.float64)
        cx = np.asarray([a for a in common if a >= 0], dtype=np.int64)
        lo0, hi0 = np.full(n_in, -np.inf), np.full(n_in, np.inf)     # box shared by all
        np.minimum.at(hi0, var[cx[up[cx]]], val[cx[up[cx]]])
        np.maximum.at(lo0, var[cx[~up[cx]]], val[cx[~up[cx]]])
        common_y = [~a for a in common if a < 0]
        rows = np.zeros((len(self.yr_b), n_out))                     # (n_rows, n_out)
        np.add.at(rows, (np.asarray(self.yr_row, dtype=np.int64),
                         np.asarray(self.yr_col, dtype=np.int64)), self.yr_val)
        rhs = np.asarray(self.yr_b, dtype=np.float64)                # (n_rows,)
        lo_l, hi_l = lo0.tolist(), hi0.tolist()
        groups = {}                          # box overrides -> list of row-index lists
        for d in disj:
            over = {}
            for a in d:
                if a >= 0:
                    v = self.xb_var[a]
                    lo, hi = over.get(v, (lo_l[v], hi_l[v]))
                    if self.xb_up[a]:
                        over[v] = (lo, min(hi, self.xb_val[a]))
                    else:
                        over[v] = (max(lo, self.xb_val[a]), hi)
            key = tuple(sorted((v, b) for v, b in over.items() if b != (lo_l[v], hi_l[v])))
            groups.setdefault(key, []).append(common_y + [~a for a in d if a < 0])
        cases = []
        for key, row_lists in groups.items():
            lo, hi = lo0.copy(), hi0.copy()
            for v, (a, b) in key:
                lo[v], hi[v] = a, b
            for arr, what in ((lo, "lower"), (hi, "upper")):
                bad = np.flatnonzero(~np.isfinite(arr))
                if len(bad):
                    self._fail(f"input X_{bad[0]} has no {what} bound"
                               + (" in one of the disjuncts" if len(groups) > 1 else ""))
            if np.any(lo > hi):
                continue                                  # empty box: can never hold
            idx = [np.asarray(r, dtype=np.int64) for r in row_lists]
            cases.append(Case(lo, hi, [(rows[r], rhs[r]) for r in idx]))
        return Property(n_in, n_out, cases, self.path)


def _decode(data: bytes) -> str:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8-sig", errors="replace")


def parse_vnnlib_string(text: str, n_inputs: int | None = None,
                        n_outputs: int | None = None, path: str | None = None) -> Property:
    """Parse VNN-LIB source text; check the declared sizes against any given ones."""
    was_enabled = gc.isenabled()
    gc.disable()            # the parse allocates many small lists; cyclic GC only slows it
    try:
        prop = _Parser(text, path).parse()
    finally:
        if was_enabled:
            gc.enable()
    prop.check_sizes(n_inputs, n_outputs)
    return prop


def parse_vnnlib(path_or_text, n_inputs: int | None = None,
                 n_outputs: int | None = None) -> Property:
    """Parse a VNN-LIB file (plain or gzipped: detected by magic bytes) or its text.

    A ``str`` that contains '(' and is not an existing file name is taken as source
    text; ``bytes`` are taken as (possibly gzipped) file contents.
    """
    if isinstance(path_or_text, (bytes, bytearray)):
        return parse_vnnlib_string(_decode(bytes(path_or_text)), n_inputs, n_outputs)
    if isinstance(path_or_text, str) and "(" in path_or_text and (
            "\n" in path_or_text or not os.path.exists(path_or_text)):
        return parse_vnnlib_string(path_or_text, n_inputs, n_outputs)
    text = _decode(Path(path_or_text).read_bytes())
    return parse_vnnlib_string(text, n_inputs, n_outputs, path=str(path_or_text))
