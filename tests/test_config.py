"""Tests of the configuration loader: one line per broken rule, naming file and key.

Each test writes a valid configuration folder, breaks one thing in it and checks
the exact issues the loader reports, so the tests double as the list of rules a
field technician's files are held to.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drivers import DRIVER_KINDS
from drivers.signals import FaultSpec, SignalSpec
from drivers.simulated import SimulatedSettings
from edge_models.base import SCORER_KINDS
from edge_models.ewma import EwmaParams
from edge_models.level import LevelParams
from gateway.config import AlertRule, ConfigError, GatewayConfig, load_config
from gateway.config.models import ID_PATTERN

MAIN = """\
[gateway]
site = "fab1"
id = "gw-01"

[store]
path = "gateway.db"
commit_interval_ms = 250

[mqtt]
host = "broker.fab1.internal"
port = 8883
username = "gw-01"

[mqtt.tls]
enabled = false

[logging]
level = "info"
"""

TOOL = """\
description = "Plasma etch chamber 7"

[driver]
kind = "simulated"
seed = 7

[[driver.faults]]
kind = "spike"
tag = "chamber_pressure"
at_s = 600
magnitude = 25.0

[[driver.faults]]
kind = "stuck"
tag = "esc_temp"
at_s = 900
duration_s = 8

[alerts]
raise_level = 6.0
clear_level = 3.0
raise_after = 3

[scorers.ewma]
alpha = 0.05
warmup = 30

[[poll_groups]]
name = "fast"
interval_s = 1.0
tags = ["chamber_pressure", "rf_forward_power"]

[[poll_groups]]
name = "slow"
interval_s = 10.0
tags = ["esc_temp"]

[[tags]]
name = "chamber_pressure"
unit = "mTorr"
limits = [0.0, 500.0]
alerts = { raise_level = 8.0 }
source = { level = 45.0, noise = 0.3 }

[[tags]]
name = "rf_forward_power"
unit = "W"
scale = 1.0
scorers = ["ewma"]
source = { level = 1200.0, noise = 4.0 }

