"""What the web app and the worker processes share: the run config, each job kind's declaration and parameters,
the run statuses, the settings and the pure rules both sides apply.

The worker imports nothing of `app` but this package, and this package imports neither fastapi, starlette,
sqlmodel, jinja2 nor the supervisor (tests/test_import_graph.py walks the source to check it)."""
