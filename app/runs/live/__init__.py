"""A run seen while it trains: its event stream, and curves downsampled to what a chart draws."""