[[tags]]
name = "esc_temp"
unit = "degC"
telemetry = true
source = { level = 6000.0, noise = 8.0 }
"""

TOOL_FILE = "tools/etch-07.toml"
SECRET = "s3cret-Pa55"
UNSET_VARIABLE = "EDGE_GATEWAY_TEST_UNSET_PASSWORD"


def edit(text: str, old: str, new: str) -> str:
    """Return ``text`` with its one occurrence of ``old`` replaced by ``new``."""
    assert text.count(old) == 1, f"{old!r} must occur exactly once"
    return text.replace(old, new)


def without(text: str, *headers: str) -> str:
    """Return ``text`` without the blank-line separated blocks under ``headers``."""
    blocks = text.split("\n\n")
    kept = [block for block in blocks if not block.startswith(headers)]
    assert len(kept) < len(blocks), f"no block under {headers}"
    return "\n\n".join(kept)


def write_config(
    directory: Path, main: str | None = MAIN, tools: dict[str, str] | None = None
) -> Path:
    """Write a configuration folder: the main file and ``tools/<name>.toml`` files."""
    if main is not None:
        (directory / "gateway.toml").write_text(main, encoding="utf-8")
    (directory / "tools").mkdir()
    for name, text in ({"etch-07": TOOL} if tools is None else tools).items():
        (directory / "tools" / f"{name}.toml").write_text(text, encoding="utf-8")
    return directory


def issues_of(directory: Path) -> list[str]:
    """Load ``directory``, expecting a ConfigError; return its issue lines."""
    with pytest.raises(ConfigError) as caught:
        load_config(directory)
    lines = [str(issue) for issue in caught.value.issues]
    for line in lines:
        assert "\n" not in line, f"issue spans lines: {line!r}"
    assert str(caught.value) == "\n".join(lines)
    return lines


def main_issues(tmp_path: Path, old: str, new: str) -> list[str]:
    """Return the issues of a folder whose main file has ``old`` replaced by ``new``."""
    return issues_of(write_config(tmp_path, main=edit(MAIN, old, new)))


def tool_issues(tmp_path: Path, old: str, new: str) -> list[str]:
    """Return the issues of a folder whose tool file has ``old`` replaced by ``new``."""
    return issues_of(write_config(tmp_path, tools={"etch-07": edit(TOOL, old, new)}))


def load_valid(tmp_path: Path, main: str = MAIN, tool: str = TOOL) -> GatewayConfig:
    """Load a folder with the given main and tool file, which must be valid."""
    return load_config(write_config(tmp_path, main=main, tools={"etch-07": tool}))


# The folder


def test_valid_folder_loads(tmp_path: Path) -> None:
    """A valid folder loads into the main settings and one tool per file."""
    config = load_valid(tmp_path)

    assert config.directory == tmp_path
    assert config.main.gateway.site == "fab1"
    assert config.main.mqtt.port == 8883
    assert [tool.id for tool in config.tools] == ["etch-07"]
    assert config.tools[0].kind == "simulated"
    assert config.store_path == tmp_path / "gateway.db"


def test_tools_are_loaded_in_file_name_order(tmp_path: Path) -> None:
    """Tool files are read in the order of their names; other files are ignored."""
    directory = write_config(tmp_path, tools={"zeta": TOOL, "alpha": TOOL})
    (directory / "tools" / "README.txt").write_text("not a tool", encoding="utf-8")

    config = load_config(directory)

    assert [tool.id for tool in config.tools] == ["alpha", "zeta"]


def test_missing_main_file(tmp_path: Path) -> None:
    """A folder without gateway.toml is reported as such."""
    assert issues_of(write_config(tmp_path, main=None)) == [
        "gateway.toml: file not found"
    ]


def test_missing_tools_folder(tmp_path: Path) -> None:
    """A folder without a tools folder is reported as such."""
    (tmp_path / "gateway.toml").write_text(MAIN, encoding="utf-8")

    assert issues_of(tmp_path) == ["tools: folder of tool files is missing"]


def test_empty_tools_folder(tmp_path: Path) -> None:
    """A tools folder holding no *.toml file is an error: there is nothing to run."""
    directory = write_config(tmp_path, tools={})
    (directory / "tools" / "etch-07.toml.bak").write_text(TOOL, encoding="utf-8")

    assert issues_of(directory) == ["tools: holds no tool file (*.toml)"]


def test_missing_folder_reports_main_file_and_tools_folder(tmp_path: Path) -> None:
    """A folder that does not exist reports both the main file and the tools folder."""
    assert issues_of(tmp_path / "nowhere") == [
        "gateway.toml: file not found",
        "tools: folder of tool files is missing",
    ]


def test_invalid_toml_in_main_file_names_the_file(tmp_path: Path) -> None:
    """A syntax error in the main file names it and the line and column."""
    issues = main_issues(tmp_path, "[mqtt]\n", "[mqtt\n")

    assert issues == [
        "gateway.toml: not valid TOML: Expected ']' at the end of a table "
        "declaration (at line 9, column 6)"
    ]


def test_invalid_toml_in_tool_file_names_the_file(tmp_path: Path) -> None:
    """A syntax error in a tool file names that file, relative to the folder."""
    issues = tool_issues(tmp_path, 'unit = "W"', 'unit = "W')

    line = TOOL[: TOOL.index('unit = "W"')].count("\n") + 1
    assert len(issues) == 1
    assert issues[0].startswith(f"{TOOL_FILE}: not valid TOML: ")
    assert issues[0].endswith(f"(at line {line}, column 10)")


def test_tool_file_not_utf8_is_reported(tmp_path: Path) -> None:
    """A tool file saved in a legacy encoding is one issue, not a crash."""
    directory = write_config(tmp_path)
    text = edit(TOOL, 'unit = "degC"', 'unit = "°C"')
    (directory / TOOL_FILE).write_bytes(text.encode("latin-1"))

    issues = issues_of(directory)

    assert len(issues) == 1
    assert issues[0].startswith(f"{TOOL_FILE}: not valid TOML: not UTF-8 text")


# Types


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("port = 8883", 'port = "x"', 'mqtt.port: must be a whole number, got "x"'),
        ("port = 8883", "port = true", "mqtt.port: must be a whole number, got true"),
        ("port = 8883", "port = 88.5", "mqtt.port: must be a whole number, got 88.5"),
        (
            'host = "broker.fab1.internal"',
            "host = 5",
            "mqtt.host: must be a string, got 5",
        ),
        (
            "enabled = false",
            'enabled = "no"',
            'mqtt.tls.enabled: must be true or false, got "no"',
        ),
        ('path = "gateway.db"', "path = 3", "store.path: must be a path string, got 3"),
        (
            '[gateway]\nsite = "fab1"\nid = "gw-01"',
            'gateway = "fab1"',
            'gateway: must be a table, got "fab1"',
        ),
        (
            'level = "info"',
            'level = "verbose"',
            "logging.level: must be one of 'debug', 'info', 'warning' or 'error', "
            'got "verbose"',
        ),
    ],
)
def test_main_file_wrong_type(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    """A value of the wrong type in the main file names its key and the type wanted."""
    assert main_issues(tmp_path, old, new) == [f"gateway.toml: {expected}"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("scale = 1.0", 'scale = "x"', 'tags[1].scale: must be a number, got "x"'),
        (
            "telemetry = true",
            'telemetry = "yes"',
            'tags[2].telemetry: must be true or false, got "yes"',
        ),
        ('unit = "W"', "unit = 1", "tags[1].unit: must be a string, got 1"),
        (
            'tags = ["esc_temp"]',
            'tags = "esc_temp"',
            'poll_groups[1].tags: must be an array, got "esc_temp"',
        ),
        (
            "limits = [0.0, 500.0]",
            "limits = 500.0",
            "tags[0].limits: must be an array, got 500.0",
        ),
        (
            "limits = [0.0, 500.0]",
            "limits = [0.0, 250.0, 500.0]",
            "tags[0].limits: must have at most 2 item(s)",
        ),
        (
            "alerts = { raise_level = 8.0 }",
            "alerts = 8.0",
            "tags[0].alerts: must be a table",
        ),
        (
            "source = { level = 45.0, noise = 0.3 }",
            "source = 45.0",
            "tags[0].source: must be a table",
        ),
        ("seed = 7", "seed = 7.5", "driver.seed: must be a whole number, got 7.5"),
        (
            "[scorers.ewma]\nalpha = 0.05\nwarmup = 30",
            "[scorers]\newma = 0.05",
            "scorers.ewma: must be a table",
        ),
    ],
)
def test_tool_file_wrong_type(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    """A value of the wrong type in a tool file names its key path and the rule."""
    assert tool_issues(tmp_path, old, new) == [f"{TOOL_FILE}: {expected}"]


def test_driver_must_be_a_table(tmp_path: Path) -> None:
    """A driver given as a plain value rather than a table says it must be a table."""
    tool = 'driver = "simulated"\n' + without(TOOL, "[driver]", "[[driver.")
    issues = issues_of(write_config(tmp_path, tools={"etch-07": tool}))

    assert issues == [f"{TOOL_FILE}: driver: must be a table with a kind key"]


def test_not_a_number_is_refused(tmp_path: Path) -> None:
    """NaN and infinity are not accepted where a number is expected."""
    issues = tool_issues(tmp_path, "limits = [0.0, 500.0]", "limits = [nan, inf]")

    assert issues == [
        f"{TOOL_FILE}: tags[0].limits[0]: must be a finite number, got NaN",
        f"{TOOL_FILE}: tags[0].limits[1]: must be a finite number, got Infinity",
    ]


# Unknown keys


def test_unknown_key_at_top_of_main_file(tmp_path: Path) -> None:
    """A key the main file does not define is an error, not silently ignored."""
    issues = main_issues(tmp_path, "[gateway]\n", 'colour = "red"\n[gateway]\n')

    assert issues == ["gateway.toml: colour: unknown key"]


def test_unknown_key_in_nested_table(tmp_path: Path) -> None:
    """An unknown key in a nested table is reported with its dotted path."""
    issues = main_issues(tmp_path, "enabled = false", "enabled = false\nfoo = 1")

    assert issues == ["gateway.toml: mqtt.tls.foo: unknown key"]


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("description = ", "colour = 1\ndescription = ", "colour"),
        ("seed = 7", "seed = 7\nbaud = 9600", "driver.baud"),
        ('unit = "W"', 'unit = "W"\nunits = "W"', "tags[1].units"),
        (
            "alerts = { raise_level = 8.0 }",
            "alerts = { rise = 8.0 }",
            "tags[0].alerts.rise",
        ),
        ("noise = 0.3 }", "noise = 0.3, address = 4 }", "tags[0].source.address"),
        ("warmup = 30", "warmup = 30\nbeta = 0.5", "scorers.ewma.beta"),
        ("duration_s = 8", "duration_s = 8\nend_s = 10", "driver.faults[1].end_s"),
    ],
)
def test_unknown_key_in_tool_file(tmp_path: Path, old: str, new: str, key: str) -> None:
    """An unknown key anywhere in a tool file is reported with its key path."""
    assert tool_issues(tmp_path, old, new) == [f"{TOOL_FILE}: {key}: unknown key"]


def test_key_that_is_not_a_bare_key_is_quoted(tmp_path: Path) -> None:
    """A quoted TOML key is shown quoted, so even a newline keeps the issue one line."""
    issues = tool_issues(tmp_path, 'unit = "W"', 'unit = "W"\n"bad\\nkey" = 1')

    assert issues == [f'{TOOL_FILE}: tags[1]."bad\\nkey": unknown key']


# Required keys


def test_gateway_site_is_required(tmp_path: Path) -> None:
    """The main file must say which site the gateway is in."""
    issues = main_issues(tmp_path, 'site = "fab1"\n', "")

    assert issues == ["gateway.toml: gateway.site: is required"]


def test_gateway_table_is_required(tmp_path: Path) -> None:
    """The main file must have a [gateway] table."""
    issues = main_issues(tmp_path, '[gateway]\nsite = "fab1"\nid = "gw-01"\n', "")

    assert issues == ["gateway.toml: gateway: is required"]


def test_driver_kind_is_required(tmp_path: Path) -> None:
    """A [driver] table without kind says kind is required."""
    issues = tool_issues(tmp_path, '[driver]\nkind = "simulated"\n', "[driver]\n")

    assert issues == [f"{TOOL_FILE}: driver.kind: is required"]


def test_driver_table_is_required(tmp_path: Path) -> None:
    """A tool file without a [driver] table says driver is required."""
    tool = without(TOOL, "[driver]", "[[driver.")
    issues = issues_of(write_config(tmp_path, tools={"etch-07": tool}))

    assert issues == [f"{TOOL_FILE}: driver: is required"]


@pytest.mark.parametrize("table", ["poll_groups", "tags"])
def test_poll_groups_and_tags_are_required(tmp_path: Path, table: str) -> None:
    """A tool file without any poll group or without any tag is refused."""
    tool = without(TOOL, f"[[{table}]]")
    directory = write_config(tmp_path, tools={"etch-07": tool})

    assert issues_of(directory) == [f"{TOOL_FILE}: {table}: is required"]


def test_poll_group_needs_at_least_one_tag(tmp_path: Path) -> None:
    """A poll group with an empty tags array is refused (and only that is said)."""
    issues = tool_issues(tmp_path, 'tags = ["esc_temp"]', "tags = []")

    assert issues == [f"{TOOL_FILE}: poll_groups[1].tags: must have at least 1 item(s)"]


def test_error_in_the_only_poll_group_is_one_issue(tmp_path: Path) -> None:
    """A bad key in a tool's only poll group does not also call the array empty."""
    tool = without(TOOL, '[[poll_groups]]\nname = "slow"')
    tool = edit(tool, '"rf_forward_power"]', '"rf_forward_power", "esc_temp"]')
    tool = edit(tool, "interval_s = 1.0", "interval_s = 0")
    issues = issues_of(write_config(tmp_path, tools={"etch-07": tool}))

    assert issues == [f"{TOOL_FILE}: poll_groups[0].interval_s: must be > 0.0, got 0"]


