"""`transferkit estimators`: list every estimator, what it needs and where it comes from."""

from __future__ import annotations

import click

from ..estimators import estimator_info, list_estimators
from ..reporting import format_table


@click.command("estimators")
@click.option("--references/--no-references", default=True, help="Show the reference column.")
def command(references: bool) -> None:
    """List the transferability estimators."""
    rows = []
    for name in list_estimators():
        info = estimator_info(name)
        needs = "features" if info.needs_features else ""
        if info.needs_source_probs:
            needs = (needs + " + " if needs else "") + "source probs"
        row = {"name": name, "needs": needs, "zoo-level": "yes" if info.zoo_level else "",
               "what": info.summary}
        if references:
            row["reference"] = info.reference
        rows.append(row)
    click.echo(format_table(rows))
