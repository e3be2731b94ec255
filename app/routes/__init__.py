"""The routers: one package per resource (runs, checkpoints, evaluations, datasets, models, playground, serve, jobs),
each with its JSON routes (`api.py`, `<feature>_api.py`: `APIRouter(prefix="/api")`) beside its pages (`pages.py`,
`<feature>_pages.py`). No router imports another: what two share lives in params.py or the resource's domain package.
"""