def test_source_level_is_required(tmp_path: Path) -> None:
    """A simulated tag's source must give the signal's level."""
    issues = tool_issues(
        tmp_path, "source = { level = 1200.0, noise = 4.0 }", "source = { noise = 4.0 }"
    )

    assert issues == [f"{TOOL_FILE}: tags[1].source.level: is required"]


# Identifiers and ranges


@pytest.mark.parametrize(
    ("file", "old", "new", "key", "value"),
    [
        ("gateway.toml", 'site = "fab1"', 'site = "fab 1"', "gateway.site", "fab 1"),
        ("gateway.toml", 'id = "gw-01"', 'id = "-gw"', "gateway.id", "-gw"),
        (
            TOOL_FILE,
            'name = "fast"',
            'name = "fast/1"',
            "poll_groups[0].name",
            "fast/1",
        ),
        (
            TOOL_FILE,
            'name = "esc_temp"',
            'name = "esc temp"',
            "tags[2].name",
            "esc temp",
        ),
        (TOOL_FILE, "description = ", 'id = "Etch 7"\ndescription = ', "id", "Etch 7"),
    ],
)
def test_identifier_must_match_pattern(
    tmp_path: Path, file: str, old: str, new: str, key: str, value: str
) -> None:
    """Names used in topics and payloads must be identifiers (letters, digits, _.-)."""
    main = edit(MAIN, old, new) if file == "gateway.toml" else MAIN
    tool = edit(TOOL, old, new) if file == TOOL_FILE else TOOL
    issues = issues_of(write_config(tmp_path, main=main, tools={"etch-07": tool}))

    assert issues[0] == f'{file}: {key}: must match {ID_PATTERN}, got "{value}"'


