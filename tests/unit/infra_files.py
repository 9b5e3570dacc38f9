"""Readers for the deployment files under infra/ and docker/: Dockerfiles, the compose file with its
variables filled in from compose.env.example, image references, and the places each file names an
image, an environment variable or a URL. Plain parsing, no Docker, no cluster."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
DOCKER = REPO / "docker"
WORKER_DOCKERFILE = DOCKER / "worker.Dockerfile"
MLFLOW_DOCKERFILE = DOCKER / "mlflow.Dockerfile"
# The project's images and the Dockerfile each is built from.
PROJECT_IMAGES = {"llmpipe-worker": WORKER_DOCKERFILE, "llmpipe-mlflow": MLFLOW_DOCKERFILE}


def project_version() -> str:
    """The version in pyproject.toml."""
    match = re.search(r'^version = "([^"]+)"$', (REPO / "pyproject.toml").read_text(), re.M)
    assert match, "no version in pyproject.toml"
    return match.group(1)


def pinned_version(package: str) -> str:
    """The version constraints.txt pins `package` to."""
    match = re.search(rf"^{re.escape(package)}==(\S+)$", (REPO / "constraints.txt").read_text(), re.M | re.I)
    assert match, f"{package} is not pinned in constraints.txt"
    return match.group(1)


# ---------------------------------------------------------------------------------------------- YAML

class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently,
    so a second `resources:` or `min_workers:` would hide the first). Merge keys (<<) may be overridden."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str):
    return yaml.load(text, Loader=StrictLoader)


# ---------------------------------------------------------------------------------------------- Dockerfiles

@dataclass
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""
    name: str
    args: str
    line: int


def parse_dockerfile(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile (no heredocs: these files use none)."""
    out: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        name, _, args = text.partition(" ")
        out.append(Instruction(name.upper(), args.strip(), start))
    assert not pending, f"{path}: the last instruction ends in a line continuation"
    return out


def instructions(path: Path, name: str) -> list[Instruction]:
    return [i for i in parse_dockerfile(path) if i.name == name]


def build_args(path: Path) -> dict[str, str | None]:
    """ARG name -> default (None when it has none)."""
    args: dict[str, str | None] = {}
    for ins in instructions(path, "ARG"):
        name, eq, default = ins.args.partition("=")
        args[name.strip()] = default.strip().strip('"') if eq else None
    return args


def env_settings(path: Path) -> dict[str, str]:
    """What the ENV instructions set (KEY=VALUE form)."""
    env: dict[str, str] = {}
    for ins in instructions(path, "ENV"):
        for token in shlex.split(ins.args):
            key, eq, value = token.partition("=")
            assert eq, f"{path}:{ins.line}: use ENV KEY=VALUE, not the legacy `ENV KEY VALUE`"
            env[key] = value
    return env


def base_images(path: Path) -> list[str]:
    """The image of each FROM, build arguments resolved to their defaults."""
    args = build_args(path)
    images = []
    for ins in instructions(path, "FROM"):
        words = [w for w in ins.args.split() if not w.startswith("--")]
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1)) or m.group(0), words[0])
        images.append(image)
    return images


def exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form CMD / ENTRYPOINT / HEALTHCHECK CMD, or None for the shell form."""
    try:
        value = json.loads(args)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


# ---------------------------------------------------------------------------------------------- images

@dataclass(frozen=True)
class ImageRef:
    """An image reference split the way a registry sees it."""
    ref: str
    repository: str  # everything before the tag: [registry/][path/]name
    name: str        # the last path component
    tag: str | None
    digest: str | None

    @property
    def prefix(self) -> str:
        """The registry and path before the name ('' for a Docker Hub library image)."""
        return self.repository.rpartition("/")[0]


def image_ref(ref: str) -> ImageRef:
    rest, _, digest = ref.partition("@")
    last = rest.rpartition("/")[2]
    tag = None
    if ":" in last:
        rest, _, tag = rest.rpartition(":")
    return ImageRef(ref, rest, rest.rpartition("/")[2], tag, digest or None)


# ---------------------------------------------------------------------------------------------- compose

_VAR = re.compile(r"\$(?:\$|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err},
    ${VAR?err}, and $$ for a literal $. A required variable that is missing raises KeyError."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, word = m.group(2), m.group(3) or ""
        value = env.get(name)
        empty = value is None or (value == "" and op and op.startswith(":"))
        if op in (":-", "-"):
            return word if empty else value
        if op in (":?", "?"):
            if empty:
                raise KeyError(f"${{{name}}} is required: {word}")
            return value
        if value is None:
            raise KeyError(f"${{{name}}} has no value and no default")
        return value
    return _VAR.sub(sub, text)


def compose_variables(text: str) -> dict[str, str | None]:
    """Variables a compose file substitutes -> their default (None when required or without one)."""
    out: dict[str, str | None] = {}
    for m in _VAR.finditer(text):
        name = m.group(1) or m.group(4)
        if name:
            op = m.group(2)
            out[name] = (m.group(3) or "") if op in (":-", "-") else None
    return out


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file; comments and blank lines skipped."""
    env = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        assert eq and re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f"{path}:{number}: not KEY=VALUE: {raw!r}"
        env[key] = value
    return env


