"""Settings: seed variables and URL forms, one-sentence errors naming the variable, secrets masked."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
from click.testing import CliRunner

from windmill.commands import main
from windmill.errors import ConfigError
from windmill.settings import (
    SETTING_VARIABLES,
    Settings,
    load_configuration,
    load_settings,
    mask_url,
    settings_from_mapping,
)

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
        # Each of these once passed, then failed later with a traceback (a port) or read as "anywhere" (roots).
        ({"WINDMILL_AMQP_URL": "amqp://u:p@h:abc/v"}, "WINDMILL_AMQP_URL"),
        ({"WINDMILL_AMQP_URL": "amqp://u:p@h:99999/v"}, "WINDMILL_AMQP_URL"),
        ({"WINDMILL_AMQP_MANAGEMENT_URL": "http://admin:x@h:abc"}, "WINDMILL_AMQP_MANAGEMENT_URL"),
        ({"WINDMILL_IMAGE_ROOTS": ":"}, "WINDMILL_IMAGE_ROOTS"),
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


def test_a_line_the_settings_file_cannot_parse_is_named_with_the_file_and_the_rest_is_read(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env_file = tmp_path / "windmill.env"
    env_file.write_text("WORKER_ID=w7\nthis line is not a setting\nLOG_LEVEL=warning\n")
    with caplog.at_level("WARNING"):
        settings = load_settings(env_file, environ={})
    assert (settings.worker_id, settings.log_level) == ("w7", "WARNING")
    assert [record.getMessage() for record in caplog.records] == [
        f"{env_file}: could not parse line 2; it is ignored"]


def test_a_settings_file_that_is_not_utf8_text_is_one_sentence(tmp_path: Path) -> None:
    env_file = tmp_path / "windmill.env"
    env_file.write_bytes(b"\xff\xfe\x00garbage\n")  # once a UnicodeDecodeError's traceback, for every command
    with pytest.raises(ConfigError, match=rf"^{env_file} is not a text file in UTF-8 \(the byte at offset 0 is not"):
        load_settings(env_file, environ={})


def test_a_settings_file_that_cannot_be_read_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # /etc/windmill/windmill.env is mode 600 (it holds passwords): another user than its owner got a traceback.
    import windmill.settings

    def refused(path: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    env_file = tmp_path / "windmill.env"
    env_file.write_text("LOG_LEVEL=INFO\n")
    monkeypatch.setattr(windmill.settings, "dotenv_values", refused)  # the test runs as root, who reads it all
    with pytest.raises(ConfigError, match=rf"^cannot read the settings file {env_file}: Permission denied$"):
        load_settings(env_file, environ={})


@pytest.mark.parametrize("variable", ["WINDMILL_DATABASE_URL", "WINDMILL_AMQP_URL"])
def test_a_url_that_cannot_be_split_is_one_sentence_without_its_password(variable: str) -> None:
    scheme = "postgresql" if variable == "WINDMILL_DATABASE_URL" else "amqp"
    with pytest.raises(ConfigError) as refused:
        settings_from_mapping({variable: f"{scheme}://user:hunter2@[::1/db"})
    assert str(refused.value) == f"{variable} cannot be read as a URL (Invalid IPv6 URL)"


def test_missing_explicit_env_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.env", environ={})


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://farm:s3cret@db:5432/x", "postgresql://farm:****@db:5432/x"),
        ("amqp://guest:guest@localhost:5672/%2F", "amqp://guest:****@localhost:5672/%2F"),
        ("postgresql://farm@db/x", "postgresql://farm@db/x"),
        # libpq's other place for it (once printed as it was by `config`)
        ("postgresql://farm@db/x?password=s3cret&sslmode=require", "postgresql://farm@db/x?password=****&sslmode=require"),
        ("postgresql://farm:a@db/x?sslmode=require&PASSWORD=b", "postgresql://farm:****@db/x?sslmode=require&PASSWORD=****"),
        # a Unix socket: no host, which `config` once showed as `postgresql:/windmill?host=…`
        ("postgresql:///windmill?host=/run/postgresql", "postgresql:///windmill?host=/run/postgresql"),
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


# A password whose characters end a URL's user part early for a naive reader: its head and its tail must both stay
# hidden (`config` once printed the whole of it, and errors named its tail as the host or its head as the port).
HEAD, TAIL = "Head7", "S3cretTail"


@pytest.mark.parametrize("character", ["#", "?", "@", "/"])
@pytest.mark.parametrize("scheme", ["postgresql", "amqp"])
def test_no_part_of_a_password_shows_whatever_characters_it_holds(
        character: str, scheme: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from windmill.connection_urls import describe_url
    from windmill.db.connect import describe_conninfo

    variable = "WINDMILL_DATABASE_URL" if scheme == "postgresql" else "WINDMILL_AMQP_URL"
    url = f"{scheme}://windmill:{HEAD}{character}{TAIL}@127.0.0.1:5432/db?sslpassword=K3yPhrase&sslmode=require"
    shown = [mask_url(url), describe_url(url)] + ([describe_conninfo(url)] if scheme == "postgresql" else [])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(variable, url)
    for command in (["config"], ["config", "--json"]):
        result = CliRunner().invoke(main, command)
        shown.append(result.output)
    try:
        settings_from_mapping({variable: url})
    except ConfigError as refused:  # a reader would take the password's head for the host or port: said so
        shown.append(str(refused))
    for text in shown:
        for secret in (HEAD, TAIL, "K3yPhrase"):
            assert secret not in text, f"{secret!r} of {url!r} shows in {text!r}"
    assert mask_url(url).startswith(f"{scheme}://windmill:****@127.0.0.1:5432/db?sslpassword=****&")
    assert describe_url(url) == "127.0.0.1:5432/db"


@pytest.mark.parametrize(("url", "accepted"), [
    ("postgresql://windmill:a#b@db/x", True), ("postgresql://windmill:a?b@db/x", True),  # libpq reads them right
    ("postgresql://windmill:a@b@db/x", False), ("postgresql://windmill:a/b@db/x", False),
    ("amqp://windmill:a@b@mq/%2F", True),  # urllib (pika) ends the user part at the last @ of the host part
    ("amqp://windmill:a#b@mq/%2F", False), ("amqp://windmill:a?b@mq/%2F", False), ("amqp://windmill:a/b@mq/%2F", False),
])
def test_a_password_its_reader_would_cut_short_is_refused_as_such(url: str, accepted: bool) -> None:
    variable = "WINDMILL_DATABASE_URL" if url.startswith("postgresql") else "WINDMILL_AMQP_URL"
    if accepted:
        settings_from_mapping({variable: url})
        return
    with pytest.raises(ConfigError, match=rf"^{variable}'s user or password holds an? '.*not percent-encoded"):
        settings_from_mapping({variable: url})


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
    assert settings_from_mapping({}).outage_wait_s == 300.0
    assert settings_from_mapping({"WINDMILL_OUTAGE_WAIT_S": "90"}).outage_wait_s == 90.0
    with pytest.raises(ConfigError, match=r"^WINDMILL_OUTAGE_WAIT_S must be a number of seconds between 0 and 1800"):
        settings_from_mapping({"WINDMILL_OUTAGE_WAIT_S": "3600"})  # past RabbitMQ's consumer_timeout


# -- where the settings come from ----------------------------------------------------------------------------------


@pytest.fixture
def env_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A settings file in each place the lookup knows, each naming itself as WORKER_ID; the working directory is
    the one holding ./.env."""
    files = {}
    for place in ("option", "variable", "dotenv", "system"):
        folder = tmp_path / place
        folder.mkdir()
        files[place] = folder / (".env" if place == "dotenv" else f"{place}.env")
        files[place].write_text(f"WORKER_ID=from-{place}\nDB_HOST=db-{place}\nDB_NAME=n\nDB_USER=u\n")
    monkeypatch.chdir(files["dotenv"].parent)
    return files


