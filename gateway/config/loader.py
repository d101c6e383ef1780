"""Load a configuration folder: ``gateway.toml`` plus ``tools/*.toml``.

Every problem becomes one :class:`ConfigIssue` line naming the file, the key path
and the rule broken, for example::

    tools/etch-07.toml: tags[3].scale: must be a number, got "x"

All files are read and every issue collected before :class:`ConfigError` is raised,
so a technician sees the whole list at once.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError

from drivers import DRIVER_KINDS, driver_class
from drivers.base import PollGroup
from edge_models.base import SCORER_KINDS, scorer_class
from gateway.config.models import (
    AlertRule,
    GatewayConfig,
    MainConfig,
    ModelConfig,
    ToolConfig,
)

__all__ = ["MAIN_FILE", "TOOLS_DIR", "ConfigError", "ConfigIssue", "load_config"]

MAIN_FILE = "gateway.toml"
TOOLS_DIR = "tools"
ENV_PREFIX = "env:"
SECRET_KEYS = ("password",)

Loc = tuple[str | int, ...]
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One broken rule: where it is and what the rule says."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}: {self.key}: {self.message}"
            if self.key
            else (f"{self.file}: {self.message}")
        )


class ConfigError(Exception):
    """The configuration folder is not valid; ``issues`` lists every problem."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


def load_config(directory: Path) -> GatewayConfig:
    """Read and validate the configuration folder ``directory``.

    Raises:
        ConfigError: with one issue per broken rule, in every file.
    """
    issues: list[ConfigIssue] = []
    main = _load_main(directory, issues)
    tools = {
        _display(directory, path): tool
        for path in _tool_files(directory, issues)
        if (tool := _load_tool(directory, path, issues)) is not None
    }
    _check_unique_tools(tools, issues)
    if issues or main is None:
        raise ConfigError(issues)
    return GatewayConfig(directory=directory, main=main, tools=tuple(tools.values()))


def _load_main(directory: Path, issues: list[ConfigIssue]) -> MainConfig | None:
    path = directory / MAIN_FILE
    data = _read_toml(directory, path, issues)
    if data is None:
        return None
    name = _display(directory, path)
    mqtt = data.get("mqtt")
    if isinstance(mqtt, dict):
        _resolve_secrets(name, ("mqtt",), mqtt, directory, issues)
    return _validate(MainConfig, data, name, (), issues)


def _tool_files(directory: Path, issues: list[ConfigIssue]) -> list[Path]:
    folder = directory / TOOLS_DIR
    if not folder.is_dir():
        issues.append(ConfigIssue(TOOLS_DIR, "", "folder of tool files is missing"))
        return []
    files = sorted(folder.glob("*.toml"))
    if not files:
        issues.append(ConfigIssue(TOOLS_DIR, "", "holds no tool file (*.toml)"))
    return files


def _load_tool(
    directory: Path, path: Path, issues: list[ConfigIssue]
) -> ToolConfig | None:
    data = _read_toml(directory, path, issues)
    if data is None:
        return None
    name = _display(directory, path)
    data.setdefault("id", path.stem)
    before = len(issues)
    tool = _validate(ToolConfig, data, name, (), issues)
    if tool is None:
        # The tables the tool schema leaves to their own schemas are still
        # checked, so that a broken key elsewhere does not hide their issues.
        if "driver" in data:
            _validate_driver(data["driver"], name, issues)
        if isinstance(data.get("scorers"), dict):
            _validate_scorers(data["scorers"], set(), name, issues)
        return None

    driver = _validate_driver(tool.driver, name, issues)
    if driver is not None:
        driver = _resolve_paths(driver, directory)
    used = {scorer for tag in tool.tags for scorer in tag.scorers}
    scorers = _validate_scorers(tool.scorers, used, name, issues)
    tags = _validate_tags(tool, driver, name, issues)
    _check_groups(tool, name, issues)
    models = _validate_models(tool, directory, name, issues)
    if driver is not None:
        tag_names = [tag.name for tag in tool.tags]
        index = {tag: i for i, tag in enumerate(tag_names)}
        groups = [
            PollGroup(
                g.name,
                g.interval_s,
                tuple(index[t] for t in g.tags if t in index),
                g.mode,
            )
            for g in tool.poll_groups
        ]
        found = driver_class(driver.kind).check(driver, tag_names, tags, groups)
        issues.extend(ConfigIssue(name, key, rule) for key, rule in found)
    if len(issues) > before:
        return None
    return tool.model_copy(
        update={"driver": driver, "scorers": scorers, "tags": tags, "models": models}
    )