def test_file_name_that_is_not_an_identifier(tmp_path: Path) -> None:
    """A tool file named with a space gives a tool id the pattern refuses."""
    issues = issues_of(write_config(tmp_path, tools={"etch 07": TOOL}))

    assert issues == [f'tools/etch 07.toml: id: must match {ID_PATTERN}, got "etch 07"']


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("port = 8883", "port = 0", "mqtt.port: must be >= 1, got 0"),
        ("port = 8883", "port = 65536", "mqtt.port: must be <= 65535, got 65536"),
        (
            "commit_interval_ms = 250",
            "commit_interval_ms = 0",
            "store.commit_interval_ms: must be >= 1, got 0",
        ),
    ],
)
def test_main_file_number_out_of_range(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    """A number outside its range names the key, the bound and the value given."""
    assert main_issues(tmp_path, old, new) == [f"gateway.toml: {expected}"]


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        ("interval_s = 0", "must be > 0.0, got 0"),
        ("interval_s = -1.5", "must be > 0.0, got -1.5"),
        ("interval_s = 100_000", "must be <= 86400.0, got 100000"),
    ],
)
def test_poll_interval_must_be_positive(
    tmp_path: Path, new: str, expected: str
) -> None:
    """A poll group's interval must be over zero (and at most a day)."""
    issues = tool_issues(tmp_path, "interval_s = 10.0", new)

    assert issues == [f"{TOOL_FILE}: poll_groups[1].interval_s: {expected}"]


