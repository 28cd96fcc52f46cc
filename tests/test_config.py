"""Configuration: defaults, TOML plus environment (the environment wins), and refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gate.config import Config, default_config, load_config
from gate.errors import ConfigError

TOKEN = "0123456789abcdef"


def test_defaults() -> None:
    cfg = load_config(None, env={})
    assert cfg == Config()
    assert cfg.redis_url == ""
    assert cfg.data_dir == Path("./.gate-data")
    assert (cfg.host, cfg.port, cfg.admin_port) == ("127.0.0.1", 8080, 8081)
    assert cfg.admin_tokens == () and cfg.core_tokens == ()
    assert cfg.customer_header == "X-Customer-Id"
    assert cfg.signing_keys is None and cfg.keys_path == Path("./.gate-data/keys.json")
    assert cfg.workers == 1
    assert cfg.admin_url == "http://127.0.0.1:8081" and cfg.admin_token == ""
    assert cfg.cookie_secure is True
    assert default_config() == cfg


def test_load_config_ignores_unrelated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATE_PORT", "9999")
    monkeypatch.setenv("GATEPORT", "1")
    monkeypatch.setenv("GATE_NOT_A_SETTING", "x")
    assert load_config().port == 9999  # env=None reads os.environ
    assert default_config().port == 8080  # the tests' default ignores it


def write(tmp_path: Path, text: str, name: str = "gate.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_toml_and_env_where_env_wins(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
[gate]
redis_url = "redis://127.0.0.1:7000/0"
port = 9000
admin_port = 9001
workers = 4
admin_tokens = ["ops:{TOKEN}", "robot:{TOKEN}x"]
customer_header = "X-Bank-Customer"
cookie_secure = false
join_batch_window_ms = 2.5
signing_keys = "/etc/gate/keys.json"
""",
    )
    cfg = load_config(path, env={})
    assert cfg.redis_url == "redis://127.0.0.1:7000/0"
    assert (cfg.port, cfg.admin_port, cfg.workers) == (9000, 9001, 4)
    assert cfg.admin_tokens == (("ops", TOKEN), ("robot", TOKEN + "x"))
    assert cfg.customer_header == "X-Bank-Customer"
    assert cfg.cookie_secure is False and cfg.join_batch_window_ms == 2.5
    assert cfg.keys_path == Path("/etc/gate/keys.json")

    env = {
        "GATE_PORT": "9100",
        "GATE_WORKERS": "2",
        "GATE_ADMIN_TOKENS": f"night:{TOKEN}",
        "GATE_COOKIE_SECURE": "yes",
        "GATE_REDIS_URL": "rediss://cache.internal:6380/1",
    }
    cfg = load_config(path, env=env)
    assert (cfg.port, cfg.workers) == (9100, 2)
    assert cfg.admin_port == 9001  # not in the environment: the file's value stays
    assert cfg.admin_tokens == (("night", TOKEN),)
    assert cfg.cookie_secure is True
    assert cfg.redis_url == "rediss://cache.internal:6380/1"
    # explicit overrides (command-line flags) win over both; None means "not given"
    cfg = load_config(path, env=env, port=9200, workers=None)
    assert (cfg.port, cfg.workers) == (9200, 2)


def test_top_level_toml_without_section(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "port = 9300\nlog_level = 'DEBUG'\n"), env={})
    assert cfg.port == 9300 and cfg.log_level == "DEBUG"