def _validate_driver(table: Any, name: str, issues: list[ConfigIssue]) -> Any:
    if not isinstance(table, dict):
        issues.append(ConfigIssue(name, "driver", "must be a table with a kind key"))
        return None
    if "kind" not in table:
        issues.append(ConfigIssue(name, "driver.kind", _RULES["missing"]))
        return None
    kind = table["kind"]
    if kind not in DRIVER_KINDS:
        choices = ", ".join(DRIVER_KINDS)
        issues.append(
            ConfigIssue(
                name, "driver.kind", f"must be one of {choices}, got {_show(kind)}"
            )
        )
        return None
    return _validate(driver_class(kind).Settings, table, name, ("driver",), issues)


def _validate_scorers(
    tables: dict[str, Any], used: set[str], name: str, issues: list[ConfigIssue]
) -> dict[str, Any]:
    """Validate each ``[scorers.NAME]`` table and those of scorers ``used`` by tags."""
    scorers: dict[str, Any] = {}
    for kind in sorted(used | set(tables)):
        if kind not in SCORER_KINDS:
            continue  # reported on the tag (or below, for a stray table)
        table = tables.get(kind, {})
        if not isinstance(table, dict):
            issues.append(ConfigIssue(name, f"scorers.{kind}", "must be a table"))
            continue
        params = _validate(
            scorer_class(kind).Params, table, name, ("scorers", kind), issues
        )
        scorers[kind] = params
    for kind in sorted(set(tables) - set(SCORER_KINDS)):
        choices = ", ".join(SCORER_KINDS)
        issues.append(
            ConfigIssue(name, f"scorers.{kind}", f"unknown scorer; known: {choices}")
        )
    return scorers


def _validate_models(
    tool: ToolConfig, directory: Path, name: str, issues: list[ConfigIssue]
) -> tuple[ModelConfig, ...] | None:
    """Check each ``[[models]]`` entry against the groups, tags and model files."""
    if tool.models is None:
        return None
    groups = {group.name: group for group in tool.poll_groups}
    tag_names = {tag.name for tag in tool.tags}
    seen: set[str] = set()
    models = []
    for i, model in enumerate(tool.models):
        where = f"models[{i}]"
        if model.name in seen or model.name in tag_names:
            issues.append(
                ConfigIssue(
                    name,
                    f"{where}.name",
                    f"{_show(model.name)} is already a model or tag name",
                )
            )
        seen.add(model.name)
        if model.kind not in SCORER_KINDS:
            choices = ", ".join(SCORER_KINDS)
            issues.append(
                ConfigIssue(
                    name,
                    f"{where}.kind",
                    f"must be one of {choices}, got {_show(model.kind)}",
                )
            )
            continue
        group = groups.get(model.group)
        if group is None:
            issues.append(
                ConfigIssue(
                    name, f"{where}.group", f"no poll group named {_show(model.group)}"
                )
            )
            continue
        for j, tag in enumerate(model.tags):
            if tag not in group.tags:
                issues.append(
                    ConfigIssue(
                        name,
                        f"{where}.tags[{j}]",
                        f"{_show(tag)} is not a tag of group {_show(group.name)}",
                    )
                )
        tags = model.tags or group.tags
        if not isinstance(model.params, dict):
            issues.append(ConfigIssue(name, f"{where}.params", "must be a table"))
            continue
        cls = scorer_class(model.kind)
        params = _validate(
            cls.Params, model.params, name, ("models", i, "params"), issues
        )
        if params is None:
            continue
        params = _resolve_paths(params, directory)
        file = None
        if model.file is not None:
            file = model.file if model.file.is_absolute() else directory / model.file
            for problem in _check_model_file(file, model.kind, tags):
                issues.append(ConfigIssue(name, f"{where}.file", problem))
        models.append(
            model.model_copy(update={"tags": tags, "params": params, "file": file})
        )
    return tuple(models)


def _resolve_paths(params: _M, directory: Path) -> _M:
    """Take relative paths in driver or scorer settings from the config folder."""
    relative = {
        key: directory / value
        for key, value in params
        if isinstance(value, Path) and not value.is_absolute()
    }
    return params.model_copy(update=relative) if relative else params


