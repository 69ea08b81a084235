"""Report (stages `report_figures` and `report_checks`): the figures and tables that
`snakemake --report` shows, the pathway graphs, each source's decisions and strongest edges, and
the checks as HTML tables (`figures`). May import the base and `replay.plan`; it reads results
and runs no model."""
