"""Which devices one `edgecls bench` measures: `--device` (repeatable) or a fleet file.

A fleet file lists devices with their own profile, Python and key:

    devices:
      - url: ssh://pi@pi-kitchen
        profile: raspberry-pi-4
        python: /home/pi/venv/bin/python
        key: ~/.ssh/id_ed25519
        known_hosts: ~/.ssh/known_hosts_fleet
      - url: host

Fields a device leaves out come from the `bench` config (`profile`, `remote_python`,
`ssh_key`, `known_hosts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgecls.bench.ssh import Target
from edgecls.config import BenchConfig, build_section, read_yaml
from edgecls.errors import ConfigError


@dataclass(frozen=True)
class Device:
    """One device of a bench: where it is and how to reach and judge it.

    Attributes:
        url: `host` or `ssh://user@host[:port]`.
        profile: Device profile whose budgets to check, or None.
        python: Python on the device (SSH only).
        key: Private key (SSH only).
        known_hosts: known_hosts file pinning the device's key (SSH only).
    """

    url: str
    profile: str | None = None
    python: str = "python3"
    key: str | None = None
    known_hosts: str | None = None

    def __post_init__(self) -> None:
        Target.parse(self.url)  # ConfigError for anything but host / a safe ssh:// URL

    @property
    def target(self) -> Target:
        return Target.parse(self.url)


def _expand(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser())


def read_fleet(path: str | Path, cfg: BenchConfig) -> list[Device]:
    """The devices of a fleet file, with `cfg`'s values for the fields a device leaves out.

    Raises:
        ConfigError: not a YAML mapping with a non-empty `devices` list, an unknown key, a bad URL,
            or the same URL twice.
    """
    values = read_yaml(path, "a fleet file")
    entries = values.get("devices") if isinstance(values, dict) else None
    if not isinstance(entries, list) or not entries or set(values) != {"devices"}:
        raise ConfigError(f"fleet file {path} needs one key, `devices`: a list of `url: ...` entries.")
    devices = []
    for index, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or "url" not in entry:
            raise ConfigError(f"fleet file {path}: device {index} needs a `url`.")
        defaults = {"profile": cfg.profile, "python": cfg.remote_python, "key": cfg.ssh_key, "known_hosts": cfg.known_hosts}
        device = build_section(Device, {**defaults, **entry}, f"fleet file {path}, device {index}")
        devices.append(Device(device.url, device.profile, device.python, _expand(device.key), _expand(device.known_hosts)))
    return _unique(devices, str(path))


def bench_devices(cfg: BenchConfig) -> list[Device]:
    """The devices `cfg` asks for: its fleet file, else its `device` list (default: this host)."""
    if cfg.fleet:
        return read_fleet(cfg.fleet, cfg)
    devices = [Device(url, cfg.profile, cfg.remote_python, cfg.ssh_key, cfg.known_hosts) for url in cfg.device or ("host",)]
    return _unique(devices, "`--device`")


def _unique(devices: list[Device], where: str) -> list[Device]:
    urls = [d.url for d in devices]
    twice = sorted({u for u in urls if urls.count(u) > 1})
    if twice:
        raise ConfigError(f"{where} names {twice[0]} twice; each device is measured once.")
    return devices