def _check_model_file(file: Path, kind: str, tags: Sequence[str]) -> list[str]:
    """Return what makes ``file`` unusable for a ``kind`` model over ``tags``."""
    from edge_models.modelfile import ModelFileError, load_model

    try:
        scorer, file_tags = load_model(file)
    except ModelFileError as exc:
        return [str(exc)]
    problems = []
    if scorer.name != kind:
        problems.append(f"{file} holds a {scorer.name} model, not {kind}")
    if tuple(file_tags) != tuple(tags):
        problems.append(
            f"{file} was fitted on tags {', '.join(file_tags)}, not {', '.join(tags)}"
        )
    return problems


def _validate_tags(
    tool: ToolConfig, driver: Any, name: str, issues: list[ConfigIssue]
) -> tuple[Any, ...]:
    source_model = None if driver is None else driver_class(driver.kind).Source
    seen: dict[str, int] = {}
    tags = []
    for i, tag in enumerate(tool.tags):
        where = ("tags", i)
        if tag.name in seen:
            issues.append(
                ConfigIssue(
                    name,
                    f"tags[{i}].name",
                    f"duplicate tag {_show(tag.name)} (also tags[{seen[tag.name]}])",
                )
            )
        seen.setdefault(tag.name, i)
        for j, scorer in enumerate(tag.scorers):
            if scorer not in SCORER_KINDS:
                choices = ", ".join(SCORER_KINDS)
                issues.append(
                    ConfigIssue(
                        name,
                        f"tags[{i}].scorers[{j}]",
                        f"must be one of {choices}, got {_show(scorer)}",
                    )
                )
            elif scorer_class(scorer).multivariate:
                issues.append(
                    ConfigIssue(
                        name,
                        f"tags[{i}].scorers[{j}]",
                        f"{_show(scorer)} scores several tags together: "
                        "configure it under [[models]]",
                    )
                )
        rule = _tag_alert_rule(tool.alerts, tag.alerts, name, where, issues)
        source = None
        if source_model is not None:
            if not isinstance(tag.source, dict):
                issues.append(ConfigIssue(name, f"tags[{i}].source", "must be a table"))
            else:
                source = _validate(
                    source_model, tag.source, name, (*where, "source"), issues
                )
        tags.append(tag.model_copy(update={"alerts": rule, "source": source}))
    return tuple(tags)


def _tag_alert_rule(
    defaults: AlertRule,
    overrides: Any,
    name: str,
    where: Loc,
    issues: list[ConfigIssue],
) -> AlertRule | None:
    if not isinstance(overrides, dict):
        issues.append(ConfigIssue(name, _key((*where, "alerts")), "must be a table"))
        return None
    merged = {**defaults.model_dump(), **overrides}
    return _validate(AlertRule, merged, name, (*where, "alerts"), issues)


def _check_groups(tool: ToolConfig, name: str, issues: list[ConfigIssue]) -> None:
    tag_names = {tag.name for tag in tool.tags}
    owner: dict[str, str] = {}
    group_names: set[str] = set()
    for g, group in enumerate(tool.poll_groups):
        if group.name in group_names:
            issues.append(
                ConfigIssue(
                    name,
                    f"poll_groups[{g}].name",
                    f"duplicate group {_show(group.name)}",
                )
            )
        group_names.add(group.name)
        for t, member in enumerate(group.tags):
            key = f"poll_groups[{g}].tags[{t}]"
            if member not in tag_names:
                issues.append(ConfigIssue(name, key, f"no tag named {_show(member)}"))
            elif member in owner:
                issues.append(
                    ConfigIssue(
                        name,
                        key,
                        f"tag {_show(member)} is already in group "
                        f"{_show(owner[member])}",
                    )
                )
            else:
                owner[member] = group.name
    for i, tag in enumerate(tool.tags):
        if tag.name not in owner:
            issues.append(
                ConfigIssue(
                    name, f"tags[{i}]", f"tag {_show(tag.name)} is in no poll group"
                )
            )


def _check_unique_tools(
    tools: dict[str, ToolConfig], issues: list[ConfigIssue]
) -> None:
    first: dict[str, str] = {}
    for name, tool in tools.items():
        if tool.id in first:
            issues.append(
                ConfigIssue(
                    name,
                    "id",
                    f"tool id {_show(tool.id)} is also used by {first[tool.id]}",
                )
            )
        first.setdefault(tool.id, name)


def _read_toml(
    directory: Path, path: Path, issues: list[ConfigIssue]
) -> dict[str, Any] | None:
    name = _display(directory, path)
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        issues.append(ConfigIssue(name, "", "file not found"))
        return None
    except OSError as exc:
        issues.append(ConfigIssue(name, "", f"cannot be read: {exc.strerror}"))
        return None
    except tomllib.TOMLDecodeError as exc:
        issues.append(ConfigIssue(name, "", f"not valid TOML: {exc}"))
        return None
    except UnicodeDecodeError as exc:
        issues.append(ConfigIssue(name, "", f"not valid TOML: {_not_utf8(exc)}"))
        return None
    converted: dict[str, Any] = _tuples(data)
    return converted


