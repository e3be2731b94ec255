"""Runs in the database: reading and creating them, the list and its housekeeping, the queue, the summary figures,
the checkpoints."""