@pytest.mark.parametrize("limits", ["[500.0, 0.0]", "[5.0, 5.0]"])
def test_limits_low_must_be_below_high(tmp_path: Path, limits: str) -> None:
    """A tag's limits must be [low, high] with low strictly below high."""
    issues = tool_issues(tmp_path, "limits = [0.0, 500.0]", f"limits = {limits}")

    assert issues == [
        f"{TOOL_FILE}: tags[0].limits: must be [low, high] with low < high, "
        f"got {limits}"
    ]


# Alerts


def test_clear_level_above_raise_level_in_alerts(tmp_path: Path) -> None:
    """The tool's [alerts] must not clear at a level above the one that raises."""
    issues = tool_issues(tmp_path, "clear_level = 3.0", "clear_level = 7.0")

    assert issues == [f"{TOOL_FILE}: alerts: clear_level must not exceed raise_level"]


def test_clear_level_above_raise_level_in_tag_override(tmp_path: Path) -> None:
    """A tag's override is checked merged over the tool's [alerts], at the tag's key."""
    issues = tool_issues(
        tmp_path, "alerts = { raise_level = 8.0 }", "alerts = { raise_level = 2.0 }"
    )

    assert issues == [
        f"{TOOL_FILE}: tags[0].alerts: clear_level must not exceed raise_level"
    ]


def test_tag_alert_override_is_merged_over_tool_defaults(tmp_path: Path) -> None:
    """A tag's alerts are the tool's [alerts] with only the tag's keys replaced."""
    tool = load_valid(tmp_path).tools[0]
    pressure, power, _ = tool.tags

    assert tool.alerts == AlertRule(raise_level=6.0, clear_level=3.0, raise_after=3)
    assert pressure.alerts == tool.alerts.model_copy(update={"raise_level": 8.0})
    assert power.alerts == tool.alerts


# Drivers and scorers


def test_unknown_driver_kind_lists_known_kinds(tmp_path: Path) -> None:
    """An unknown driver kind is refused with the list of kinds this build knows."""
    issues = tool_issues(tmp_path, 'kind = "simulated"', 'kind = "modbus-rtu"')

    known = ", ".join(DRIVER_KINDS)
    assert issues == [
        f'{TOOL_FILE}: driver.kind: must be one of {known}, got "modbus-rtu"'
    ]


def test_unknown_scorer_on_a_tag(tmp_path: Path) -> None:
    """A tag naming a scorer that does not exist names the array entry."""
    issues = tool_issues(
        tmp_path, 'scorers = ["ewma"]', 'scorers = ["ewma", "iforest"]'
    )

    known = ", ".join(SCORER_KINDS)
    assert issues == [
        f'{TOOL_FILE}: tags[1].scorers[1]: must be one of {known}, got "iforest"'
    ]


def test_stray_scorer_table(tmp_path: Path) -> None:
    """A [scorers.NAME] table for an unknown scorer is an error, not ignored."""
    issues = tool_issues(tmp_path, "warmup = 30\n", "warmup = 30\n\n[scorers.foo]\n")

    known = ", ".join(SCORER_KINDS)
    assert issues == [f"{TOOL_FILE}: scorers.foo: unknown scorer; known: {known}"]


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        ('alpha = "high"', 'must be a number, got "high"'),
        ("alpha = 0", "must be > 0.0, got 0"),
        ("alpha = 1.5", "must be <= 1.0, got 1.5"),
    ],
)
def test_scorer_params_are_validated(tmp_path: Path, new: str, expected: str) -> None:
    """The [scorers.ewma] table is checked against the scorer's own parameters."""
    issues = tool_issues(tmp_path, "alpha = 0.05", new)

    assert issues == [f"{TOOL_FILE}: scorers.ewma.alpha: {expected}"]


