"""`transferkit estimators`: list every estimator, what it needs and where it comes from.

The listing fits the terminal (100 columns when the width is unknown, e.g. in a pipe): the description
wraps under its own column instead of making 450-character lines.
"""

from __future__ import annotations

import shutil
import textwrap

import click

from ..estimators import estimator_info, list_estimators
from ._common import verbosity_options

EXAMPLES = """\b
Examples:
  transferkit estimators                      # name, what it needs, what it computes
  transferkit estimators --references         # also the paper / reference implementation
  transferkit estimators --width 160          # wider lines
"""


def _width(width: int | None) -> int:
    if width:
        return max(60, width)
    return max(60, shutil.get_terminal_size((100, 24)).columns)


def format_listing(rows: list[dict[str, str]], width: int, references: bool) -> str:
    """Fixed columns for name/needs/zoo-level, the description wrapped in the remaining width."""
    keys = ["name", "needs", "zoo"]
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    left = sum(widths.values()) + 2 * len(keys)
    what_w = max(20, width - left)
    header = "  ".join(k.ljust(widths[k]) for k in keys) + "  what"
    lines = [header, "  ".join("-" * widths[k] for k in keys) + "  " + "-" * min(what_w, 40)]
    for r in rows:
        wrapped = textwrap.wrap(r["what"], what_w) or [""]
        lines.append("  ".join(r[k].ljust(widths[k]) for k in keys) + "  " + wrapped[0])
        lines += [" " * left + w for w in wrapped[1:]]
        if references and r.get("reference"):
            lines += textwrap.wrap(r["reference"], width, initial_indent=" " * left + "ref: ",
                                   subsequent_indent=" " * (left + 5))
    return "\n".join(line.rstrip() for line in lines)


@click.command("estimators", epilog=EXAMPLES)
@click.option("--references/--no-references", default=False, show_default=True,
              help="Also show each method's paper and reference implementation.")
@click.option("--width", type=int, default=None,
              help="Line width (default: the terminal's, or 100 when it is unknown).")
@verbosity_options
def command(references: bool, width: int | None, quiet: bool, verbose: bool) -> None:
    """List the transferability estimators: name, what each needs, what it computes.

    needs: features only, or also source probabilities (the P key of a feature file); zoo: the published
    score is defined across the models of a zoo (ETran, NCTI).
    """
    rows = []
    for name in list_estimators():
        info = estimator_info(name)
        needs = "features" if info.needs_features else ""
        if info.needs_source_probs:
            needs = (needs + ", " if needs else "") + "source probs"
        rows.append({"name": name, "needs": needs, "zoo": "yes" if info.zoo_level else "",
                     "what": " ".join(info.summary.split()), "reference": " ".join(info.reference.split())})
    click.echo(format_listing(rows, _width(width), references or verbose))
    if not quiet:
        click.echo("\nUse them with: transferkit rank FEATURES --methods " + ",".join(list_estimators()[:3])
                   + "  (or --methods all)")