def _tuples(value: Any) -> Any:
    """Turn TOML arrays into tuples, which the strict, frozen models expect."""
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def _resolve_secrets(
    name: str,
    where: Loc,
    table: dict[str, Any],
    directory: Path,
    issues: list[ConfigIssue],
) -> None:
    """Replace ``KEY = "env:NAME"`` and ``KEY_file = PATH`` by the secret's value."""
    for key in SECRET_KEYS:
        file_key = f"{key}_file"
        if key in table and file_key in table:
            issues.append(
                ConfigIssue(
                    name, _key((*where, key)), f"give {key} or {file_key}, not both"
                )
            )
            del table[file_key]
            table[key] = None
            continue
        if file_key in table:
            secret = _read_secret_file(
                name, (*where, file_key), table.pop(file_key), directory, issues
            )
        elif isinstance(table.get(key), str) and table[key].startswith(ENV_PREFIX):
            variable = table[key][len(ENV_PREFIX) :]
            secret = os.environ.get(variable)
            if secret is None:
                issues.append(
                    ConfigIssue(
                        name,
                        _key((*where, key)),
                        f"environment variable {variable} is not set",
                    )
                )
        else:
            continue
        table[key] = None if secret is None else SecretStr(secret)


def _read_secret_file(
    name: str, where: Loc, value: Any, directory: Path, issues: list[ConfigIssue]
) -> str | None:
    if not isinstance(value, str):
        issues.append(
            ConfigIssue(name, _key(where), f"must be a file path, got {_show(value)}")
        )
        return None
    path = Path(value) if Path(value).is_absolute() else directory / value
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        issues.append(
            ConfigIssue(name, _key(where), f"cannot read {path}: {exc.strerror}")
        )
    except UnicodeDecodeError:
        issues.append(ConfigIssue(name, _key(where), f"{path} is not UTF-8 text"))
    return None


def _validate(
    model: type[_M],
    data: Mapping[str, Any],
    name: str,
    where: Loc,
    issues: list[ConfigIssue],
) -> _M | None:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        issues.extend(
            ConfigIssue(name, _key((*where, *e["loc"])), _rule(e))
            for e in exc.errors()
            if not _short_by_failed_items(e)
        )
        return None


def _short_by_failed_items(error: Any) -> bool:
    """Tell whether a ``too_short`` error only counts the items that failed.

    pydantic checks an array's length after dropping its invalid items, so one
    bad entry in a one-entry array also reports the array as too short.
    """
    if error["type"] != "too_short":
        return False
    given = error["input"]
    return isinstance(given, Sized) and len(given) >= error["ctx"]["min_length"]


# What each pydantic error type means, in the words of the rule that was broken.
_RULES = {
    "missing": "is required",
    "extra_forbidden": "unknown key",
    "float_type": "must be a number",
    "int_type": "must be a whole number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "tuple_type": "must be an array",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "path_type": "must be a path string",
    "finite_number": "must be a finite number",
}


def _rule(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    secret = any(part in SECRET_KEYS for part in error["loc"])
    got = ", got (secret)" if secret else f", got {_show(error['input'])}"
    if kind in ("missing", "extra_forbidden"):
        return _RULES[kind]
    if kind in _RULES:
        return _RULES[kind] + got
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}{got}"
    bounds = {
        "greater_than": ">",
        "greater_than_equal": ">=",
        "less_than": "<",
        "less_than_equal": "<=",
    }
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"must be {bounds[kind]} {limit}{got}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx['pattern']}{got}"
    if kind in ("too_short", "too_long"):
        least = "at least" if kind == "too_short" else "at most"
        return (
            f"must have {least} {ctx.get('min_length', ctx.get('max_length'))} item(s)"
        )
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"]).lower() + got


def _key(loc: Loc) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            shown = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            parts.append(("." if parts else "") + shown)
    return "".join(parts)


def _show(value: Any) -> str:
    if isinstance(value, SecretStr):
        return "(secret)"
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _not_utf8(exc: UnicodeDecodeError) -> str:
    return f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"


def _display(directory: Path, path: Path) -> str:
    try:
        return str(path.relative_to(directory))
    except ValueError:
        return str(path)
