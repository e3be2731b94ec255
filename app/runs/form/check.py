"""Checking a filled-in new-run form exactly as a submission is checked (the same messages as the API's 422):
errors by field, warnings, the iterations note; it creates nothing. The form's routes and the benchmarks use it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session

from app.catalog.hub import hub_model_problem
from app.contract.paths import data_roots
from app.contract.run_config import RunConfig
from app.contract.settings import Settings
from app.datasets.registry import dataset_problem
from app.runs.cluster.checks import distributed_problems
from app.runs.configs.warnings import ConfigWarning, config_warnings, gather_facts
from app.runs.form.fields import FormProblem, form_errors, form_to_payload, iterations_note
from app.runs.store.runs import resume_problem


@dataclass
class FormCheck:
    """What the server makes of a filled-in form: the config (when valid), errors, warnings, the iters note."""

    config: RunConfig | None = None
    errors: dict[str, str] = field(default_factory=dict)
    warnings: list[ConfigWarning] = field(default_factory=list)
    iterations_note: str = ""


def check_form(form: dict[str, str], session: Session, settings: Settings) -> FormCheck:
    """Validate a form exactly as a submission is (same messages as the API's 422); creates nothing."""
    check = FormCheck()
    try:
        payload = form_to_payload(form)
    except FormProblem as problem:
        check.errors[problem.key] = problem.message
        payload = form_to_payload({k: v for k, v in form.items() if k != problem.key})
    try:
        config = RunConfig.model_validate(payload).resolved(settings)
    except ValidationError as exc:
        check.errors.update(form_errors(exc))
        config = config_without_errors(payload, exc, settings)
        if config is None:
            return check
        warnings = config_warnings(config, gather_facts(config, settings))
        check.warnings = [w for w in warnings if w.field not in check.errors]
        return check
    data_problem = dataset_problem(Path(config.data), config.mask_prompt, config.model_dump(), session,
                                   data_roots(settings))
    for key, problem_text in (("model", hub_model_problem(config.model, settings)), ("data", data_problem),
                              ("resume_from.run_id", resume_problem(session, settings, config))):
        if problem_text:
            check.errors[key] = problem_text
    if not check.errors:  # ssh to the other hosts only for an otherwise valid form
        check.errors.update(distributed_problems(
            config, shared=[str(settings.database_path), str(settings.adapters_dir)]))
    facts = gather_facts(config, settings)
    check.warnings = config_warnings(config, facts)
    check.iterations_note = iterations_note(config, facts.data.train)
    if not check.errors:
        check.config = config
    return check


def config_without_errors(payload: dict[str, Any], exc: ValidationError, settings: Settings) -> RunConfig | None:
    """The config with its invalid keys left at their defaults: enough to warn about the rest."""
    bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
    try:
        return RunConfig.model_validate({k: v for k, v in payload.items() if k not in bad}).resolved(settings)
    except ValidationError:
        return None


def check_values(values: dict[str, Any], session: Session, settings: Settings) -> FormCheck:
    """check_form for a prefilled form (fresh, cloned, imported): what no longer holds shows at once."""
    form = {k: ("on" if v is True else str(v)) for k, v in values.items() if v is not False}
    return check_form(form, session, settings)
