"""``python -m reec_otel``: the ``reec-otel`` command."""

from reec_otel._cli import main

main(prog_name="reec-otel")
