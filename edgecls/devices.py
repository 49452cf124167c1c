"""Device profiles: the budgets a model must fit, typed and checked when loaded.

A profile is a YAML file: one shipped with edgecls (`edgecls/profiles/<name>.yaml`,
listed by `list_profiles`) or the user's own. Microcontroller profiles (`kind: mcu`)
give flash and RAM in bytes, checked against `edgecls firmware`'s measured arena;
Linux profiles (`kind: linux`) give at least one of model bytes, resident memory
and p50 latency, checked against `edgecls bench`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgecls.config import build_section, read_yaml
from edgecls.errors import ConfigError

PROFILES = Path(__file__).resolve().parent / "profiles"


@dataclass(frozen=True)
class DeviceProfile:
    """Budgets of one device.

    Attributes:
        name: Profile name.
        kind: `mcu` (TFLite Micro firmware) or `linux` (LiteRT / ONNX Runtime).
        description: One line for reports.
        flash_bytes: MCU: flash for the model array, bytes.
        ram_bytes: MCU: RAM for the tensor arena, bytes.
        max_model_bytes: Linux: largest model file, bytes.
        max_ram_mib: Linux: peak resident memory of the runtime, MiB.
        max_p50_ms: Linux: median single-image latency, ms.
    """

    name: str
    kind: Literal["mcu", "linux"]
    description: str = ""
    flash_bytes: int | None = None
    ram_bytes: int | None = None
    max_model_bytes: int | None = None
    max_ram_mib: float | None = None
    max_p50_ms: float | None = None

    def __post_init__(self) -> None:
        budgets = ("flash_bytes", "ram_bytes", "max_model_bytes", "max_ram_mib", "max_p50_ms")
        for key in budgets:
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"profile `{self.name}`: `{key}` must be a positive number; got {value!r}.")
        needed = ("flash_bytes", "ram_bytes") if self.kind == "mcu" else ()
        missing = [key for key in needed if getattr(self, key) is None]
        if missing:
            raise ConfigError(f"profile `{self.name}` (kind mcu) needs `{missing[0]}`, a budget in bytes.")
        if self.kind == "linux" and all(getattr(self, key) is None for key in budgets[2:]):
            raise ConfigError(f"profile `{self.name}` (kind linux) needs one of `max_model_bytes`, `max_ram_mib`, `max_p50_ms`.")


def list_profiles() -> list[str]:
    """Names of the profiles shipped with edgecls."""
    return sorted(p.stem for p in PROFILES.glob("*.yaml"))


def load_profile(name: str) -> DeviceProfile:
    """A shipped profile by name, or a YAML file by path.

    Raises:
        ConfigError: no such profile (the message lists the shipped ones), or a file that is not
            UTF-8 YAML, not a mapping, has an unknown key, a budget of the wrong type or sign, or lacks one.
    """
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROFILES / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"the device profile must be one of {', '.join(list_profiles())} or a YAML file; got {name!r}.")
    values = read_yaml(path, "a device profile")
    if not isinstance(values, dict) or not isinstance(values.get("name"), str) or values.get("kind") not in ("mcu", "linux"):
        raise ConfigError(f"profile {path} needs `name` and `kind: mcu|linux`.")
    return build_section(DeviceProfile, values, f"profile {values['name']}")
