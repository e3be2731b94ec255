"""The playground: prompts answered side by side by the base model and checkpoints of runs on it.

The app validates a request and writes it (a Generation with its GenerationColumn rows); one resident job of kind
`playground` (worker/playground.py) keeps the model loaded, answers queued generations column by column and writes
their tokens (GenerationToken); the app streams those rows to the page and the API. Prompt sets keep prompts of a
run to be answered again by later checkpoints.
"""