def test_tokens_forms() -> None:
    cfg = default_config(admin_tokens=f"{TOKEN}a, ops:{TOKEN}b ,")
    assert cfg.admin_tokens == (("token1", TOKEN + "a"), ("ops", TOKEN + "b"))
    # a colon inside the token stays part of it
    assert default_config(core_tokens=f"core:{TOKEN}:x").core_tokens == (("core", TOKEN + ":x"),)


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"GATE_PORT": "70000"}, "port"),
        ({"GATE_PORT": "-1"}, "port"),
        ({"GATE_PORT": "eighty"}, "port"),
        ({"GATE_PORT": "80.5"}, "port"),
        ({"GATE_ADMIN_PORT": "65536"}, "admin_port"),
        ({"GATE_WORKERS": "0"}, "workers"),
        ({"GATE_WORKERS": "1000"}, "workers"),
        ({"GATE_WORKERS": "two"}, "workers"),
        ({"GATE_CUSTOMER_HEADER": "X Customer"}, "customer_header"),
        ({"GATE_CUSTOMER_HEADER": "X-Customer:Id"}, "customer_header"),
        ({"GATE_CUSTOMER_HEADER": "X-Customer-Id\n"}, "customer_header"),
        ({"GATE_CUSTOMER_HEADER": ""}, "customer_header"),
        ({"GATE_REDIS_URL": "http://127.0.0.1:6379"}, "redis_url"),
        ({"GATE_REDIS_URL": "127.0.0.1:6379"}, "redis_url"),
        ({"GATE_ADMIN_TOKENS": "ops:short"}, "admin_tokens"),
        ({"GATE_ADMIN_TOKENS": "short"}, "admin_tokens"),
        ({"GATE_ADMIN_TOKENS": f"bad name:{TOKEN}"}, "admin_tokens"),
        ({"GATE_ADMIN_TOKENS": f":{TOKEN}"}, "admin_tokens"),
        ({"GATE_CORE_TOKENS": "core:tiny"}, "core_tokens"),
        ({"GATE_COOKIE_SECURE": "maybe"}, "cookie_secure"),
        ({"GATE_ADMIT_INTERVAL_MS": "1"}, "admit_interval_ms"),
        ({"GATE_REFRESH_INTERVAL_MS": "0"}, "refresh_interval_ms"),
        ({"GATE_STALE_AFTER_MS": "5"}, "stale_after_ms"),
        ({"GATE_JOIN_BATCH_WINDOW_MS": "nan"}, "join_batch_window_ms"),
        ({"GATE_JOIN_BATCH_WINDOW_MS": "500"}, "join_batch_window_ms"),
        ({"GATE_JOIN_BATCH_MAX": "0"}, "join_batch_max"),
        ({"GATE_MAX_BODY_BYTES": "10"}, "max_body_bytes"),
        ({"GATE_REDIS_TIMEOUT_MS": "1"}, "redis_timeout_ms"),
        ({"GATE_LOG_LEVEL": "LOUD"}, "log_level"),
        ({"GATE_REDIS_REPLICA_LOSS": "ignore"}, "redis_replica_loss"),
        ({"GATE_REDIS_WAIT_AOF": "sometimes"}, "redis_wait_aof"),
        ({"GATE_REDIS_WAIT_REPLICAS": "65"}, "redis_wait_replicas"),
        (
            {"GATE_REDIS_WAIT_REPLICAS": "1", "GATE_REDIS_WAIT_TIMEOUT_MS": "0"},
            "redis_wait_timeout_ms",
        ),
        (
            {"GATE_REDIS_WAIT_REPLICAS": "1", "GATE_REDIS_WAIT_TIMEOUT_MS": "500"},
            "redis_wait_timeout_ms",
        ),
        ({"GATE_REDIS_URL": "redis+sentinel://127.0.0.1:26379/m"}, "redis_wait_replicas"),
    ],
)
def test_bad_environment_values_name_the_field(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env=env)
    assert caught.value.message.startswith(f"{field}:"), caught.value.message
    assert caught.value.code == "bad_config"


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("port = 70000", "port"),
        ("port = 'x'", "port"),
        ("port = true", "port"),
        ("port = 8080.5", "port"),
        ("workers = 0", "workers"),
        ("customer_header = 'X Customer'", "customer_header"),
        ("redis_url = 'mysql://db'", "redis_url"),
        ("redis_url = 6379", "redis_url"),
        (f"admin_tokens = ['ops:short', 'x:{TOKEN}']", "admin_tokens"),
        ("admin_tokens = 7", "admin_tokens"),
        ("admin_tokens = [1, 2]", "admin_tokens"),
        ("cookie_secure = 'perhaps'", "cookie_secure"),
        ("colour = 'red'", "colour"),
        ("[gate]\nprot = 8080", "prot"),
    ],
)
def test_bad_toml_values_name_the_field(tmp_path: Path, toml: str, field: str) -> None:
    path = write(tmp_path, toml + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.message.startswith(f"{field}:"), caught.value.message


@pytest.mark.parametrize("text", ["port = ", "[gate\nport = 1", "port = 1\nport = 2", "= 3"])
def test_malformed_toml(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(path) in caught.value.message


def test_gate_section_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[gate\] must be a table"):
        load_config(write(tmp_path, "gate = 5\n"), env={})


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing, env={})
    assert str(missing) in caught.value.message and "No such file" in caught.value.message
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, env={})  # a directory
    assert str(tmp_path) in caught.value.message


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"port": -5}, "port"), ({"nonsense": 1}, "nonsense"), ({"workers": "many"}, "workers")],
)
def test_bad_overrides(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        default_config(**overrides)
    assert caught.value.message.startswith(f"{field}:")


def test_config_is_frozen() -> None:
    cfg = default_config()
    with pytest.raises(AttributeError):
        cfg.port = 1  # type: ignore[misc]


def test_a_sentinel_url_needs_a_replica_to_wait_for_unless_loss_is_accepted() -> None:
    """A failover promotes a replica: without a WAIT it may lack acknowledged writes."""
    url = "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/fgmaster"
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={"GATE_REDIS_URL": url})
    assert "redis+sentinel://" in caught.value.message
    assert 'redis_replica_loss = "continue"' in caught.value.message
    waits = load_config(None, env={"GATE_REDIS_URL": url, "GATE_REDIS_WAIT_REPLICAS": "1"})
    assert (waits.redis_wait_replicas, waits.redis_replica_loss) == (1, "hold")
    accepted = load_config(None, env={"GATE_REDIS_URL": url, "GATE_REDIS_REPLICA_LOSS": "continue"})
    assert accepted.redis_wait_replicas == 0
    # a wait that is configured must end before the socket's timeout does
    tight = load_config(
        None, env={"GATE_REDIS_WAIT_AOF": "yes", "GATE_REDIS_WAIT_TIMEOUT_MS": "499"}
    )
    assert tight.redis_wait_aof and tight.redis_wait_timeout_ms == 499