def test_driver_source_is_validated(tmp_path: Path) -> None:
    """Each tag's source table is checked against the driver's source schema."""
    issues = tool_issues(tmp_path, "level = 45.0", 'level = "high"')

    assert issues == [
        f'{TOOL_FILE}: tags[0].source.level: must be a number, got "high"'
    ]


def test_spike_fault_requires_a_tag(tmp_path: Path) -> None:
    """A spike fault must name the tag it acts on."""
    issues = tool_issues(tmp_path, 'tag = "chamber_pressure"\n', "")

    assert issues == [
        f"{TOOL_FILE}: driver.faults[0].tag: tag is required for a spike fault"
    ]


def test_stuck_fault_requires_a_duration(tmp_path: Path) -> None:
    """A stuck fault must say how long it lasts."""
    issues = tool_issues(tmp_path, "duration_s = 8\n", "")

    assert issues == [
        f"{TOOL_FILE}: driver.faults[1].duration_s: "
        "duration_s is required for a stuck fault"
    ]


def test_fault_on_unknown_tag(tmp_path: Path) -> None:
    """A fault naming a tag the tool does not have is caught when loading."""
    issues = tool_issues(tmp_path, 'tag = "esc_temp"', 'tag = "wafer_temp"')

    assert len(issues) == 1
    assert issues[0].startswith(f"{TOOL_FILE}: driver.faults[1].tag: ")
    assert "wafer_temp" in issues[0]
    assert "is not a tag of this tool" in issues[0]


# Tags and poll groups


def test_duplicate_tag_names(tmp_path: Path) -> None:
    """Two tags with one name are refused, naming where the first one is."""
    tool = TOOL + '\n[[tags]]\nname = "rf_forward_power"\nsource = { level = 0.0 }\n'
    issues = issues_of(write_config(tmp_path, tools={"etch-07": tool}))

    assert issues == [
        f'{TOOL_FILE}: tags[3].name: duplicate tag "rf_forward_power" (also tags[1])'
    ]


def test_duplicate_group_names(tmp_path: Path) -> None:
    """Two poll groups with one name are refused."""
    issues = tool_issues(tmp_path, 'name = "slow"', 'name = "fast"')

    assert issues == [f'{TOOL_FILE}: poll_groups[1].name: duplicate group "fast"']


def test_group_naming_a_missing_tag(tmp_path: Path) -> None:
    """A poll group may only list tags the tool defines."""
    issues = tool_issues(
        tmp_path, 'tags = ["esc_temp"]', 'tags = ["esc_temp", "he_flow"]'
    )

    assert issues == [f'{TOOL_FILE}: poll_groups[1].tags[1]: no tag named "he_flow"']


def test_tag_in_two_groups(tmp_path: Path) -> None:
    """A tag is read by exactly one poll group, not two."""
    issues = tool_issues(
        tmp_path, 'tags = ["esc_temp"]', 'tags = ["esc_temp", "chamber_pressure"]'
    )

    assert issues == [
        f'{TOOL_FILE}: poll_groups[1].tags[1]: tag "chamber_pressure" is already '
        'in group "fast"'
    ]


def test_tag_in_no_group(tmp_path: Path) -> None:
    """A tag that no poll group reads is an error: it would never be polled."""
    issues = tool_issues(
        tmp_path,
        'tags = ["chamber_pressure", "rf_forward_power"]',
        'tags = ["chamber_pressure"]',
    )

    assert issues == [
        f'{TOOL_FILE}: tags[1]: tag "rf_forward_power" is in no poll group'
    ]


def test_duplicate_tool_ids(tmp_path: Path) -> None:
    """Two tool files may not give the same tool id; the later file is named."""
    directory = write_config(
        tmp_path, tools={"etch-07": TOOL, "etch-7b": 'id = "etch-07"\n' + TOOL}
    )

    assert issues_of(directory) == [
        'tools/etch-7b.toml: id: tool id "etch-07" is also used by tools/etch-07.toml'
    ]


# Secrets


