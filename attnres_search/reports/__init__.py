"""Reports on finished studies: statistics over seeds, fits, and the paper's figures
beside ours, rendered as rich tables, CSV, JSON or Markdown, with optional PNG plots."""
