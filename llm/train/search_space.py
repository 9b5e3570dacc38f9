"""The search space of a sweep: `--param` specs, checked against the config model, as Ray Tune domains.

    train.learning_rate=loguniform:1e-4:1e-2    real numbers, uniform in log space (a float field)
    train.weight_decay=uniform:0:0.2            real numbers (a float field)
    train.warmup_steps=randint:5:50             integers, both ends included (an int field)
    model.layers=choice:2,4                     one of the listed values, typed by the field

Only `model.*` and `train.*` fields shape a pretraining run, so only they can be swept. Every end of a
range and every listed value is validated as a config (ranges, cross-field rules) before anything runs,
and an error names the spec and the field.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel

from llm.config import ConfigError, PipelineConfig, build_config

Kind = Literal["uniform", "loguniform", "randint", "choice"]
KINDS: tuple[str, ...] = get_args(Kind)
#: Sections whose fields a pretraining trial reads.
SWEEPABLE_SECTIONS = ("model", "train")
#: Fields that size a trial's Ray Train worker group: one sweep reserves the same resources for every trial.
FIXED_RESOURCE_FIELDS = frozenset({"train.num_workers", "train.cpus_per_worker", "train.use_gpu"})
#: Combinations of the specs' ends and values checked together up front (beyond, each is checked alone).
MAX_CHECKED_COMBINATIONS = 256


@dataclass(frozen=True)
class ParamSpec:
    """One swept field: its dotted `path`, the distribution `kind`, and `values`: (low, high) for a range
    (both checked up front), the candidates for `choice`, typed as the config field holds them."""

    path: str
    kind: Kind
    values: tuple[Any, ...]
    text: str

    def domain(self):
        """The Ray Tune domain this spec samples from."""
        from ray import tune

        if self.kind == "uniform":
            return tune.uniform(*self.values)
        if self.kind == "loguniform":
            return tune.loguniform(*self.values)
        if self.kind == "randint":
            low, high = self.values
            return tune.randint(low, high + 1)  # Tune's upper end is exclusive; ours is included
        return tune.choice(list(self.values))

    @property
    def spec(self) -> str:
        """The spec without the field: `loguniform:0.0001:0.01`."""
        return f"{self.kind}:" + (",".join(map(str, self.values)) if self.kind == "choice"
                                  else ":".join(map(str, self.values)))


def with_values(base: PipelineConfig, values: dict[str, Any], origin: str = "sweep trial") -> PipelineConfig:
    """`base` with the dotted fields of `values` set, validated as a whole (a `ConfigError` on problems)."""
    data = base.model_dump(mode="json")
    for path, value in values.items():
        node = data
        *sections, name = path.split(".")
        for part in sections:
            node = node[part]
        node[name] = value
    return build_config(data, origin=origin)


def field_value(cfg: PipelineConfig, path: str) -> Any:
    """The value of the dotted field `path` of `cfg`."""
    node: Any = cfg
    for part in path.split("."):
        node = getattr(node, part)
    return node


def parse_space(texts: list[str], base: PipelineConfig) -> list[ParamSpec]:
    """The specs of `--param` texts, each checked against `base`, and their values checked together."""
    if not texts:
        raise ConfigError("a sweep needs at least one --param FIELD=KIND:ARGS (e.g. train.learning_rate="
                          "loguniform:1e-4:1e-2)")
    specs = [parse_param(text, base) for text in texts]
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.path in seen:
            raise ConfigError(f"--param {spec.text}: {spec.path} is already swept by --param {seen[spec.path]}")
        seen[spec.path] = spec.text
    _check_combinations(specs, base)
    return specs


def parse_param(text: str, base: PipelineConfig) -> ParamSpec:
    """One `FIELD=KIND:ARGS` spec, its values typed and validated by the config field."""
    path, sep, spec = text.partition("=")
    path, spec = path.strip(), spec.strip()
    if not sep or not path or not spec:
        raise ConfigError(f"--param {text!r} is not FIELD=KIND:ARGS (e.g. train.learning_rate=loguniform:1e-4:1e-2)")
    annotation = _field_annotation(path, text)
    kind, _, args = spec.partition(":")
    if kind not in KINDS:
        raise ConfigError(f"--param {text}: unknown distribution {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "choice":
        raw = [part.strip() for part in args.split(",")]
        if not args.strip() or any(not part for part in raw):
            raise ConfigError(f"--param {text}: choice needs values separated by commas (choice:v1,v2,...)")
        values = tuple(_typed(path, _yaml_scalar(part), base, text) for part in raw)
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"--param {text}: a value of the choice is listed twice")
        return ParamSpec(path, "choice", values, text)
    ends = args.split(":")
    if len(ends) != 2 or not all(e.strip() for e in ends):
        raise ConfigError(f"--param {text}: {kind} needs two ends, {kind}:LOW:HIGH")
    base_type = _number_type(annotation)
    if kind == "randint":
        if base_type is not int:
            raise ConfigError(f"--param {text}: randint draws integers but {path} is not an integer field; "
                              "use uniform or loguniform for real numbers, choice for other values")
        low, high = (_number(e, int, text) for e in ends)
        if low > high:
            raise ConfigError(f"--param {text}: the low end {low} is above the high end {high}")
    else:
        if base_type is not float:
            hint = "use randint:LOW:HIGH" if base_type is int else "use choice:v1,v2,..."
            raise ConfigError(f"--param {text}: {kind} draws real numbers but {path} is not a real-number field; "
                              f"{hint}")
        low, high = (_number(e, float, text) for e in ends)
        if not low < high:
            raise ConfigError(f"--param {text}: the low end {low:g} must be below the high end {high:g}")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"--param {text}: loguniform needs a low end above 0 (got {low:g})")
    return ParamSpec(path, kind, (_typed(path, low, base, text), _typed(path, high, base, text)), text)


def _field_annotation(path: str, text: str) -> Any:
    """The annotation of the config field at `path`: an error naming it when it is not a swept field."""
    parts = path.split(".")
    if parts[0] not in SWEEPABLE_SECTIONS or len(parts) < 2:
        raise ConfigError(f"--param {text}: only fields of {' and '.join(s + '.*' for s in SWEEPABLE_SECTIONS)} "
                          f"shape pretraining; {path} is not one")
    if path in FIXED_RESOURCE_FIELDS:
        raise ConfigError(f"--param {text}: {path} sets a trial's resources, which are the same for every trial "
                          "of a sweep; set it in the config instead")
    model: type[BaseModel] = PipelineConfig
    annotation: Any = None
    for i, part in enumerate(parts):
        fields = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
        if part not in fields:
            raise ConfigError(f"--param {text}: {'.'.join(parts[:i + 1])} is not a config field")
        annotation = fields[part].annotation
        model = annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        raise ConfigError(f"--param {text}: {path} is a config section, not a field")
    return annotation


def _number_type(annotation: Any) -> type | None:
    """int or float for a numeric field (optional ones included), None for any other."""
    args = [a for a in get_args(annotation) if a is not type(None)] if get_origin(annotation) else [annotation]
    if len(args) == 1 and args[0] in (int, float):
        return args[0]
    return None


def _number(text: str, kind: type, spec: str) -> int | float:
    try:
        value = kind(text.strip())
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"--param {spec}: {text.strip()!r} is not {what}") from None
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"--param {spec}: {text.strip()!r} is not a finite number")
    return value


def _yaml_scalar(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (str, int, float, bool)) or value is None else text


def _typed(path: str, value: Any, base: PipelineConfig, spec: str) -> Any:
    """`value` as the field at `path` holds it, after validating `base` with it set."""
    try:
        return field_value(with_values(base, {path: value}), path)
    except ConfigError as exc:
        raise ConfigError(f"--param {spec}: {value!r} is not a valid {path}: {_problems(exc)}") from None


def _check_combinations(specs: list[ParamSpec], base: PipelineConfig) -> None:
    """Validate the config with the specs' ends and values together (cross-field rules such as heads
    dividing the width), up to `MAX_CHECKED_COMBINATIONS` combinations."""
    if len(specs) < 2:
        return
    count = math.prod(len(spec.values) for spec in specs)
    if count > MAX_CHECKED_COMBINATIONS:
        return
    for combination in itertools.product(*(spec.values for spec in specs)):
        values = {spec.path: value for spec, value in zip(specs, combination)}
        try:
            with_values(base, values)
        except ConfigError as exc:
            shown = ", ".join(f"{path}={value}" for path, value in values.items())
            raise ConfigError(f"--param: the combination {shown} is not a valid config: {_problems(exc)}") from None


def _problems(exc: ConfigError) -> str:
    """A `build_config` error's field lines, joined on one line."""
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
    return "; ".join(lines) or str(exc)
