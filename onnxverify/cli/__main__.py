"""``python -m onnxverify.cli ...`` runs the ``onnxverify`` command line."""
from . import main

main(prog_name="onnxverify")
