"""Settings come from CAIRN_* variables; every bad or missing value is named."""

from __future__ import annotations

import pytest

from cairn_common.settings import CommonSettings, SettingsError, load_settings

BASE = {"CAIRN_NATS_URL": "nats://127.0.0.1:1", "CAIRN_DATABASE_URL": "postgresql://x/y"}


def test_values_are_read_and_converted_from_strings() -> None:
    s = load_settings(
        CommonSettings,
        {**BASE, "CAIRN_PARTITIONS": "16", "CAIRN_MIGRATE_ON_START": "false",
         "CAIRN_SHUTDOWN_GRACE_SECONDS": "2.5", "CAIRN_LOG_FORMAT": "json"},
    )  # fmt: skip
    assert s.partitions == 16
    assert s.migrate_on_start is False
    assert s.shutdown_grace_seconds == 2.5
    assert s.log_format == "json"
    assert s.namespace == "cairn"


def test_every_missing_required_variable_is_named() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(CommonSettings, {})
    assert "CAIRN_NATS_URL is required but not set" in str(err.value)
    assert "CAIRN_DATABASE_URL is required but not set" in str(err.value)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("CAIRN_PARTITIONS", "many", "CAIRN_PARTITIONS='many' is invalid: expected `int`"),
        ("CAIRN_LOG_FORMAT", "xml", "CAIRN_LOG_FORMAT='xml' is invalid"),
        ("CAIRN_MIGRATE_ON_START", "perhaps", "CAIRN_MIGRATE_ON_START='perhaps' is invalid"),
        ("CAIRN_PARTITIONS", "0", "CAIRN_PARTITIONS must be between 1 and 4096"),
        ("CAIRN_NAMESPACE", "a.b", "CAIRN_NAMESPACE='a.b' may hold only"),
        ("CAIRN_INPUTS_MAX_BYTES", "1000", "CAIRN_INPUTS_MAX_BYTES must be at least 1048576"),
    ],
)
def test_a_bad_value_names_the_variable(variable: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError, match="^" + expected.replace("(", r"\(").replace(")", r"\)")):
        load_settings(CommonSettings, {**BASE, variable: value})
