"""Run configs as `mlx_lm lora -c` YAML: export a run's config, read one back (with line numbers in errors).

An exported file trains as is with `python -m mlx_lm lora -c <file>`: every mlx_lm key at the top,
loraboard's own keys under a `loraboard:` mapping (mlx_lm carries unknown keys along and ignores them),
so importing it restores them too.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from app.contract.run_config import FEATURE_KEYS, LORABOARD_KEYS, RunConfig

# The mlx_lm keys RunConfig holds, in the order an exported file lists them.
MLX_KEYS: tuple[str, ...] = (
    "model", "data", "fine_tune_type", "optimizer", "optimizer_config", "num_layers", "batch_size", "iters",
    "learning_rate", "lr_schedule", "lora_parameters", "max_seq_length", "grad_checkpoint",
    "grad_accumulation_steps", "clear_cache_threshold", "mask_prompt", "steps_per_report", "steps_per_eval",
    "save_every", "val_batches", "test", "test_batches", "seed", "trust_remote_code", "prompt_feature",
    "completion_feature", "chat_feature", "text_feature",
)
MAX_YAML_DEPTH = 20  # mappings and lists inside one another; a run config has at most four or five
MAX_YAML_NODES = 10_000  # keys, values and list items; a run config has about a hundred
MAX_PROBLEMS = 50  # listed one by one; past these, one line counts the rest
OPTIONAL_MLX_KEYS = {"lr_schedule", *FEATURE_KEYS}
# mlx_lm keys that loraboard decides itself: accepted in a file and reported as ignored.
# What an exported file (export_yaml) sets of them for mlx_lm alone: read back, ignoring them needs no word.
AS_EXPORTED: dict[str, Any] = {"train": True, "adapter_path": "adapters"}
IGNORED_KEYS: dict[str, str] = {
    "train": "loraboard sets this (a run always trains)",
    "adapter_path": "loraboard sets this (each run has its own adapters folder)",
    "resume_adapter_file": "loraboard sets this (continue a run from one of its checkpoints instead)",
    "report_to": "loraboard sets this (runs report to this dashboard)",
    "project_name": "loraboard sets this (runs report to this dashboard)",
    "config": "loraboard sets this (the file being read is the config)",
}
UNSUPPORTED_KEYS: dict[str, str] = {
    "hf_dataset": "hf_dataset is not supported: point data at a local folder with train.jsonl and valid.jsonl",
}

# mlx_lm reads 1e-5 (no dot) as a float too; so does this loader (as a subclass, leaving PyYAML's own alone).
_MLX_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class ConfigLoader(yaml.SafeLoader):
    """mlx_lm's YAML reading, plus an error for a key given twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"found the key {key!r} twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0  # of the node being composed
        self.nodes = 0  # composed so far

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        """One node, refusing aliases (their expansion is unbounded: a few hundred bytes can stand for billions of
        values), nesting deeper than MAX_YAML_DEPTH and more than MAX_YAML_NODES nodes, before any is built."""
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            raise YamlConfigError([_at(event.start_mark, f"YAML aliases (*{event.anchor}) are not accepted in a "
                                       "run config: write the value out in full")])
        if self.depth >= MAX_YAML_DEPTH:
            raise YamlConfigError([_at(event.start_mark, f"the YAML is nested too deeply (more than "
                                       f"{MAX_YAML_DEPTH} levels); a run config needs a few")])
        self.nodes += 1
        if self.nodes > MAX_YAML_NODES:
            raise YamlConfigError([_at(event.start_mark, f"the YAML has too many values (more than "
                                       f"{MAX_YAML_NODES:,} keys, values and list items) for a run config")])
        self.depth += 1
        try:
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self.depth -= 1


ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _MLX_FLOAT, list("-+0123456789."))


