"""The one typed configuration object, `EdgeConfig`, with one section per stage.

Every value and combination is checked in `__post_init__`, before TensorFlow is
imported. A config loads from YAML plus dotted overrides (`train.epochs=3`), and
the resolved copy saved in a run folder reloads to an equal object.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from edgecls.config.common import (
    AUGMENTATIONS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    EXPORT_STAGES,
    MIXING,
    PIPELINE_STAGES,
    Recipe,
    default_recipe,
    fail,
)
from edgecls.config.deployment import (
    BenchConfig,
    ExportConfig,
    FirmwareConfig,
    OptimizeConfig,
    PipelineConfig,
    ReportConfig,
    ValidateConfig,
)
from edgecls.config.training import DataConfig, ModelConfig, RunConfig, TrainConfig
from edgecls.errors import ConfigError
from edgecls.models.specs import get_spec

__all__ = [
    "AUGMENTATIONS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EPOCHS",
    "DEFAULT_LR",
    "EXPORT_STAGES",
    "MIXING",
    "PIPELINE_STAGES",
    "BenchConfig",
    "DataConfig",
    "EdgeConfig",
    "ExportConfig",
    "FirmwareConfig",
    "ModelConfig",
    "OptimizeConfig",
    "PipelineConfig",
    "Recipe",
    "ReportConfig",
    "RunConfig",
    "TrainConfig",
    "ValidateConfig",
    "apply_overrides",
    "build_section",
    "config_from_dict",
    "default_recipe",
    "load_config",
    "read_yaml",
]

# A number key: what the error calls it, and the types it converts from (`--set` values arrive as strings).
NUMBERS = {int: ("an integer", (int, str)), float: ("a number", (int, float, str))}
BOOLEAN_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


@dataclass(frozen=True)
class EdgeConfig:
    """The whole configuration: one section per stage."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    firmware: FirmwareConfig = field(default_factory=FirmwareConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def __post_init__(self) -> None:
        blocks = get_spec(self.model.name).num_blocks
        if self.train.strategy == "partial" and self.train.unfreeze > blocks:
            fail(
                "train.unfreeze",
                f"in [1, {blocks}] for {self.model.name} ({blocks} blocks)",
                self.train.unfreeze,
                "Use `--strategy full` to unfreeze everything.",
            )
        if self.train.teacher and self.train.distill_targets == "cached" and self.data.mode == "stream":
            fail("train.distill_targets", "`online` with a streamed data set (data.mode)", "cached",
                  "Cached teacher outputs need the training images in memory.")  # fmt: skip

    @property
    def run_name(self) -> str:
        """The run folder name: `run.name`, or `<model>-<strategy>`."""
        return self.run.name or f"{self.model.name}-{self.train.strategy}"

    @property
    def run_path(self) -> Path:
        """The run folder: `<runs_dir>/<run_name>`."""
        return Path(self.run.runs_dir) / self.run_name

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), suitable for YAML or JSON."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        """The resolved config as YAML, reloadable with `load_config`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Convert a YAML or CLI value to the field's declared type, or fail clearly."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in {"none", "null"} and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, inner, value)
    if origin is Literal:
        if value not in args:
            fail(key, "one of " + ", ".join(map(str, args)), value)
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v and v != "none"]
        if not isinstance(value, (list, tuple)):
            fail(key, "a list", value)
        return tuple(_coerce(key, args[0], v) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in BOOLEAN_WORDS:
            return BOOLEAN_WORDS[value.lower()]  # `--set export.strip_strings=true` arrives as a string
        fail(key, "true or false", value)
    if hint in NUMBERS:
        what, accepted = NUMBERS[hint]
        if isinstance(value, bool) or not isinstance(value, accepted):
            fail(key, what, value)
        try:
            return hint(value)
        except ValueError:
            fail(key, what, value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            fail(key, "a string", value)
        return str(value)
    return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping (YAML would let the last one win silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key `{key}` is given twice (line {key_node.start_mark.line + 1}).")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse a YAML file as plain data (safe loader, no duplicate keys, UTF-8).

    Args:
        path: The file.
        what: How to name it in errors, e.g. "`--config`".

    Raises:
        ConfigError: missing, not a file, not UTF-8 text, not valid YAML, or a duplicate key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} must be an existing YAML file; got {str(path)!r}.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file; {what} must be YAML.") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}.") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None


def build_section(cls: type, values: Any, prefix: str) -> Any:
    """A `cls` dataclass from a mapping, each value coerced to its field's type; unknown keys are errors."""
    if not isinstance(values, dict):
        fail(prefix, "a mapping", values)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown config key `{prefix}.{key}`; valid keys in `{prefix}` are: {', '.join(sorted(known))}.")
    kwargs = {k: _coerce(f"{prefix}.{k}", hints[k], v) for k, v in values.items()}
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> EdgeConfig:
    """Build and check an `EdgeConfig` from a nested dict.

    Raises:
        ConfigError: an unknown key, a value of the wrong type, or an invalid combination.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of sections; got {type(values).__name__}.")
    sections = {f.name: f.type for f in dataclasses.fields(EdgeConfig)}
    hints = typing.get_type_hints(EdgeConfig)
    for key in values:
        if key not in sections:
            raise ConfigError(f"unknown config section `{key}`; valid sections are: {', '.join(sections)}.")
    built = {k: build_section(hints[k], {} if v is None else v, k) for k, v in values.items()}
    return EdgeConfig(**built)


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `values` with dotted `section.key` overrides applied (None skipped)."""
    merged = {k: dict(v or {}) for k, v in values.items()}
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"an override must look like `section.key=value`; got {dotted!r}.")
        merged.setdefault(section, {})[key] = value
    return merged


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> EdgeConfig:
    """Load a YAML config (or the defaults) and apply dotted overrides.

    Args:
        path: A YAML file written by edgecls or by hand; None for the defaults.
        overrides: `{"train.epochs": 3, ...}`; None values are ignored.

    Raises:
        ConfigError: the file is missing or not valid YAML, or a key/value is invalid.
    """
    values: Any = {}
    if path is not None:
        values = read_yaml(path, "`--config`")
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must be a mapping of config sections; got a {type(values).__name__}.")
        for section, body in values.items():
            if body is not None and not isinstance(body, dict):
                raise ConfigError(f"config section `{section}` in {path} must be a mapping of keys; got {body!r}.")
    return config_from_dict(apply_overrides(values, overrides or {}))
