"""The run report: its facts, its Markdown and HTML renderings, its chart, and the metrics export."""
