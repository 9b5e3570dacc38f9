"""The deployment files under infra/ and docker/ parse, and agree with each other and with the project:
images, ports, environment variables, URLs, volumes, start order, MLflow's allowed hosts, Ray's own
cluster-config validation, the Prefect work-pool template. Static: nothing is built or started here
(tests/integration/test_infra_servers.py starts the pieces that run without Docker)."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.unit.infra_files import (
    DOCKER,
    INFRA,
    MLFLOW_DOCKERFILE,
    PROJECT_IMAGES,
    REPO,
    WORKER_DOCKERFILE,
    all_image_refs,
    base_images,
    build_args,
    command_words,
    compose_variables,
    containers,
    env_settings,
    exec_form,
    image_ref,
    instructions,
    interpolate,
    kube_documents,
    load_compose,
    load_yaml,
    load_yaml_documents,
    parse_dockerfile,
    pinned_version,
    project_version,
    ray_cluster_config,
    ray_cluster_images,
    ray_run_option_env,
    read_env_file,
    service_env,
    work_pool_template,
)

SECRET_NAME = "llmpipe-env"
LOOPBACK = {"127.0.0.1", "localhost"}
# Variables the images of third-party services document (postgres, MinIO), and the common opt-out of
# telemetry that Prefect and MLflow honour.
IMAGE_VARIABLES = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "MINIO_ROOT_USER",
                   "MINIO_ROOT_PASSWORD", "DO_NOT_TRACK"}
# Where each service listens when its command does not say (the images' defaults).
DEFAULT_PORTS = {"postgres": {5432}, "minio": {9000, 9001}, "mlflow": {5000}, "ray-head": {6379, 8265, 10001}}


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def known_env() -> set[str]:
    """Every environment variable name something here reads: the project's code, Prefect's settings,
    MLflow's variables, boto3's, Ray's, and those of the third-party images."""
    names = set(IMAGE_VARIABLES)
    source = "\n".join(p.read_text() for d in ("llm", "tasks", "flows") for p in (REPO / d).rglob("*.py"))
    names |= set(re.findall(r"\b(?:LLMPIPE|AWS|MLFLOW|PREFECT|RAY)_[A-Z0-9_]+\b", source))
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_settings_fields

    names |= set(_get_settings_fields(Settings))
    import mlflow.environment_variables as mlflow_env

    names |= {n for n in dir(mlflow_env) if n.startswith("MLFLOW_")}
    import botocore.configprovider as boto_config

    for _, env, *_ in boto_config.BOTOCORE_DEFAUT_SESSION_VARIABLES.values():
        names |= {env} if isinstance(env, str) else set(env or ())
    names |= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"}
    import ray._private.ray_constants as ray_constants

    names |= set(re.findall(r"\bRAY_[A-Z0-9_]+\b", Path(ray_constants.__file__).read_text())) | {"RAY_ADDRESS"}
    return names


