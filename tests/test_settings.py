"""Settings: seed variables and URL forms, one-sentence errors naming the variable, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from windmill.commands import main
from windmill.errors import ConfigError
from windmill.settings import load_settings, mask_url, settings_from_mapping

SEED = {
    "QUEUE_HOST": "rabbit.local", "QUEUE_USER": "farm", "QUEUE_PASSWORD": "s3cret-q",
    "DB_HOST": "db.local", "DB_NAME": "animal_farm", "DB_USER": "farm", "DB_PASSWORD": "s3cret-db",
    "WORKER_ID": "w1", "LOG_LEVEL": "debug", "SERVICE_NAME": "yolov8",
}


def test_seed_variables_build_both_urls() -> None:
    settings = settings_from_mapping(SEED)
    assert settings.database_url == "postgresql://farm:s3cret-db@db.local:5432/animal_farm"
    assert settings.amqp_url == "amqp://farm:s3cret-q@rabbit.local:5672/%2F"
    assert (settings.worker_id, settings.log_level, settings.service_name) == ("w1", "DEBUG", "yolov8")


def test_url_forms_win_over_seed_variables() -> None:
    settings = settings_from_mapping({**SEED, "WINDMILL_DATABASE_URL": "postgresql://u@h/d",
                                      "WINDMILL_AMQP_URL": "amqps://u:p@h:5671/v"})
    assert settings.database_url == "postgresql://u@h/d"
    assert settings.amqp_url == "amqps://u:p@h:5671/v"


def test_nothing_configured_means_embedded_database_and_job_table_queues() -> None:
    settings = settings_from_mapping({})
    assert settings.uses_embedded_database and not settings.uses_rabbitmq


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DB_HOST": "h", "DB_USER": "u"}, "DB_NAME"),
        ({"DB_HOST": "h", "DB_NAME": "d"}, "DB_USER"),
        ({"DB_HOST": "h", "DB_NAME": "d", "DB_USER": "u", "DB_PORT": "54x"}, "DB_PORT"),
        ({"QUEUE_HOST": "h"}, "QUEUE_USER"),
        ({"QUEUE_HOST": "h", "QUEUE_USER": "u", "QUEUE_PORT": "70000"}, "QUEUE_PORT"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"WINDMILL_DATABASE_URL": "mysql://x"}, "WINDMILL_DATABASE_URL"),
        ({"WINDMILL_AMQP_URL": "http://x"}, "WINDMILL_AMQP_URL"),
        ({"WINDMILL_SERVICE_CONFIG": "/nonexistent/catalog.json"}, "WINDMILL_SERVICE_CONFIG"),
        ({"WINDMILL_ALLOW_PRIVATE_URLS": "perhaps"}, "WINDMILL_ALLOW_PRIVATE_URLS"),
    ],
)
def test_invalid_setting_is_one_sentence_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as error:
        settings_from_mapping(env)
    message = str(error.value)
    assert message.startswith(variable) or f" {variable} " in message
    assert "\n" not in message


def test_env_file_is_read_and_environment_overrides_it(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("DB_HOST=file-host\nDB_NAME=n\nDB_USER=u\nWORKER_ID=from-file\n")
    settings = load_settings(env_file, environ={"WORKER_ID": "from-env"})
    assert settings.database_url == "postgresql://u@file-host:5432/n"
    assert settings.worker_id == "from-env"


def test_missing_explicit_env_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.env", environ={})


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://farm:s3cret@db:5432/x", "postgresql://farm:****@db:5432/x"),
        ("amqp://guest:guest@localhost:5672/%2F", "amqp://guest:****@localhost:5672/%2F"),
        ("postgresql://farm@db/x", "postgresql://farm@db/x"),
    ],
)
def test_mask_url_hides_only_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_config_command_masks_passwords(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for key, value in SEED.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    assert "farm:****@db.local:5432/animal_farm" in result.output
    assert "farm:****@rabbit.local" in result.output


def test_config_command_reports_a_bad_setting_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOG_LEVEL", "loud")
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["Error: LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, "
                                                  "CRITICAL, not 'loud'"]


def test_the_rabbitmq_retry_budget_is_configurable_and_checked() -> None:
    assert (settings_from_mapping({}).amqp_task_attempts, settings_from_mapping({}).amqp_retry_delay_s) == (5, 1.0)
    custom = settings_from_mapping({"WINDMILL_AMQP_TASK_ATTEMPTS": "2", "WINDMILL_AMQP_RETRY_DELAY_S": "0.1"})
    assert (custom.amqp_task_attempts, custom.amqp_retry_delay_s) == (2, 0.1)
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ConfigError, match=r"^WINDMILL_AMQP_TASK_ATTEMPTS must be a whole number"):
            settings_from_mapping({"WINDMILL_AMQP_TASK_ATTEMPTS": bad})
    with pytest.raises(ConfigError, match=r"^WINDMILL_AMQP_RETRY_DELAY_S must be a number of seconds"):
        settings_from_mapping({"WINDMILL_AMQP_RETRY_DELAY_S": "0"})
    assert settings_from_mapping({"WINDMILL_DATABASE_WAIT_S": "2.5"}).database_wait_s == 2.5
    assert settings_from_mapping({}).database_wait_s == 30.0