def test_the_settings_file_is_the_first_found_of_option_variable_dotenv_and_the_systems(
        env_files: dict[str, Path]) -> None:
    system = {"WINDMILL_SYSTEM_ENV_FILE": str(env_files["system"])}
    with_variable = {**system, "WINDMILL_ENV_FILE": str(env_files["variable"])}
    assert load_settings(env_files["option"], environ=with_variable).worker_id == "from-option"
    assert load_settings(None, environ=with_variable).worker_id == "from-variable"
    assert load_settings(None, environ=system).worker_id == "from-dotenv"
    env_files["dotenv"].unlink()
    settings, source = load_configuration(None, environ=system)
    assert settings.database_url == "postgresql://u@db-system:5432/n"  # a deployed host's status reads its database
    assert source.env_file == env_files["system"].absolute()
    env_files["system"].unlink()
    settings, source = load_configuration(None, environ=system)
    assert settings.uses_embedded_database and source.env_file is None
    assert source.searched == (".env", str(env_files["system"]))


def test_a_named_settings_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^WINDMILL_ENV_FILE names .*nope\.env, which does not exist$"):
        load_settings(None, environ={"WINDMILL_ENV_FILE": str(tmp_path / "nope.env")})


def test_config_says_where_each_setting_came_from(env_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOG_LEVEL", "WINDMILL_ENV_FILE", "WORKER_ID", "DB_HOST", "WINDMILL_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DB_PORT", "6543")
    monkeypatch.setenv("WINDMILL_PORT_OFFSET", "100")
    result = CliRunner().invoke(main, ["config", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["env_file"] == str(env_files["dotenv"].absolute())
    sources = shown["sources"]
    dotenv = env_files["dotenv"].absolute()
    assert sources["database_url"] == f"environment (DB_PORT); {dotenv} (DB_HOST, DB_NAME, DB_USER)"
    assert sources["worker_id"] == f"{env_files['dotenv'].absolute()} (WORKER_ID)"
    assert sources["port_offset"] == "environment (WINDMILL_PORT_OFFSET)"
    assert sources["log_level"] == "default"
    text = CliRunner().invoke(main, ["config"]).output
    assert text.splitlines()[0] == f"settings file: {env_files['dotenv'].absolute()}"
    # With the URL set, the seed's variables are not read: they are named as ignored, not as the URL's source.
    monkeypatch.setenv("WINDMILL_DATABASE_URL", "postgresql://u@h/d")
    shown = json.loads(CliRunner().invoke(main, ["config", "--json"]).output)
    assert shown["sources"]["database_url"] == (
        "environment (WINDMILL_DATABASE_URL); ignored: DB_HOST, DB_PORT, DB_NAME, DB_USER "
        "(WINDMILL_DATABASE_URL is set)")
    assert "port_offset          100  [environment (WINDMILL_PORT_OFFSET)]" in text


def test_an_empty_variable_in_the_environment_unsets_the_files_and_config_says_so(tmp_path: Path) -> None:
    # `WINDMILL_PORT_OFFSET= windmill-cli config` showed 0 with the file named as its source; an empty LOG_LEVEL was
    # an error where every other empty setting is unset.
    path = tmp_path / "windmill.env"
    path.write_text("WINDMILL_PORT_OFFSET=-440\nLOG_LEVEL=DEBUG\n", encoding="utf-8")
    settings, source = load_configuration(None, environ={"WINDMILL_ENV_FILE": str(path), "WINDMILL_PORT_OFFSET": "",
                                                         "LOG_LEVEL": "", "WINDMILL_SYSTEM_ENV_FILE": "/nonexistent"})
    assert (settings.port_offset, settings.log_level) == (0, "INFO")
    assert source.origin("port_offset") == f"unset by the environment (WINDMILL_PORT_OFFSET empty there, over {path})"
    assert source.origin("log_level") == f"unset by the environment (LOG_LEVEL empty there, over {path})"


def test_config_json_has_typed_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WINDMILL_PORT_OFFSET", "100")
    monkeypatch.setenv("WINDMILL_ALLOW_PRIVATE_URLS", "true")
    monkeypatch.setenv("WINDMILL_IMAGE_ROOTS", f"{tmp_path}/a:{tmp_path}/b")
    monkeypatch.setenv("WINDMILL_HARMONY", '{"iou_threshold": 0.4}')
    monkeypatch.setenv("WINDMILL_DATABASE_URL", "postgresql://u:secret@h:5433/d")
    settings = json.loads(CliRunner().invoke(main, ["config", "--json"]).output)["settings"]
    assert settings["port_offset"] == 100 and settings["allow_private_urls"] is True
    assert settings["image_roots"] == [f"{tmp_path}/a", f"{tmp_path}/b"]
    assert settings["harmony"]["iou_threshold"] == 0.4 and settings["harmony"]["split_crowds"] is True
    assert settings["backfill_interval_s"] == 60.0 and settings["amqp_url"] is None
    assert settings["database_url"] == "postgresql://u:****@h:5433/d"


def test_every_setting_and_every_variable_has_its_source_listed() -> None:
    from tests.test_deploy_files import setting_names

    assert set(SETTING_VARIABLES) == {item.name for item in fields(Settings)}
    listed = {name for names in SETTING_VARIABLES.values() for name in names}
    assert listed == setting_names() - {"WINDMILL_ENV_FILE", "WINDMILL_SYSTEM_ENV_FILE"}


def test_unknown_harmony_keys_are_listed_with_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as refused:
        settings_from_mapping({"WINDMILL_HARMONY": '{"iou": 2, "fusion": "union", "crowds": false}'})
    assert str(refused.value) == ("WINDMILL_HARMONY has unknown keys 'iou', 'crowds'; valid keys: iou_threshold, "
                                  "containment_threshold, min_services, single_service_min_confidence, fusion, "
                                  "split_crowds, emoji_from_labels")


@pytest.mark.parametrize("url", ["postgresql://u@localhost:abc/d", "postgresql://u@localhost:-1/d",
                                 "postgresql://u@h:99999/d", "postgresql://u@h1:5432,h2:0/d",
                                 "postgresql://u@h/d?port=70000"])
def test_a_database_url_with_a_bad_port_is_refused_naming_the_variable(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^WINDMILL_DATABASE_URL has port '[^']*'; a port is a number between 1 "
                                          r"and 65535$"):
        settings_from_mapping({"WINDMILL_DATABASE_URL": url})


def test_a_database_url_libpq_cannot_read_is_refused_without_repeating_it() -> None:
    with pytest.raises(ConfigError) as refused:
        settings_from_mapping({"WINDMILL_DATABASE_URL": "postgresql://u:hunter2@h/d?nonsense=1"})
    assert "hunter2" not in str(refused.value) and str(refused.value).startswith("WINDMILL_DATABASE_URL cannot be")


def test_an_empty_url_in_the_file_leaves_the_seeds_variables_in_effect_and_named_so(tmp_path: Path) -> None:
    env_file = tmp_path / "windmill.env"
    env_file.write_text("WINDMILL_DATABASE_URL=\nDB_HOST=h\nDB_NAME=n\nDB_USER=u\n")
    settings, source = load_configuration(env_file, environ={})
    assert settings.database_url == "postgresql://u@h:5432/n"  # `KEY=` sets nothing
    assert source.origin("database_url") == f"{env_file.absolute()} (DB_HOST, DB_NAME, DB_USER)"