# Prints the `--help` of each Prefect command given as JSON lines, all in one process (each import of
# Prefect's CLI costs seconds).
_PREFECT_HELP = """
import contextlib, io, json, sys
from prefect.cli import app
out = {}
for argv in json.loads(sys.argv[1]):
    buf = io.StringIO()
    sys.argv = ["prefect", *argv, "--help"]
    with contextlib.redirect_stdout(buf):
        try:
            app()
        except SystemExit:
            pass
    out[" ".join(argv)] = buf.getvalue()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def prefect_help() -> dict[str, str]:
    """`prefect [COMMAND] --help` of the commands these files run, by command."""
    commands = [[], ["worker", "start"], ["work-pool", "create"], ["deploy"], ["server", "start"]]
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    result = subprocess.run([sys.executable, "-c", _PREFECT_HELP, json.dumps(commands)], capture_output=True,
                            text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    helps = json.loads(result.stdout.strip().splitlines()[-1])
    for command, text in helps.items():
        assert text.startswith(f"Usage: prefect {command}".rstrip()), f"prefect {command} --help printed no help"
    return helps


# ---------------------------------------------------------------------------------------------- parsing

def test_every_file_parses():
    names = {p.name for p in INFRA.iterdir()} | {p.name for p in DOCKER.iterdir()}
    with pytest.raises(yaml.YAMLError, match="twice"):
        load_yaml("a: 1\nb: 2\na: 3\n")
    assert load_yaml("x: &x {a: 1}\ny:\n  <<: *x\n  a: 2\n") == {"x": {"a": 1}, "y": {"a": 2}}
    assert {"compose.yaml", "ray-cluster.yaml", "kuberay.yaml", "kuberay-job.yaml", "k8s-secret.example.yaml",
            "prefect-k8s-work-pool.json", "compose.env.example", "worker.Dockerfile", "mlflow.Dockerfile"} <= names
    for path in sorted(INFRA.glob("*.yaml")):
        assert load_yaml_documents(path), f"{path} holds no YAML document"
    for path in sorted(INFRA.glob("*.json")):
        assert isinstance(json.loads(path.read_text()), dict), path
    for path in (WORKER_DOCKERFILE, MLFLOW_DOCKERFILE):
        known = {"FROM", "ARG", "RUN", "ENV", "WORKDIR", "COPY", "USER", "HEALTHCHECK", "EXPOSE", "CMD",
                 "ENTRYPOINT", "LABEL"}
        parsed = parse_dockerfile(path)
        assert parsed and parsed[0].name in ("FROM", "ARG"), path
        assert {i.name for i in parsed} <= known, f"{path}: unknown instruction"
    for path in [*INFRA.glob("*.sh"), *DOCKER.glob("*.sh")]:
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{path}: {result.stderr}"
        assert path.stat().st_mode & stat.S_IXUSR, f"{path} is not executable"
    for path in INFRA.glob("*.py"):
        compile(path.read_text(), str(path), "exec")
    read_env_file(INFRA / "compose.env.example")


def test_interpolation_follows_compose_rules():
    env = {"A": "a", "EMPTY": ""}
    assert interpolate("${A}-${B:-b}-${EMPTY:-e}-${EMPTY-e}-$$A-$A", env) == "a-b-e--$A-a"
    with pytest.raises(KeyError, match="needed"):
        interpolate("${B:?needed}", env)
    with pytest.raises(KeyError):
        interpolate("${EMPTY:?needed}", env)
    assert compose_variables("${A:?x} ${B:-1} $C") == {"A": None, "B": "1", "C": None}


# ---------------------------------------------------------------------------------------------- images

def test_images_are_project_images_or_pinned_public_ones():
    version = project_version()
    variants = worker_variants()
    prefixes = set()
    for where, refs in all_image_refs().items():
        assert refs, f"{where} names no image"
        for ref in refs:
            image = image_ref(ref)
            assert image.tag, f"{where}: {ref} has no tag"
            assert image.tag != "latest" and "latest" not in image.tag, f"{where}: {ref} floats"
            if image.name in PROJECT_IMAGES:
                prefixes.add(image.prefix)
                if image.name == "llmpipe-worker":
                    tag_version, _, variant = image.tag.rpartition("-")
                    assert tag_version == version and variant in variants, \
                        f"{where}: {ref} is not llmpipe-worker:{version}-<{'|'.join(variants)}>"
                else:
                    assert image.tag == version, f"{where}: {ref} is not tagged {version}"
            else:
                # an exact release, not a moving major/minor tag (PostgreSQL releases are MAJOR.MINOR)
                exact = r"\d+\.\d+(-|$)" if image.name == "postgres" else r"\d+\.\d+\.\d+(-|$)"
                assert re.match(rf"({exact})|(RELEASE\.\d{{4}}-\d\d-\d\dT)", image.tag), \
                    f"{where}: {ref} is not pinned to an exact version"
    # one registry for every project image, the one compose.env.example and docker/build.sh speak of
    env = read_env_file(INFRA / "compose.env.example")
    assert prefixes == {env["REGISTRY"]}, f"project images name several registries: {prefixes}"
    assert env["LLMPIPE_VERSION"] == version
    assert env["REGISTRY"] in (DOCKER / "build.sh").read_text()


def worker_variants() -> set[str]:
    """The TORCH_VARIANT values docker/worker.Dockerfile accepts (its `case` branches)."""
    runs = " ".join(i.args for i in instructions(WORKER_DOCKERFILE, "RUN") if "TORCH_VARIANT" in i.args)
    return set(re.findall(r"\b(\w+)\)\s+index=", runs))


def test_versions_agree_with_the_project_pins():
    # the Prefect server speaks the API of the Prefect the worker image installs
    compose = load_compose()
    prefect = image_ref(compose["services"]["prefect"]["image"])
    assert prefect.name == "prefect" and prefect.tag.startswith(pinned_version("prefect") + "-python")
    # Ray Client and the cluster need the same Python minor version on both sides
    python_minor = prefect.tag.rpartition("python")[2]
    for path in (WORKER_DOCKERFILE, MLFLOW_DOCKERFILE):
        base = image_ref(base_images(path)[0])
        assert base.name == "python" and base.tag.startswith(python_minor + "."), f"{path}: {base.ref}"
    mlflow_pin = re.search(r'"mlflow==([^"]+)"', MLFLOW_DOCKERFILE.read_text())
    assert mlflow_pin and mlflow_pin.group(1) == pinned_version("mlflow")
    assert re.search(r'"boto3==([^"]+)"', MLFLOW_DOCKERFILE.read_text()).group(1) == pinned_version("boto3")
    cluster = next(d for d in kube_documents() if d["kind"] == "RayCluster")
    assert cluster["spec"]["rayVersion"] == pinned_version("ray")


def test_compose_builds_name_the_dockerfile_of_their_image(services):
    built = 0
    for name, service in services.items():
        image = image_ref(service["image"])
        if image.name not in PROJECT_IMAGES:
            assert "build" not in service, f"{name}: builds an image that is not the project's"
            continue
        build = service["build"]
        dockerfile = (INFRA / build["context"] / build["dockerfile"]).resolve()
        assert dockerfile == PROJECT_IMAGES[image.name].resolve(), f"{name}: {image.name} built from {dockerfile}"
        args = build_args(dockerfile)
        for arg, value in (build.get("args") or {}).items():
            assert arg in args, f"{name}: build arg {arg} is not an ARG of {dockerfile.name}"
            if arg == "TORCH_VARIANT":
                assert image.tag.endswith("-" + value), f"{name}: tag {image.tag} is not the {value} variant"
        built += 1
    assert built >= 5


def test_dockerfiles_copy_only_what_exists_and_is_not_ignored():
    for path in (WORKER_DOCKERFILE, MLFLOW_DOCKERFILE):
        ignore = Path(str(path) + ".dockerignore")
        assert ignore.is_file(), f"{path.name} has no {ignore.name}: the whole checkout (.venv too) is sent"
        lines = [line.strip() for line in ignore.read_text().splitlines()]
        patterns = [line for line in lines if line and not line.startswith("#")]
        assert patterns[0] == "*", f"{ignore.name} should exclude everything, then let in what the image copies"
        allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
        for ins in instructions(path, "COPY"):
            words = [w for w in ins.args.split() if not w.startswith("--")]
            for source in words[:-1]:
                assert (REPO / source).exists(), f"{path.name}:{ins.line}: COPY {source}: not in the repository"
                assert source.rstrip("/") in allowed, f"{path.name}:{ins.line}: {source} is ignored by {ignore.name}"


# ---------------------------------------------------------------------------------------------- Dockerfiles

@pytest.mark.parametrize("path", [WORKER_DOCKERFILE, MLFLOW_DOCKERFILE], ids=lambda p: p.name)
def test_dockerfile_is_pinned_non_root_and_healthchecked(path):
    for base in base_images(path):
        tag = image_ref(base).tag
        assert tag and tag != "latest" and re.match(r"\d+\.\d+\.\d+", tag), f"{path.name}: FROM {base} is not pinned"
    users = instructions(path, "USER")
    assert users, f"{path.name}: runs as root (no USER)"
    assert users[-1].args.split(":")[0] not in ("root", "0"), f"{path.name}: USER {users[-1].args}"
    checks = instructions(path, "HEALTHCHECK")
    assert checks and checks[-1].args.upper() != "NONE", f"{path.name}: no HEALTHCHECK"
    assert " CMD " in f" {checks[-1].args} ", f"{path.name}: HEALTHCHECK without CMD"


def test_worker_image_has_what_ray_up_and_the_project_need():
    installs = " ".join(i.args for i in instructions(WORKER_DOCKERFILE, "RUN") if "apt-get install" in i.args)
    for package in ("openssh-client", "rsync"):
        assert re.search(rf"\b{package}\b", installs), f"worker image does not install {package}"
    args = build_args(WORKER_DOCKERFILE)
    assert args.get("TORCH_VARIANT") == "cpu", "TORCH_VARIANT build arg (default cpu) missing"
    assert worker_variants() == {"cpu", "cuda"}
    torch_install = next(i.args for i in instructions(WORKER_DOCKERFILE, "RUN") if "TORCH_VARIANT" in i.args)
    assert "download.pytorch.org/whl/cpu" in torch_install and "torch==${TORCH_VERSION}" in torch_install
    env = env_settings(WORKER_DOCKERFILE)
    assert env.get("LLMPIPE_HOME") == "/app"
    assert instructions(WORKER_DOCKERFILE, "WORKDIR")[0].args == "/app"
    copies = [i.args.split() for i in instructions(WORKER_DOCKERFILE, "COPY")]
    assert ["prefect.yaml", "./"] in copies, "the deployments' prefect.yaml must be in /app"
    # the health check script is in the image and on PATH under the name HEALTHCHECK runs
    health = exec_form(instructions(WORKER_DOCKERFILE, "HEALTHCHECK")[-1].args.split(" CMD ", 1)[1])
    script = next(c for c in copies if c[-1].endswith(health[0]))
    assert (REPO / script[0]).stat().st_mode & stat.S_IXUSR
    # `ray up` starts the container with `bash` as its command: an ENTRYPOINT other than an init breaks that
    entrypoints = instructions(WORKER_DOCKERFILE, "ENTRYPOINT")
    entry = exec_form(entrypoints[-1].args) if entrypoints else []
    assert entry in ([], ["/usr/bin/tini", "--"]), entry
    if entry:
        assert "tini" in installs


def test_worker_image_default_command_is_a_healthchecked_worker(prefect_help):
    cmd = exec_form(instructions(WORKER_DOCKERFILE, "CMD")[-1].args)
    assert cmd[:3] == ["prefect", "worker", "start"] and "--with-healthcheck" in cmd
    check_flags(cmd[3:], prefect_help["worker start"], "worker.Dockerfile CMD")
    # the health script probes the port the worker's health server is told to use, on loopback
    env = env_settings(WORKER_DOCKERFILE)
    assert env["PREFECT_WORKER_WEBSERVER_HOST"] == "127.0.0.1"
    script = (DOCKER / "worker-healthcheck.sh").read_text()
    assert "PREFECT_WORKER_WEBSERVER_PORT" in script and "/health" in script and "ray health-check" in script


def check_flags(words: list[str], help_text: str, where: str) -> None:
    """Every --flag in `words` is one the command's --help lists."""
    for word in words:
        if word.startswith("--"):
            flag = word.split("=")[0]
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), f"{where}: unknown option {flag}"


