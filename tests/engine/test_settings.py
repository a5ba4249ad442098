"""Configuration errors name the MATCHER_* variable, its value and what is allowed, in one line each."""

from __future__ import annotations

import pytest

from engine.errors import CONFIG_ERROR_EXIT, ConfigError, MatcherError
from engine.settings import load_settings
from matcher.cli import main


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("MATCHER_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("env", "value", "allowed"),
    [
        ("MATCHER_RECOMMEND__OVERSAMPLE", "0", "greater than or equal to 1"),
        ("MATCHER_RECOMMEND__AGGREGATION", "median", "'harmonic', 'geometric', 'min' or 'arithmetic'"),
        ("MATCHER_STORE_BACKEND", "cloud", "'auto', 'edge', 'local' or 'server'"),
        ("MATCHER_QDRANT_TIMEOUT_S", "soon", "a valid number, unable to parse string as a number"),
        ("MATCHER_MIN_AGE", "16", "greater than or equal to 18"),
        ("MATCHER_MAX_AGE", "12", "greater than or equal to 18"),
    ],
)
def test_bad_value_names_the_variable_value_and_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, allowed: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert isinstance(info.value, MatcherError)
    assert message.splitlines() == [f"{env}={value!r} is not allowed: it should be {allowed}"], message


def test_min_age_above_max_age_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATCHER_MIN_AGE", "40")
    monkeypatch.setenv("MATCHER_MAX_AGE", "30")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == (
        "MATCHER_MIN_AGE=40 is above MATCHER_MAX_AGE=30: the minimum age must be at most the maximum age"
    )


def test_good_ages_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATCHER_MIN_AGE", "21")
    monkeypatch.setenv("MATCHER_MAX_AGE", "21")
    s = load_settings()
    assert (s.min_age, s.max_age) == (21, 21)


def test_two_bad_values_give_two_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATCHER_RECOMMEND__OVERSAMPLE", "0")
    monkeypatch.setenv("MATCHER_ENCODER__BATCH_SIZE", "-3")
    with pytest.raises(ConfigError) as info:
        load_settings()
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert any(line.startswith("MATCHER_RECOMMEND__OVERSAMPLE='0'") for line in lines)
    assert any(line.startswith("MATCHER_ENCODER__BATCH_SIZE='-3'") for line in lines)


def test_nested_json_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATCHER_RECOMMEND", '{"oversample": 0}')
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "MATCHER_RECOMMEND__OVERSAMPLE (from MATCHER_RECOMMEND)=" in str(info.value)


def test_a_secret_value_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATCHER_SERVE", '{"api_key": ["sk-very-secret"]}')
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "sk-very-secret" not in str(info.value)


@pytest.mark.parametrize("command", [["recommend", "u1"], ["stats"], ["delete-user", "u1"]])
def test_cli_prints_one_line_and_exits_with_the_config_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: object, command: list[str]
) -> None:
    monkeypatch.setenv("MATCHER_RECOMMEND__OVERSAMPLE", "0")
    monkeypatch.setenv("MATCHER_STORE_PATH", str(tmp_path))
    code = main(command)
    err = capsys.readouterr().err
    assert code == CONFIG_ERROR_EXIT == 3
    assert err.splitlines() == [
        f"matcher {command[0]}: configuration error: MATCHER_RECOMMEND__OVERSAMPLE='0' is not allowed: "
        "it should be greater than or equal to 1"
    ]
    assert "Traceback" not in err and "validation error" not in err


def test_recommend_without_settings_raises_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.recommend import recommend

    monkeypatch.setenv("MATCHER_MIN_AGE", "17")
    with pytest.raises(ConfigError, match="MATCHER_MIN_AGE='17'"):
        recommend("u1")