@dataclass(frozen=True)
class YamlProblem:
    key: str  # dotted path in the file ("" for the whole file)
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", column {self.column}" if self.column else "") if self.line else ""
        head = ": ".join(part for part in (where, self.key) if part)
        return f"{head}: {self.message}" if head else self.message

    def as_json(self) -> dict[str, Any]:
        return {"loc": self.key.split(".") if self.key else [], "line": self.line, "column": self.column,
                "msg": self.message}


class YamlConfigError(ValueError):
    def __init__(self, problems: list[YamlProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


def _at(mark: yaml.Mark, message: str) -> YamlProblem:
    """A problem of the whole file at a parser mark (0-based) as a 1-based line and column."""
    return YamlProblem("", message, mark.line + 1, mark.column + 1)


@dataclass(frozen=True)
class IgnoredKey:
    key: str
    reason: str


@dataclass(frozen=True)
class ParsedConfig:
    config: RunConfig
    ignored: list[IgnoredKey]
    keys: list[str]  # the RunConfig keys the file set


def _key_lines(node: yaml.Node, prefix: str, lines: dict[str, tuple[int, int]]) -> None:
    """Line and column (1-based) of every mapping key, by dotted path."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = f"{prefix}{key_node.value}"
            lines[path] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _key_lines(value_node, path + ".", lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[f"{prefix}{index}"] = (item.start_mark.line + 1, item.start_mark.column + 1)
            _key_lines(item, f"{prefix}{index}.", lines)


def load_yaml(text: str) -> tuple[Any, dict[str, tuple[int, int]]]:
    """The document and its key positions; a YamlConfigError with the parser's line and column otherwise."""
    loader = ConfigLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[str, tuple[int, int]] = {}
        if node is not None:
            _key_lines(node, "", lines)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(part for part in (exc.context, exc.problem) if part) or "not valid YAML"
        raise YamlConfigError([YamlProblem("", f"not valid YAML: {message}", mark.line + 1 if mark else None,
                                           mark.column + 1 if mark else None)]) from None
    except yaml.YAMLError as exc:
        raise YamlConfigError([YamlProblem("", f"not valid YAML: {exc}")]) from None
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]
    return data, lines


def _unknown(key: str, known: tuple[str, ...], where: str) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown key: not {where}{hint}"


def _problem(path: str, message: str, lines: dict[str, tuple[int, int]]) -> YamlProblem:
    parts = path.split(".")
    for size in range(len(parts), 0, -1):  # the nearest key the file has
        found = lines.get(".".join(parts[:size]))
        if found:
            return YamlProblem(path, message, *found)
    return YamlProblem(path, message)


def _yaml_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in LORABOARD_KEYS:
        parts.insert(0, "loraboard")
    return ".".join(parts)


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden" and tuple(err["loc"]) == ("lora_parameters", "alpha"):
        return "unknown key: mlx-lm's LoRA takes scale (the update's multiplier), not alpha"
    if err["type"] == "extra_forbidden":
        return "unknown key: not an option mlx_lm or loraboard knows here"
    return str(err["msg"])


def first_problems(problems: list[YamlProblem], limit: int = MAX_PROBLEMS) -> list[YamlProblem]:
    """At most `limit` problems, then one that counts the rest (a long list item by item helps nobody)."""
    if len(problems) <= limit:
        return problems
    rest = len(problems) - limit
    return [*problems[:limit], YamlProblem("", f"and {rest:,} more problem{'s' if rest != 1 else ''} "
                                               "(the first are listed)")]


def parse_yaml_config(text: str) -> ParsedConfig:
    """A RunConfig from mlx_lm YAML (loraboard's own keys under `loraboard:`); every problem at once."""
    data, lines = load_yaml(text)
    if data is None:
        raise YamlConfigError([YamlProblem("", "the file is empty: expected mlx_lm lora options such as "
                                           "model, data, iters")])
    if not isinstance(data, dict):
        raise YamlConfigError([YamlProblem("", f"expected a mapping of mlx_lm lora options, found a "
                                           f"{type(data).__name__}", 1, 1)])
    problems: list[YamlProblem] = []
    ignored: list[IgnoredKey] = []
    payload: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key)
        if name in MLX_KEYS:
            if value is not None or name not in OPTIONAL_MLX_KEYS:
                payload[name] = value
        elif name in IGNORED_KEYS:
            if name not in AS_EXPORTED or value != AS_EXPORTED[name]:  # an exported file's own values: silently
                ignored.append(IgnoredKey(name, IGNORED_KEYS[name]))
        elif name in UNSUPPORTED_KEYS:
            problems.append(_problem(name, UNSUPPORTED_KEYS[name], lines))
        elif name == "loraboard":
            if not isinstance(value, dict):
                problems.append(_problem(name, "expected a mapping of loraboard's own keys: "
                                         + ", ".join(LORABOARD_KEYS), lines))
                continue
            for own, own_value in value.items():
                if str(own) in LORABOARD_KEYS:
                    payload[str(own)] = own_value
                else:
                    problems.append(_problem(f"loraboard.{own}", _unknown(
                        str(own), LORABOARD_KEYS, "one of loraboard's keys (" + ", ".join(LORABOARD_KEYS) + ")"),
                        lines))
        else:
            problems.append(_problem(name, _unknown(name, MLX_KEYS + tuple(IGNORED_KEYS),
                                                    "an option of mlx_lm lora"), lines))
    config = None
    try:
        config = RunConfig.model_validate(payload)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            problems.append(_problem(_yaml_path(tuple(err["loc"])), _message(err), lines))
    if problems or config is None:
        raise YamlConfigError(first_problems(sorted(problems, key=lambda p: p.line or 0)))  # in the file's order
    return ParsedConfig(config, ignored, list(payload))