def test_password_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """password = "env:NAME" is replaced by that variable's value at load."""
    monkeypatch.setenv("EDGE_GATEWAY_TEST_PASSWORD", SECRET)
    main = edit(
        MAIN, "[mqtt.tls]", 'password = "env:EDGE_GATEWAY_TEST_PASSWORD"\n[mqtt.tls]'
    )

    mqtt = load_valid(tmp_path, main=main).main.mqtt

    assert mqtt.password is not None
    assert mqtt.password.get_secret_value() == SECRET


def test_password_from_file(tmp_path: Path) -> None:
    """password_file is read relative to the folder, without its trailing newline."""
    (tmp_path / "mqtt.pass").write_text(SECRET + "\n", encoding="utf-8")
    main = edit(MAIN, "[mqtt.tls]", 'password_file = "mqtt.pass"\n[mqtt.tls]')

    mqtt = load_valid(tmp_path, main=main).main.mqtt

    assert mqtt.password is not None
    assert mqtt.password.get_secret_value() == SECRET


@pytest.mark.parametrize("source", ["env", "file", "plain"])
def test_password_never_in_repr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """However it is given, the password is absent from str and repr of the config."""
    monkeypatch.setenv("EDGE_GATEWAY_TEST_PASSWORD", SECRET)
    (tmp_path / "mqtt.pass").write_text(SECRET, encoding="utf-8")
    given = {
        "env": 'password = "env:EDGE_GATEWAY_TEST_PASSWORD"',
        "file": 'password_file = "mqtt.pass"',
        "plain": f'password = "{SECRET}"',
    }[source]
    config = load_valid(tmp_path, main=edit(MAIN, "[mqtt.tls]", f"{given}\n[mqtt.tls]"))

    for text in (str(config.main.mqtt), repr(config.main.mqtt), repr(config)):
        assert SECRET not in text


def test_password_environment_variable_not_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An env: password whose variable is not set names the variable."""
    monkeypatch.delenv(UNSET_VARIABLE, raising=False)
    issues = main_issues(
        tmp_path, "[mqtt.tls]", f'password = "env:{UNSET_VARIABLE}"\n[mqtt.tls]'
    )

    assert issues == [
        f"gateway.toml: mqtt.password: environment variable {UNSET_VARIABLE} is not set"
    ]


def test_password_and_password_file_both_given(tmp_path: Path) -> None:
    """Giving both password and password_file is one error that shows neither."""
    (tmp_path / "mqtt.pass").write_text(SECRET, encoding="utf-8")
    issues = main_issues(
        tmp_path,
        "[mqtt.tls]",
        f'password = "{SECRET}"\npassword_file = "mqtt.pass"\n[mqtt.tls]',
    )

    assert issues == [
        "gateway.toml: mqtt.password: give password or password_file, not both"
    ]


def test_password_file_missing(tmp_path: Path) -> None:
    """A password_file that cannot be read names the file and the reason."""
    issues = main_issues(
        tmp_path, "[mqtt.tls]", 'password_file = "none.pass"\n[mqtt.tls]'
    )

    assert issues == [
        f"gateway.toml: mqtt.password_file: cannot read {tmp_path / 'none.pass'}: "
        f"{os.strerror(2)}"
    ]


def test_password_file_not_text(tmp_path: Path) -> None:
    """A password_file that is not UTF-8 text is reported without its content."""
    (tmp_path / "mqtt.pass").write_bytes(b"\xff" + SECRET.encode())
    issues = main_issues(
        tmp_path, "[mqtt.tls]", 'password_file = "mqtt.pass"\n[mqtt.tls]'
    )

    assert issues == [
        f"gateway.toml: mqtt.password_file: {tmp_path / 'mqtt.pass'} is not UTF-8 text"
    ]


def test_password_of_wrong_type_is_not_shown(tmp_path: Path) -> None:
    """An error about a password's value says what is wrong without showing it."""
    issues = main_issues(tmp_path, "[mqtt.tls]", f'password = ["{SECRET}"]\n[mqtt.tls]')

    assert issues == ["gateway.toml: mqtt.password: must be a string, got (secret)"]


# Collecting every issue


def test_issues_in_two_files_are_all_reported(tmp_path: Path) -> None:
    """An error in the main file does not hide one in a tool file, nor the reverse."""
    main = edit(MAIN, "port = 8883", "port = 0")
    tool = edit(TOOL, "scale = 1.0", 'scale = "x"')
    issues = issues_of(write_config(tmp_path, main=main, tools={"etch-07": tool}))

    assert issues == [
        "gateway.toml: mqtt.port: must be >= 1, got 0",
        f'{TOOL_FILE}: tags[1].scale: must be a number, got "x"',
    ]


