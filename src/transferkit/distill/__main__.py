"""``python -m transferkit.distill ...`` = ``transferkit distill ...`` (what ``torchrun -m`` needs)::

    torchrun --nproc-per-node 2 -m transferkit.distill -c run.yaml
"""

from ..cli.distill_cmd import command

if __name__ == "__main__":  # pragma: no cover
    command(prog_name="transferkit distill")