# ---------------------------------------------------------------------------------------------- MLflow

def mlflow_server_options() -> set[str]:
    from mlflow.cli import cli

    return {opt for p in cli.commands["server"].params for opt in p.opts + p.secondary_opts}


def test_mlflow_image_runs_a_postgres_s3_server_with_allowed_hosts():
    text = MLFLOW_DOCKERFILE.read_text()
    assert "psycopg2" in text, "no PostgreSQL driver for the backend store"
    cmd = instructions(MLFLOW_DOCKERFILE, "CMD")[-1].args
    words = shlex.split(cmd)
    server = words[words.index("server") - 1:]
    assert server[0] == "mlflow"
    options = mlflow_server_options()
    for word in server:
        if word.startswith("--"):
            assert word.split("=")[0] in options, f"mlflow server has no option {word}"
    pairs = dict(zip(server, server[1:]))
    assert pairs["--backend-store-uri"] == "$MLFLOW_BACKEND_STORE_URI"
    assert pairs["--artifacts-destination"] == "$MLFLOW_ARTIFACTS_DESTINATION"
    assert pairs["--allowed-hosts"] == "$MLFLOW_SERVER_ALLOWED_HOSTS"
    assert pairs["--host"] == "0.0.0.0"  # inside the container; compose publishes it on 127.0.0.1 only
    # the option's own environment variable, so setting it alone (e.g. in Kubernetes) also works
    from mlflow.cli import cli

    option = next(p for p in cli.commands["server"].params if "--allowed-hosts" in p.opts)
    assert option.envvar == "MLFLOW_SERVER_ALLOWED_HOSTS"
    assert env_settings(MLFLOW_DOCKERFILE)["MLFLOW_SERVER_ALLOWED_HOSTS"]
    checks = instructions(MLFLOW_DOCKERFILE, "HEALTHCHECK")[-1].args
    assert "/health" in checks and ":5000" in checks