def _fill(node, env):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_fill(v, env) for v in node]
    if isinstance(node, dict):
        return {k: _fill(v, env) for k, v in node.items()}
    return node


def load_compose(env: dict[str, str] | None = None) -> dict:
    """infra/compose.yaml parsed (YAML anchors and merge keys resolved) with its variables filled in
    from `env` (default: compose.env.example), as `docker compose` does with infra/.env."""
    if env is None:
        env = read_env_file(INFRA / "compose.env.example")
    return _fill(load_yaml((INFRA / "compose.yaml").read_text()), env)


def service_env(service: dict) -> dict[str, str]:
    """A compose service's `environment`, list or mapping form, as a mapping."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command_words(value) -> list[str]:
    """A command (string or list) as words."""
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


# ---------------------------------------------------------------------------------------------- YAML files

def load_yaml_documents(path: Path) -> list:
    return [d for d in yaml.load_all(path.read_text(), Loader=StrictLoader) if d is not None]


def kube_documents() -> list[dict]:
    """Every Kubernetes object in infra/ (RayCluster, RayJob, the Secret example)."""
    docs = []
    for path in sorted(INFRA.glob("*.yaml")):
        if path.name in ("compose.yaml", "ray-cluster.yaml"):
            continue
        docs += [d for d in load_yaml_documents(path) if isinstance(d, dict) and "kind" in d]
    return docs


def pod_specs(doc: dict) -> list[dict]:
    """The pod specs inside a RayCluster or RayJob."""
    spec = doc.get("spec", {})
    specs = []
    if doc["kind"] == "RayCluster":
        specs.append(spec["headGroupSpec"]["template"]["spec"])
        specs += [g["template"]["spec"] for g in spec.get("workerGroupSpecs", [])]
    elif doc["kind"] == "RayJob":
        if "rayClusterSpec" in spec:
            specs += pod_specs({"kind": "RayCluster", "spec": spec["rayClusterSpec"]})
        if "submitterPodTemplate" in spec:
            specs.append(spec["submitterPodTemplate"]["spec"])
    return specs


def containers(doc: dict) -> list[dict]:
    return [c for spec in pod_specs(doc) for c in spec.get("containers", [])]


def work_pool_template() -> dict:
    return json.loads((INFRA / "prefect-k8s-work-pool.json").read_text())


def ray_cluster_config() -> dict:
    return load_yaml((INFRA / "ray-cluster.yaml").read_text())


def ray_cluster_images(cfg: dict) -> dict[str, str]:
    """Node type -> the image `ray up` runs on it (the same precedence as Ray's docker runner)."""
    docker = cfg.get("docker", {})
    images = {}
    for name, node in cfg["available_node_types"].items():
        if name == cfg["head_node_type"]:
            images[name] = docker.get("head_image", docker.get("image"))
        else:
            images[name] = node.get("docker", {}).get("worker_image") or docker.get("worker_image", docker.get("image"))
    return images


def ray_run_option_env(cfg: dict) -> dict[str, str]:
    """Variables set with `-e NAME=VALUE` in the docker run options of ray-cluster.yaml."""
    docker = cfg.get("docker", {})
    options = list(docker.get("run_options", [])) + list(docker.get("head_run_options", []))
    options += list(docker.get("worker_run_options", []))
    for node in cfg["available_node_types"].values():
        options += list(node.get("docker", {}).get("worker_run_options", []))
    env = {}
    for option in options:
        words = shlex.split(option)
        for flag, value in zip(words, words[1:]):
            if flag in ("-e", "--env"):
                key, _, val = value.partition("=")
                env[key] = val
    return env


def all_image_refs() -> dict[str, list[str]]:
    """Where each image is named -> the references there (Dockerfile bases included)."""
    out: dict[str, list[str]] = {}
    for path in (WORKER_DOCKERFILE, MLFLOW_DOCKERFILE):
        out[f"docker/{path.name} FROM"] = base_images(path)
    compose = load_compose()
    out["infra/compose.yaml"] = [s["image"] for s in compose["services"].values() if "image" in s]
    out["infra/ray-cluster.yaml"] = list(ray_cluster_images(ray_cluster_config()).values())
    for doc in kube_documents():
        if doc["kind"] in ("RayCluster", "RayJob"):
            out.setdefault(f"infra {doc['kind']} {doc['metadata']['name']}", []).extend(
                c["image"] for c in containers(doc))
    out["infra/prefect-k8s-work-pool.json"] = [work_pool_template()["variables"]["properties"]["image"]["default"]]
    return out
