"""``onnxverify ops``: the ONNX op types the importer reads, from the op registry."""
from __future__ import annotations

import click

from ..ops import REGISTRY
from ..report.tables import format_table


def supported_ops() -> list:
    """``(domain, op_type, opsets, IR op)`` rows, one per registered converter version."""
    rows = []
    for c in REGISTRY.converters():
        until = c.until(REGISTRY)
        versions = f"{c.since}+" if until is None else f"{c.since}-{until - 1}"
        rows.append((c.domain or "ai.onnx", c.op_type, versions, c.rule.op))
    return rows


@click.command("ops")
@click.option("--markdown", is_flag=True, help="One line per op type, for the README.")
def ops_command(markdown):
    """List the ONNX op types onnxverify imports (on computed tensors), with opset versions.

    Any op on constants only is folded with onnx's reference evaluator and needs no entry."""
    rows = supported_ops()
    if markdown:
        by_type: dict = {}
        for domain, op, versions, _ in rows:
            by_type.setdefault((domain, op), []).append(versions)
        click.echo(", ".join(f"{'' if d == 'ai.onnx' else d + '::'}{op} ({'; '.join(v)})"
                             for (d, op), v in sorted(by_type.items(), key=lambda kv: (kv[0][0] != "ai.onnx", kv[0][1]))))
        return
    click.echo(format_table(["domain", "ONNX op", "opsets", "IR rule"], [list(r) for r in rows]))


COMMANDS = [ops_command]
