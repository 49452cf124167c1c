"""SSH devices: a URL grammar that cannot smuggle options, and non-interactive, bounded `ssh`/`scp`.

The worker (`edgecls/worker.py`, self-contained) and `preprocessing.py` are copied
to a fresh work folder on the device, run there with the device's Python and
runtime, and the folder is removed afterwards.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecls.errors import ConfigError, DeviceError
from edgecls.worker import read_answer

PACKAGE = Path(__file__).resolve().parent.parent
WORKER = PACKAGE / "worker.py"
PREPROCESSING = PACKAGE / "preprocessing.py"  # the worker's one import from edgecls, copied beside it


@dataclass(frozen=True)
class Target:
    """Where to benchmark: `host`, or an SSH device."""

    kind: str
    user: str | None = None
    host: str | None = None
    port: int = 22

    @classmethod
    def parse(cls, text: str) -> Target:
        """`host` or `ssh://user@host[:port]`.

        Raises:
            ConfigError: anything else.
        """
        if text == "host":
            return cls("host")
        if text.startswith("ssh://"):
            rest = text.removeprefix("ssh://")
            user, at, address = rest.rpartition("@")
            host, colon, port = address.partition(":")
            if at and _safe_name(user) and _safe_name(host) and (not colon or (port.isdigit() and 0 < int(port) < 65536)):
                return cls("ssh", user, host, int(port) if colon else 22)
        raise ConfigError(
            f"`--device` must be `host` or `ssh://user@host[:port]` (user and host of letters, digits, `.`, `_`, `-`,"
            f" not starting with `-`); got {text!r}."
        )


def _safe_name(name: str) -> bool:
    """A user or host name that `ssh` cannot mistake for an option: [A-Za-z0-9._-], not starting with `-`."""
    return bool(name) and not name.startswith("-") and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)


def worker_json(done: subprocess.CompletedProcess, where: str) -> dict[str, Any]:
    result = read_answer(done.stdout)
    if result and "error" in result:
        raise DeviceError(f"{where}: {result['error']}")
    if done.returncode != 0 or result is None:
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        if "No module named 'numpy'" in tail:
            tail = "the device's Python lacks NumPy: pip install numpy"
        raise DeviceError(f"{where}: {tail[:300]}")
    return result


class SSHDevice:
    """A Linux device reached with the system `ssh`/`scp`, non-interactively, with bounded timeouts."""

    def __init__(self, target: Target, *, key: str | None, known_hosts: str | None, python: str, timeout: int = 15):
        self.target, self.python, self.timeout = target, python, timeout
        self.options = [
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={timeout}",
            "-o",
            # with a pinned known_hosts file an unknown key is refused, never added to it
            "StrictHostKeyChecking=" + ("yes" if known_hosts else "accept-new"),
        ]
        if known_hosts:
            self.options += ["-o", f"UserKnownHostsFile={known_hosts}"]
        if key:
            self.options += ["-i", key, "-o", "IdentitiesOnly=yes"]
        self.address = f"{target.user}@{target.host}"
        self.where = f"{target.host}:{target.port}"

    def ssh(self, command: str, timeout: int = 1800) -> subprocess.CompletedProcess:
        args = ["ssh", *self.options, "-p", str(self.target.port), "--", self.address, command]
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.where} did not answer within {timeout} s.") from None
        if done.returncode == 255:
            reason = (done.stderr.strip().splitlines() or ["ssh failed"])[-1]
            raise DeviceError(f"cannot use {self.where} over SSH: {reason}")
        return done

    def copy(self, sources: list[Path], folder: str, *, download: bool = False) -> None:
        if download:
            args = [
                "scp",
                *self.options,
                "-P",
                str(self.target.port),
                "--",
                *[f"{self.address}:{s}" for s in sources],
                folder,
            ]
        else:
            args = ["scp", *self.options, "-P", str(self.target.port), "--", *map(str, sources), f"{self.address}:{folder}/"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise DeviceError(f"cannot copy files to/from {self.where}: {done.stderr.strip()[-200:]}")

    def prepare(self, files: list[Path]) -> str:
        """Make a work folder on the device and copy the worker and `files` there; returns its path."""
        done = self.ssh("mktemp -d /tmp/edgecls.XXXXXX", timeout=self.timeout + 15)
        folder = done.stdout.strip()
        if done.returncode != 0 or not folder:
            raise DeviceError(f"{self.where}: cannot create a work folder ({done.stderr.strip()[-200:]})")
        self.copy([WORKER, PREPROCESSING, *files], folder)
        return folder

    def worker(self, folder: str, args: list[str], label: str) -> dict[str, Any]:
        command = " ".join(shlex.quote(a) for a in [self.python, f"{folder}/worker.py", *args])
        return worker_json(self.ssh(f"cd {shlex.quote(folder)} && {command}"), f"{self.where} ({label})")

    def cleanup(self, folder: str) -> None:
        self.ssh(f"rm -rf {shlex.quote(folder)}", timeout=self.timeout + 15)
