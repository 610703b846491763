"""Configuration: validated once, errors name the key, the value and what was expected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from supplier.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
HUB = {"name": "smshub", "key": "0123456789abcdef", "push_url": "https://hub.example/agent/api/sms"}


def test_minimal_config_gets_the_documented_defaults() -> None:
    config = parse_config({"hubs": [HUB]})
    assert config.server.listen == ("0.0.0.0", 8000)
    assert config.server.path == "/"
    assert config.modems.ports == ("/dev/serial/by-path/*",)
    assert config.modems.baudrate == 115200
    assert config.activation.release_after == 1200.0
    assert config.status.listen == ("127.0.0.1", 8001)
    assert config.services == ("vk", "ok", "wa", "tg", "go", "fb", "ig", "tw")
    assert config.hubs[0].profile == "smshub"
    assert config.hubs[0].retry_interval == 10.0


def test_durations_and_overrides() -> None:
    config = parse_config(
        {
            "hubs": [{**HUB, "retry_interval": "1m30s"}],
            "activation": {"release_after": "20m"},
            "sims": {"8970101234567890123": {"number": 79281234567, "operator": "mts"}},
            "networks": {"25077": {"country": "russia", "operator": "rostelecom"}},
            "modems": {"pin": 1234},
        }
    )
    assert config.hubs[0].retry_interval == 90.0
    assert config.activation.release_after == 1200.0
    assert config.sims["8970101234567890123"].number == "79281234567"
    assert config.networks["25077"].operator == "rostelecom"
    assert config.modems.pin == "1234"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "hubs: missing"),
        ({"hubs": []}, "hubs: []: expected at least one hub"),
        (
            {"hubs": [{**HUB, "push_url": "ftp://x"}]},
            "hubs[0].push_url: 'ftp://x': expected an http:// or https:// URL",
        ),
        ({"hubs": [{**HUB, "profile": "grizzly"}]}, "hubs[0].profile: 'grizzly'"),
        (
            {"hubs": [{**HUB, "key": "short"}]},
            "hubs[0].key: '***': expected a key of at least 8 characters",
        ),
        ({"hubs": [HUB, {**HUB, "name": "other"}]}, "expected every hub to have its own key"),
        (
            {"hubs": [HUB], "server": {"listen": "8000"}},
            "server.listen: '8000': expected HOST:PORT",
        ),
        (
            {"hubs": [HUB], "activation": {"release_after": "soon"}},
            "activation.release_after: 'soon': expected a duration",
        ),
        (
            {"hubs": [HUB], "modems": {"pin": "12"}},
            "modems.pin: '***': expected a PIN of 4-8 digits",
        ),
        ({"hubs": [HUB], "modems": {"baudrate": 0}}, "modems.baudrate: 0:"),
        ({"hubs": [HUB], "services": ["VK"]}, "services[0]: 'VK': expected a lower-case slug"),
        (
            {"hubs": [HUB], "sims": {"123": {"number": 79281234567}}},
            "expected ICCIDs of 18-20 digits",
        ),
        (
            {"hubs": [HUB], "sims": {"8970101234567890123": {"number": 1}}},
            "sims.8970101234567890123.number: 1: expected a phone number",
        ),
        ({"hubs": [HUB], "serverr": {}}, "serverr: unknown key"),
        ([1, 2], "expected a mapping of settings at the top level"),
    ],
)
def test_bad_settings_name_key_value_and_expectation(data: object, expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(data, "test.yaml")
    message = str(excinfo.value)
    assert message.startswith("test.yaml: ")
    assert expected in message
    assert "\n" not in message
    assert "0123456789abcdef" not in message  # keys never printed


def test_unreadable_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("hubs: [\n  - name: x\n    key: : :\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(broken)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "supplier", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_check_config_prints_settings_with_keys_masked(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        f"hubs:\n  - name: smshub\n    key: '{HUB['key']}'\n    push_url: '{HUB['push_url']}'\n"
    )
    result = _cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert '"key": "***"' in result.stdout
    assert HUB["key"] not in result.stdout


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("hubs:\n  - name: smshub\n    key: 0123456789abcdef\n    push_url: nowhere\n")
    for command in ("check-config", "run"):
        result = _cli(command, "--config", str(path))
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1
        assert "hubs[0].push_url: 'nowhere': expected an http:// or https:// URL" in result.stderr


def test_example_config_is_valid() -> None:
    example = ROOT / "config.example.yaml"
    if example.exists():
        load_config(example)


# -- storage: a SQLite file or a PostgreSQL URL (issue 16) --------------------------------


def test_storage_url_selects_postgresql_and_never_shows_its_password() -> None:
    config = parse_config({"hubs": [HUB], "storage": {"url": "postgresql://sup:pw1@db/sup"}})
    assert config.storage.url == "postgresql://sup:pw1@db/sup"
    assert "pw1" not in repr(config)
    assert parse_config({"hubs": [HUB]}).storage.url is None  # SQLite stays the default
    with pytest.raises(ConfigError) as caught:
        parse_config({"hubs": [HUB], "storage": {"url": "mysql://root:pw1@db/sup"}})
    assert str(caught.value) == (
        "config: storage.url: 'mysql://root@db/sup': expected a postgresql:// URL, "
        "e.g. postgresql://supplier@db/supplier"
    )
    both = {"path": "/var/lib/supplier/s.db", "url": "postgres://sup:pw1@db/sup"}
    with pytest.raises(ConfigError, match=r"storage: .*: give path .* or url .*, not both"):
        parse_config({"hubs": [HUB], "storage": both})


def _storage_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "pg.yaml"
    path.write_text(
        f"hubs:\n  - name: smshub\n    key: '{HUB['key']}'\n    push_url: '{HUB['push_url']}'\n"
        f"storage: {{url: '{url}'}}\n"
    )
    return path


def test_check_config_on_postgresql_tries_one_connection(tmp_path: Path, pg_url: str) -> None:
    # Reachable: no warning about the database; the URL shown without a password.
    with_password = pg_url.replace("supplier@", "supplier:pw1@")  # trust auth ignores it
    result = _cli("check-config", "--config", str(_storage_config(tmp_path, with_password)))
    assert result.returncode == 0, result.stderr
    assert f'"url": "{pg_url}"' in result.stdout and "pw1" not in result.stdout
    assert "storage" not in result.stderr
    # Unreachable: a warning naming the key and the URL, still no password, exit 0.
    nowhere = f"postgresql://supplier:pw1@/supplier?host={tmp_path}/no-server"
    result = _cli("check-config", "--config", str(_storage_config(tmp_path, nowhere)))
    assert result.returncode == 0, result.stderr
    [warning] = [line for line in result.stderr.splitlines() if "storage.url" in line]
    assert "cannot connect to postgresql://supplier@/supplier" in warning
    assert "pw1" not in result.stdout + result.stderr


def test_run_with_an_unreachable_database_is_one_line_without_the_password(
    tmp_path: Path,
) -> None:
    nowhere = f"postgresql://supplier:pw1@/supplier?host={tmp_path}/no-server"
    result = _cli("run", "--config", str(_storage_config(tmp_path, nowhere)))
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "postgresql://supplier@/supplier" in line and "cannot connect" in line
    assert "pw1" not in result.stdout + result.stderr
