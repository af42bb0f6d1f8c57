"""The `transferkit` command: one entry point, one module per sub-command.

Sub-commands are imported lazily so that `transferkit estimators` does not pay for torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

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

    def invoke(self, ctx: click.Context) -> object:
        """Run the sub-command; a result file that cannot be written (disk full, read-only) is one line, and so
        is another torchrun rank's failure (that rank prints its own error)."""
        from ..reporting import OutputWriteError

        try:
            return super().invoke(ctx)
        except OutputWriteError as exc:
            raise click.ClickException(str(exc)) from exc
        except Exception as exc:
            peer_failed = getattr(sys.modules.get("transferkit.features.distributed"), "PeerFailedError", None)
            if peer_failed is not None and isinstance(exc, peer_failed):  # only a process group can raise it
                raise click.ClickException(str(exc)) from exc
            raise


EXAMPLES = """\b
Examples:
  transferkit rank --demo                      # rank a built-in demo zoo, no downloads
  transferkit extract -m resnet18,local-dir:weights/mobilenetv2_100.in1k -d my_data.zip --out feats/
  transferkit rank feats/*.npz --methods logme,leep,sfda --gt accuracies.csv
  transferkit COMMAND --help                   # options and examples of one command

\b
Short options mean the same in every command: -m --models, -d --data, -o --out, -c --config,
-b --batch-size, -q --quiet, -v --verbose; lists are comma-separated or repeated.
"""


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             invoke_without_command=True, epilog=EXAMPLES)
@click.version_option(package_name="transferkit")
@click.pass_context
def main(ctx: click.Context) -> None:
    """transferkit: rank pre-trained models for your data, and distill foundation models."""
    if ctx.invoked_subcommand is None:  # bare `transferkit`: the overview, exit 0
        click.echo(ctx.get_help())


if __name__ == "__main__":  # pragma: no cover
    main()