def mlflow_client_urls() -> dict[str, list[str]]:
    """Where a client is pointed at MLflow -> the URLs, from every file that does it."""
    urls: dict[str, list[str]] = {}
    compose = load_compose()
    for name, service in compose["services"].items():
        value = service_env(service).get("MLFLOW_TRACKING_URI")
        if value:
            urls.setdefault("compose", []).append(value)
    ray_env = ray_run_option_env(ray_cluster_config())
    urls["ray-cluster"] = [ray_env["MLFLOW_TRACKING_URI"]]
    for doc in kube_documents():
        if doc["kind"] == "Secret":
            urls.setdefault("kubernetes", []).append(doc["stringData"]["MLFLOW_TRACKING_URI"])
        for c in containers(doc):
            urls.setdefault("kubernetes", []).extend(
                e["value"] for e in c.get("env", []) if e["name"] == "MLFLOW_TRACKING_URI" and "value" in e)
    env_default = work_pool_template()["variables"]["properties"]["env"].get("default", {})
    if "MLFLOW_TRACKING_URI" in env_default:
        urls.setdefault("kubernetes", []).append(env_default["MLFLOW_TRACKING_URI"])
    docs = (INFRA / "README.md").read_text() + (REPO / "README.md").read_text()
    urls["README"] = re.findall(r"MLFLOW_TRACKING_URI=(http://[^\s`'\")]+)", docs)
    return urls


def test_mlflow_allowed_hosts_let_in_every_client_and_nobody_else():
    from mlflow.server.security_utils import is_allowed_host_header

    def allowed(setting: str) -> list[str]:
        return [h.strip() for h in setting.split(",")]

    image_default = allowed(env_settings(MLFLOW_DOCKERFILE)["MLFLOW_SERVER_ALLOWED_HOSTS"])
    compose_setting = allowed(service_env(load_compose()["services"]["mlflow"])["MLFLOW_SERVER_ALLOWED_HOSTS"])
    assert "*" not in image_default and "*" not in compose_setting
    urls = mlflow_client_urls()
    assert urls["compose"] and urls["ray-cluster"] and urls["kubernetes"] and urls["README"]
    # From the host, compose's MLflow is reached on its published loopback port.
    published = next(p for p in load_compose()["services"]["mlflow"]["ports"])
    host_port = published.split(":")[1]
    urls["compose"] += [f"http://127.0.0.1:{host_port}", f"http://localhost:{host_port}"]
    for where, found in urls.items():
        for url in found:
            # the Host header a client sends: host, and :port unless it is the scheme's default
            netloc = urlsplit(url).netloc
            assert is_allowed_host_header(image_default, netloc), f"{where}: {url} would get 403 from the image's default"
            if where == "compose":
                assert is_allowed_host_header(compose_setting, netloc), f"compose: {url} would get 403"
                assert urlsplit(url).hostname in set(load_compose()["services"]) | LOOPBACK
    for stranger in ("evil.example", "evil.example:5000", "mlflow.evil.example:5000"):
        assert not is_allowed_host_header(image_default, stranger)
        assert not is_allowed_host_header(compose_setting, stranger)


# ---------------------------------------------------------------------------------------------- compose

def test_compose_publishes_ports_on_loopback_only(services):
    published = 0
    for name, service in services.items():
        assert service.get("network_mode") != "host", f"{name}: host networking skips the port bindings"
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert isinstance(port, str) and port.startswith("127.0.0.1:") and port.count(":") == 2, \
                    f"{name}: port {port!r} is published on every interface; write \"127.0.0.1:HOST:CONTAINER\""
            published += 1
    assert published >= 4
    for name in ("postgres",):
        assert not services[name].get("ports"), f"{name} needs no port on the host"