def test_issues_in_every_tool_file_are_reported(tmp_path: Path) -> None:
    """A broken tool file does not stop the next one from being checked."""
    broken = edit(TOOL, "[alerts]", "[alerts")
    wrong = edit(TOOL, 'tag = "esc_temp"', 'tag = "he_flow"')
    directory = write_config(
        tmp_path, tools={"cvd-02": broken, "etch-07": TOOL, "etch-09": wrong}
    )

    issues = issues_of(directory)

    assert len(issues) == 2
    assert issues[0].startswith("tools/cvd-02.toml: not valid TOML: ")
    assert issues[1].startswith("tools/etch-09.toml: driver.faults[1].tag: ")


def test_every_issue_in_one_file_is_reported(tmp_path: Path) -> None:
    """Several broken keys in one file, in different tables, are each reported."""
    tool = edit(TOOL, "seed = 7", 'seed = "7"')
    tool = edit(tool, "alpha = 0.05", "alpha = 2")
    tool = edit(tool, "interval_s = 1.0", "interval_s = 0")
    tool = edit(tool, "telemetry = true", "telemetry = 1")
    issues = issues_of(write_config(tmp_path, tools={"etch-07": tool}))

    assert sorted(issues) == [
        f'{TOOL_FILE}: driver.seed: must be a whole number, got "7"',
        f"{TOOL_FILE}: poll_groups[0].interval_s: must be > 0.0, got 0",
        f"{TOOL_FILE}: scorers.ewma.alpha: must be <= 1.0, got 2",
        f"{TOOL_FILE}: tags[2].telemetry: must be true or false, got 1",
    ]


# What a loaded tool looks like


def test_tool_id_defaults_to_file_stem(tmp_path: Path) -> None:
    """Without an id key, a tool's id is its file name without .toml."""
    config = load_config(
        write_config(tmp_path, tools={"etch-07": TOOL, "b": 'id = "cvd-02"\n' + TOOL})
    )

    assert sorted(tool.id for tool in config.tools) == ["cvd-02", "etch-07"]


def test_tables_become_validated_models(tmp_path: Path) -> None:
    """The driver, each source and each scorer's params become their own models."""
    tool = load_valid(tmp_path).tools[0]

    assert isinstance(tool.driver, SimulatedSettings)
    assert tool.driver.seed == 7
    assert tool.driver.faults[0] == FaultSpec(
        kind="spike", tag="chamber_pressure", at_s=600, magnitude=25.0
    )
    assert tool.tags[0].source == SignalSpec(level=45.0, noise=0.3)
    assert tool.scorers == {
        "ewma": EwmaParams(alpha=0.05, warmup=30),
        "level": LevelParams(),
    }


def test_arrays_become_tuples(tmp_path: Path) -> None:
    """TOML arrays are loaded as tuples, so the loaded configuration is immutable."""
    tool = load_valid(tmp_path).tools[0]

    assert tool.tags[0].limits == (0.0, 500.0)
    assert tool.tags[1].scorers == ("ewma",)
    assert tool.tags[0].scorers == ("ewma", "level")  # the default
    assert tool.poll_groups[0].tags == ("chamber_pressure", "rf_forward_power")
    assert isinstance(tool.driver.faults, tuple)
    assert isinstance(tool.poll_groups, tuple)
    assert isinstance(tool.tags, tuple)


def test_readings_per_second_of_a_tool(tmp_path: Path) -> None:
    """A tool's reading rate is the sum of each group's tags over its interval."""
    tool = load_valid(tmp_path).tools[0]

    assert tool.readings_per_s == pytest.approx(2 / 1.0 + 1 / 10.0)


OPCUA_TOOL = """\
[driver]
kind = "opcua"
endpoint = "opc.tcp://10.0.0.5:4840/"
security_policy = "Basic256Sha256"
security_mode = "SignAndEncrypt"
identity = "username"
username = "gateway"
password_file = "secrets/litho.password"
pki_dir = "pki"

[[poll_groups]]
name = "g"
interval_s = 1.0
tags = ["dose"]

[[tags]]
name = "dose"
source = { node_id = "ns=2;s=Dose" }
"""


def test_relative_driver_paths_are_taken_from_the_folder(tmp_path: Path) -> None:
    """A driver's relative file and folder paths resolve under the config folder."""
    config = load_config(write_config(tmp_path, tools={"litho-05": OPCUA_TOOL}))

    [tool] = config.tools
    assert tool.driver.password_file == tmp_path / "secrets/litho.password"
    assert tool.driver.pki_dir == tmp_path / "pki"
