"""`python -m transferkit ...`: the same command as the `transferkit` console script."""

from transferkit.cli import main

if __name__ == "__main__":  # pragma: no cover
    main(prog_name="transferkit")