def test_compose_variables_come_from_the_env_file():
    text = (INFRA / "compose.yaml").read_text()
    used = compose_variables(text)
    example = read_env_file(INFRA / "compose.env.example")
    missing = [v for v, default in used.items() if default is None and v not in example]
    assert not missing, f"compose.yaml needs {missing}, which compose.env.example does not define"
    unused = [v for v in example if v not in used]
    assert not unused, f"compose.env.example defines {unused}, which compose.yaml never uses"
    for var, default in used.items():
        if default is not None and var in example:
            assert example[var] == default, f"{var}: compose default {default!r} != example {example[var]!r}"
    # placeholders, not secrets
    for var in ("POSTGRES_PASSWORD", "AWS_SECRET_ACCESS_KEY", "PREFECT_API_AUTH_STRING"):
        assert "REPLACE_ME" in example[var], f"{var} in compose.env.example should be a placeholder"
    # compose reads infra/.env; that file must never be committed
    ignored = (INFRA / ".gitignore").read_text().split()
    assert ".env" in ignored
    # a missing secret stops compose instead of starting with an empty password
    with pytest.raises(KeyError):
        load_compose({k: v for k, v in example.items() if k != "POSTGRES_PASSWORD"})


def test_compose_env_names_are_ones_something_reads(services, known_env):
    for name, service in services.items():
        for var in service_env(service):
            assert var in known_env, f"compose {name}: nothing reads {var}"
    worker = service_env(services["worker"])
    for var in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_URI", "RAY_ADDRESS",
                "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        assert worker.get(var), f"the Prefect worker has no {var}"
    # Ray nodes run the stages: they need the store too
    for node in ("ray-head", "ray-worker"):
        for var in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI"):
            assert service_env(services[node]).get(var), f"{node} has no {var}"
    # client and server agree on the Prefect API's password, and on the S3 key pair
    prefect = service_env(services["prefect"])
    assert prefect["PREFECT_SERVER_API_AUTH_STRING"] == worker["PREFECT_API_AUTH_STRING"]
    minio = service_env(services["minio"])
    assert (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]) == \
        (worker["AWS_ACCESS_KEY_ID"], worker["AWS_SECRET_ACCESS_KEY"])


def service_ports(name: str, service: dict) -> set[int]:
    """The ports a compose service listens on inside the network."""
    ports = set(DEFAULT_PORTS.get(name, ()))
    for port in service.get("ports", []):
        ports.add(int(str(port).rsplit(":", 1)[1].split("/")[0]))
    words = command_words(service.get("command"))
    for i, word in enumerate(words):
        if re.fullmatch(r"--(port|ray-client-server-port)(=\d+)?", word):
            ports.add(int(word.split("=")[1] if "=" in word else words[i + 1]))
    return ports


