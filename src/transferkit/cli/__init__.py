"""The `transferkit` command: one entry point, one module per sub-command.

Sub-commands are imported lazily so that `transferkit estimators` does not pay for torch.
"""

from __future__ import annotations

import importlib

import click

# sub-command name -> module (inside transferkit.cli) that defines a click command `command`
SUBCOMMANDS: dict[str, str] = {
    "estimators": "estimators_cmd",
    "rank": "rank_cmd",
    "extract": "extract_cmd",
    "finetune": "finetune_cmd",
    "bench": "bench_cmd",
    "distill": "distill_cmd",
    "curate": "curate_cmd",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(
            name for name, mod in SUBCOMMANDS.items() if importlib.util.find_spec(f"{__name__}.{mod}")
        )

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        mod = SUBCOMMANDS.get(name)
        if mod is None:
            return None
        return importlib.import_module(f"{__name__}.{mod}").command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="transferkit")
def main() -> None:
    """transferkit: rank pre-trained models for your data, and distill foundation models."""


if __name__ == "__main__":  # pragma: no cover
    main()