# Export ------------------------------------------------------------------------------


class _ExportDumper(yaml.SafeDumper):
    """Block style, with short lists (schedule arguments, keys, betas) in flow style."""


def _flow_list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)


_ExportDumper.add_representer(list, _flow_list)


def export_data(config: RunConfig, model_layers: int | None = None) -> dict[str, Any]:
    """The YAML document of a run config: mlx_lm's keys, then `loraboard:` (see the module doc)."""
    dumped = config.model_dump(mode="json")
    document: dict[str, Any] = {"model": dumped["model"], "data": dumped["data"], **AS_EXPORTED}
    for key in MLX_KEYS[2:]:
        value = dumped[key]
        if value is None and key in OPTIONAL_MLX_KEYS:
            continue
        document[key] = value
    document["optimizer_config"] = {config.optimizer: config.optimizer_config.arguments_for(config.optimizer)}
    if dumped["lora_parameters"].get("keys") is None:
        dumped["lora_parameters"].pop("keys", None)
    if model_layers is not None and config.num_layers > model_layers:
        document["num_layers"] = model_layers  # what trained; mlx_lm refuses more layers than the model has
    document["loraboard"] = {key: dumped[key] for key in LORABOARD_KEYS}
    return document


def export_yaml(config: RunConfig, run_id: int | None = None, run_name: str = "",
                model_layers: int | None = None) -> str:
    """The config as a file `python -m mlx_lm lora -c` trains from as is."""
    header = [f"# loraboard run {run_id}: {run_name}" if run_id is not None else "# loraboard run config",
              "# Train it with mlx-lm alone:  python -m mlx_lm lora -c this-file.yaml",
              "# or load it into loraboard's new-run form (Import YAML). mlx_lm ignores the loraboard: keys."]
    if config.resume_from is not None:
        header.append(f"# This run continued run {config.resume_from.run_id} from iteration "
                      f"{config.resume_from.iteration}; mlx_lm trains from the base model unless you add "
                      "resume_adapter_file.")
    if model_layers is not None and config.num_layers > model_layers:
        header.append(f"# num_layers: the run asked for {config.num_layers}; the model has {model_layers}, "
                      "all of which trained.")
    body = yaml.dump(export_data(config, model_layers), Dumper=_ExportDumper, sort_keys=False,
                     default_flow_style=False, allow_unicode=True)
    return "\n".join(header) + "\n" + body