def test_compose_urls_name_real_services_and_ports(services):
    url = re.compile(r"\b(?:https?|ray|s3|postgresql(?:\+\w+)?)://[^\s'\"]+")
    found = 0
    for name, service in services.items():
        texts = list(service_env(service).values()) + command_words(service.get("command"))
        for text in texts:
            for match in url.findall(text):
                parts = urlsplit(match)
                if parts.scheme == "s3":
                    continue
                host, port = parts.hostname, parts.port
                found += 1
                if name in ("prefect",) and host in LOOPBACK:
                    continue  # what the host's browser calls
                assert host in services, f"{name}: {match} names no compose service"
                assert port in service_ports(host, services[host]), f"{name}: {match}: {host} does not listen on {port}"
    assert found >= 10
    assert service_env(services["worker"])["PREFECT_API_URL"] == "http://prefect:4200/api"
    assert service_env(services["worker"])["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert service_env(services["worker"])["RAY_ADDRESS"] == "ray://ray-head:10001"
    # every S3 client talks to MinIO's S3 API, not to its console port
    endpoints = {v for s in services.values() for k, v in service_env(s).items()
                 if k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL")}
    minio = command_words(services["minio"]["command"])
    console = int(minio[minio.index("--console-address") + 1].rsplit(":", 1)[1])
    assert len(endpoints) == 1 and urlsplit(endpoints.pop()).port != console, "S3 endpoints disagree"
    # the server's database and MLflow's are the two that Postgres creates
    init = (INFRA / "postgres-init.sql").read_text()
    for service, db in (("prefect", "PREFECT_SERVER_DATABASE_CONNECTION_URL"), ("mlflow", "MLFLOW_BACKEND_STORE_URI")):
        name = urlsplit(service_env(services[service])[db]).path.lstrip("/")
        assert name == service_env(services["postgres"])["POSTGRES_DB"] or f"CREATE DATABASE {name};" in init


def dependents(services: dict, target: str) -> set[str]:
    """Services that (directly or through others) wait for `target`."""
    out: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, service in services.items():
            deps = set(service.get("depends_on") or ())
            if name not in out and (target in deps or deps & out):
                out.add(name)
                changed = True
    return out


def test_compose_volumes_are_declared_and_mounted_where_the_data_lives(compose, services):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                assert (INFRA / source).exists(), f"{name}: bind mount {source} does not exist"
                assert volume.endswith(":ro"), f"{name}: {source} should be mounted read-only"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused volumes: {declared - used}"
    mounts = {n: {v.split(":")[1]: v.split(":")[0] for v in s.get("volumes", [])} for n, s in services.items()}
    assert mounts["postgres"].get("/var/lib/postgresql/data") == "postgres"
    minio_data = command_words(services["minio"]["command"])[1]
    assert mounts["minio"].get(minio_data) == "minio"
    mlflow_dir = instructions(MLFLOW_DOCKERFILE, "WORKDIR")[-1].args
    assert mounts["mlflow"].get(mlflow_dir) == "mlflow"
    # the Prefect worker and the Ray nodes share one work directory at the image's /app/work
    assert "/app/work" in " ".join(i.args for i in instructions(WORKER_DOCKERFILE, "RUN"))
    for node in ("worker", "ray-head", "ray-worker"):
        assert mounts[node].get("/app/work") == "work", node


def has_healthcheck(service: dict) -> bool:
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable") and bool(check.get("test"))
    image = image_ref(service["image"])
    if image.name in PROJECT_IMAGES:  # the image's own HEALTHCHECK
        return bool(instructions(PROJECT_IMAGES[image.name], "HEALTHCHECK"))
    return False


def test_compose_start_order(services):
    for name, service in services.items():
        deps = service.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs the long form with a condition"
        for target, spec in deps.items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = spec.get("condition")
            assert condition in ("service_healthy", "service_completed_successfully"), f"{name} -> {target}: {condition}"
            if condition == "service_healthy":
                assert has_healthcheck(services[target]), f"{name} waits for {target} to be healthy; it has no healthcheck"
            else:
                assert services[target].get("restart") == "no", f"{name} waits for {target} to finish; it restarts"
        one_shot = service.get("restart") == "no"
        assert one_shot or service.get("restart") in ("unless-stopped", "always", "on-failure"), f"{name}: no restart policy"
        if not one_shot:
            assert has_healthcheck(service), f"{name}: long-running service without a healthcheck"
    worker = services["worker"]["depends_on"]
    assert worker["prefect"]["condition"] == "service_healthy"
    assert worker["deploy"]["condition"] == "service_completed_successfully"
    assert services["deploy"]["depends_on"]["prefect"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # no cycles
    for name in services:
        assert name not in dependents(services, name), f"{name} waits for itself"


def test_compose_deploy_step_registers_the_deployments_the_worker_runs(services, prefect_help):
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    pools = {d["work_pool"]["name"] for d in deployments}
    assert len(pools) == 1
    pool = pools.pop()
    deploy = services["deploy"]
    assert deploy["restart"] == "no" and deploy["working_dir"] == "/app"
    script = command_words(deploy["command"])
    assert script[:2] == ["bash", "-c"]
    steps = [shlex.split(s) for s in script[2].split("&&")]
    create = next(s for s in steps if s[1:3] == ["work-pool", "create"])
    assert create[3] == pool and "--type" in create and create[create.index("--type") + 1] == "process"
    check_flags(create, prefect_help["work-pool create"], "deploy: work-pool create")
    deploy_step = next(s for s in steps if "deploy" in s)
    assert "--all" in deploy_step
    check_flags(deploy_step[deploy_step.index("deploy"):], prefect_help["deploy"], "deploy: prefect deploy")
    check_flags(deploy_step[:deploy_step.index("deploy")], prefect_help[""], "deploy: prefect")
    worker = command_words(services["worker"]["command"])
    assert worker[worker.index("--pool") + 1] == pool
    check_flags(worker[3:], prefect_help["worker start"], "compose worker")
    server = command_words(services["prefect"]["command"])
    check_flags(server[3:], prefect_help["server start"], "compose prefect")


def ray_start_options() -> set[str]:
    from ray.scripts.scripts import start

    return {opt for p in start.params for opt in p.opts + p.secondary_opts}


def test_compose_ray_nodes(services):
    options = ray_start_options()
    head = command_words(services["ray-head"]["command"])
    worker = command_words(services["ray-worker"]["command"])
    for words in (head, worker):
        assert words[:2] == ["ray", "start"] and "--block" in words, "a Ray node must stay in the foreground"
        for word in words[2:]:
            assert word.split("=")[0] in options, f"ray start has no option {word}"
    assert "--head" in head and "--ray-client-server-port=10001" in head
    address = next(w for w in worker if w.startswith("--address="))
    host, port = address.split("=")[1].split(":")
    assert host == "ray-head" and int(port) in service_ports("ray-head", services["ray-head"])
    assert services["ray-worker"]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    # same image as the driver: Ray Client needs the same Ray and Python on both sides
    assert services["ray-head"]["image"] == services["ray-worker"]["image"] == services["worker"]["image"]


# ---------------------------------------------------------------------------------------------- ray up

def test_ray_cluster_passes_rays_own_validation_offline(monkeypatch):
    import boto3
    from ray.autoscaler._private.util import prepare_config, validate_config

    def no_aws(*args, **kwargs):
        raise AssertionError("the config check called AWS")

    monkeypatch.setattr(boto3, "client", no_aws)
    monkeypatch.setattr(boto3, "resource", no_aws)
    monkeypatch.setattr(boto3.Session, "client", no_aws)
    monkeypatch.setattr(boto3.Session, "resource", no_aws)
    cfg = ray_cluster_config()
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    # and it does reject a broken one
    broken = copy.deepcopy(cfg)
    broken["available_node_types"]["gpu_worker"]["resources"]["GPU"] = "eight"
    with pytest.raises(Exception):
        validate_config(prepare_config(broken))


def test_ray_cluster_nodes_run_the_cuda_image_with_an_instance_profile():
    cfg = ray_cluster_config()
    images = ray_cluster_images(cfg)
    gpu_types = [n for n, t in cfg["available_node_types"].items() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types, "no GPU node type"
    cpu_types = [n for n in cfg["available_node_types"] if n not in gpu_types and n != cfg["head_node_type"]]
    assert cpu_types, "no CPU worker node type"
    for name, image in images.items():
        ref = image_ref(image)
        assert ref.name == "llmpipe-worker" and ref.tag.endswith("-cuda"), f"{name} runs {image}"
    for name in gpu_types:
        node = cfg["available_node_types"][name]
        assert node["resources"]["GPU"] == 8 and node["node_config"]["InstanceType"].startswith("p5.")
    for name, node in cfg["available_node_types"].items():
        profile = node["node_config"].get("IamInstanceProfile", {})
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@-]+", profile.get("Arn", "")), \
            f"{name}: no IamInstanceProfile: the node would have no credentials"
    text = (INFRA / "ray-cluster.yaml").read_text()
    assert "AWS_SECRET_ACCESS_KEY" not in text and not re.search(r"AKIA[0-9A-Z]{16}", text)
    assert "IamInstanceProfile" in (INFRA / "README.md").read_text()


def test_ray_cluster_start_commands(known_env):
    cfg = ray_cluster_config()
    options = ray_start_options()
    head = " ".join(cfg["head_start_ray_commands"])
    worker = " ".join(cfg["worker_start_ray_commands"])
    for commands in (head, worker):
        start = commands[commands.index("ray start"):]
        for word in shlex.split(start.split(";")[0]):
            if word.startswith("--"):
                assert word.split("=")[0] in options, f"ray start has no option {word}"
    assert "--head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "--ray-client-server-port=10001" in head
    assert "0.0.0.0" not in head, "the head's dashboard must not listen on every interface"
    assert "--address=$RAY_HEAD_IP:6379" in worker
    for var in ray_run_option_env(cfg):
        assert var in known_env, f"ray-cluster.yaml: nothing reads {var}"


# ---------------------------------------------------------------------------------------------- KubeRay

def test_kuberay_cluster_has_head_cpu_and_gpu_groups():
    cluster = next(d for d in kube_documents() if d["kind"] == "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}

    def gpus(group):
        return [int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
                for c in group["template"]["spec"]["containers"]]

    gpu_groups = [g for g in groups.values() if any(gpus(g))]
    cpu_groups = [g for g in groups.values() if not any(gpus(g))]
    assert gpu_groups and cpu_groups
    for group in gpu_groups:
        spec = group["template"]["spec"]
        assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])), "GPU group tolerates no GPU taint"
        assert spec.get("nodeSelector"), "GPU group has no nodeSelector"
        for c in spec["containers"]:
            assert image_ref(c["image"]).tag.endswith("-cuda")
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_kuberay_dashboard_is_not_on_every_interface():
    cluster = next(d for d in kube_documents() if d["kind"] == "RayCluster")
    params = cluster["spec"]["headGroupSpec"]["rayStartParams"]
    # KubeRay fills in 0.0.0.0 when dashboard-host is left out
    host = params.get("dashboard-host")
    assert host and host not in ("0.0.0.0", "::"), f"dashboard-host {host!r}"
    options = ray_start_options()
    for group in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]:
        for key in group["rayStartParams"]:
            assert f"--{key}" in options, f"ray start has no option --{key}"
    # Probes that reach the dashboard where it listens (httpGet goes to the pod IP), and wget for the
    # probes KubeRay adds to the other pods
    head_container = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head_container["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        get = head_container[probe]["httpGet"]
        assert "host" not in get and ports.get(get["port"], get["port"]) == 8265, probe
    installs = " ".join(i.args for i in instructions(WORKER_DOCKERFILE, "RUN") if "apt-get install" in i.args)
    assert re.search(r"\bwget\b", installs), "KubeRay's default probes need wget in the image"
    refs = re.findall(r"\$\((\w+)\)", host)
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    defined = {e["name"]: e for e in head.get("env", [])}
    for ref in refs:
        assert ref in defined, f"$({ref}) is not defined in the head container's env"
        assert defined[ref]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_kubernetes_pods_take_settings_from_the_secret(known_env):
    docs = kube_documents()
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert secret["metadata"]["name"] == SECRET_NAME and secret["type"] == "Opaque"
    for key, value in secret["stringData"].items():
        assert key in known_env, f"Secret key {key}: nothing reads it"
        if "SECRET" in key or "AUTH" in key or key.endswith("KEY_ID"):
            assert "REPLACE_ME" in value, f"Secret example holds a value for {key}"
    for doc in docs:
        if doc["kind"] != "RayCluster":
            continue
        for c in containers(doc):
            refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
            assert refs == [SECRET_NAME], f"{c['name']}: envFrom {refs}"
            for e in c.get("env", []):
                assert e["name"] in known_env | {"POD_IP"}, f"{c['name']}: nothing reads {e['name']}"
    for path in INFRA.iterdir():
        if path.is_file():
            assert not re.search(r"AKIA[0-9A-Z]{16}", path.read_text()), f"{path}: an AWS access key"


def test_rayjob_runs_the_pipeline_on_the_cluster():
    docs = kube_documents()
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["llmpipe", "run"]
    config = Path(words[2])
    workdir = instructions(WORKER_DOCKERFILE, "WORKDIR")[0].args
    assert (REPO / config.relative_to(workdir)).is_file(), f"{config} is not in the image"
    copies = [i.args.split()[0] for i in instructions(WORKER_DOCKERFILE, "COPY")]
    assert config.relative_to(workdir).parts[0] in copies
    overrides = dict(w.split("=", 1) for w in words[3:])
    assert overrides.get("work_dir", "").startswith("s3://"), "nodes share nothing but S3"
    for c in containers(job):
        assert image_ref(c["image"]).name == "llmpipe-worker"


# ---------------------------------------------------------------------------------------------- work pool

def test_prefect_k8s_work_pool_template(known_env):
    import jsonschema
    from prefect.utilities.templating import apply_values, find_placeholders

    template = work_pool_template()
    assert set(template) == {"job_configuration", "variables"}
    variables = template["variables"]
    jsonschema.Draft202012Validator.check_schema(variables)
    properties = variables["properties"]
    config = template["job_configuration"]
    # every placeholder names a variable, and every variable is used
    names = {p.name for p in find_placeholders(config)}
    assert names <= set(properties), f"placeholders without a variable: {names - set(properties)}"
    assert set(properties) <= names, f"variables never used: {set(properties) - names}"
    # the keys the Kubernetes worker's job configuration has
    assert {"command", "env", "labels", "name", "namespace", "job_manifest", "cluster_config",
            "job_watch_timeout_seconds", "pod_watch_timeout_seconds", "stream_output"} <= set(config)
    try:
        from prefect_kubernetes.worker import KubernetesWorker
    except ImportError:
        pass
    else:
        default = KubernetesWorker.get_default_base_job_template()
        assert set(config) == set(default["job_configuration"])
        assert set(properties) == set(default["variables"]["properties"])
    # the defaults satisfy the schema, and filled in they make a Job running the worker image
    defaults = {k: v["default"] for k, v in properties.items() if "default" in v}
    jsonschema.validate(defaults, variables)
    manifest = apply_values(config["job_manifest"], {**{k: None for k in properties}, **defaults})
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    assert manifest["spec"]["backoffLimit"] == 0
    pod = manifest["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    image = image_ref(container["image"])
    assert image.name == "llmpipe-worker" and image.tag == f"{project_version()}-cpu"
    assert container["envFrom"] == [{"secretRef": {"name": SECRET_NAME}}]
    assert container.get("securityContext", {}).get("runAsNonRoot") is True
    for var, value in defaults.get("env", {}).items():
        assert var in known_env, f"work pool env {var}: nothing reads it"
    assert defaults["env"]["RAY_ADDRESS"] == "ray://llmpipe-head-svc:10001"
    cluster = next(d for d in kube_documents() if d["kind"] == "RayCluster")
    assert defaults["env"]["RAY_ADDRESS"].split("//")[1].split("-head-svc")[0] == cluster["metadata"]["name"]
    head_ports = {p["containerPort"] for c in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
                  for p in c.get("ports", [])}
    assert int(defaults["env"]["RAY_ADDRESS"].rsplit(":", 1)[1]) in head_ports


# ---------------------------------------------------------------------------------------------- docs, scripts

def test_infra_readme_covers_every_file_and_where_credentials_come_from():
    readme = (INFRA / "README.md").read_text()
    for path in [*INFRA.iterdir(), *DOCKER.iterdir()]:
        if path.name not in ("README.md", ".gitignore"):
            assert path.name in readme, f"infra/README.md does not mention {path.name}"
    for words in ("IamInstanceProfile", "instance profile", "secretRef", SECRET_NAME, "infra/.env",
                  "MLFLOW_SERVER_ALLOWED_HOSTS", "--allowed-hosts", "Invalid Host header", "REGISTRY",
                  "TORCH_VARIANT", "127.0.0.1"):
        assert words in readme, f"infra/README.md does not explain {words}"


def test_build_script_tags_and_pushes_every_image(tmp_path):
    # a stand-in `docker` that records what it is asked to do
    log = tmp_path / "docker.log"
    fake = tmp_path / "docker"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "REGISTRY": "reg.test/team"}
    result = subprocess.run(["bash", str(DOCKER / "build.sh"), "--push"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    version = project_version()
    tags = {f"reg.test/team/llmpipe-worker:{version}-cpu", f"reg.test/team/llmpipe-worker:{version}-cuda",
            f"reg.test/team/llmpipe-mlflow:{version}"}
    assert {c.split()[1] for c in calls if c.startswith("push ")} == tags
    builds = [c.split() for c in calls if c.startswith("build ")]
    assert {b[b.index("-t") + 1] for b in builds} == tags
    for b in builds:
        tag = b[b.index("-t") + 1]
        dockerfile = b[b.index("-f") + 1]
        assert (REPO / dockerfile).resolve() == PROJECT_IMAGES[image_ref(tag).name].resolve()
        if "llmpipe-worker" in tag:
            assert f"TORCH_VARIANT={tag.rpartition('-')[2]}" in b
    # without a registry it refuses instead of tagging something unpushable
    env.pop("REGISTRY")
    assert subprocess.run(["bash", str(DOCKER / "build.sh")], env=env, capture_output=True).returncode != 0
