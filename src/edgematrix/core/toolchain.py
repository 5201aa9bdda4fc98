"""The locked toolchain: the lock every Nox session installs with, and the environment key of baselines.

**The lock** is ``matrix/constraints.txt``, a pip constraints file (``pip install -c``) of exact
``name==version`` lines, written by ``nox -s lock``. Every session of ``noxfile.py`` installs with
it, and the wheelhouses of the offline images are downloaded with it, so a fresh clone, CI and a
container all install the versions the committed baselines were measured with, whatever the
package index offers that day. Its header names the Python and platform it was resolved on
(``# python: 3.11``, ``# platform: linux x86_64``); it is applied as it is everywhere (a constraint
only limits the version of a package that something requires), and to an image's wheelhouse only
when the image's Python is the lock's (see :func:`lock_applies`).

**The environment key** (:func:`current_environment`) is what a baseline is keyed by besides the
backend, precision, device and power mode (``gates/baseline.py``): what determines the numbers of a
run, read from the running interpreter, never from the bytes of an image:

- ``python``: the interpreter's major.minor (wheels are built per Python ABI; the lock is resolved
  for one);
- ``arch``: ``x86_64`` or ``aarch64``;
- one entry per installed distribution of :data:`NUMERIC_PACKAGES` (the packages that train,
  export, quantize, run or score a model), its exact installed version, local label included
  (``2.13.0+cpu`` is torch's CPU build, ``2.13.0`` PyPI's CUDA build).

Not keyed, by decision: the image digest (a rebuild of the same recipe on another machine gets
another one, although it holds the same packages), the base image's Debian packages and its glibc.
The numeric work runs in manylinux wheels that bundle their own kernels (ONNX Runtime's MLAS,
OpenVINO's plugins, ATen); the base only provides the interpreter and glibc, which those wheels
need at a minimum version and do not compute with. Measured on this project's 2-core x86 host: a
cell in its Debian 12 container scored the same accuracy as the local run on the same cache, with
same-run p50 ratios within 3% (README, "Measured"). Keying glibc would split GitHub's Ubuntu 24.04
runners (glibc 2.39) from the Debian 12 image (2.36): no one baseline could gate both.
:func:`libc` is recorded beside the key, for the reader of a baseline, not compared.

So a local run and a ``--runner docker --offline-base`` run with the lock's packages have the same
key and share one baseline file per cell and backend.

Stdlib only: the noxfile imports this module before anything is installed.
"""

from __future__ import annotations

import platform
import re
import sys
import textwrap
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edgematrix.errors import EdgeMatrixError

#: the lock, relative to the repository root
LOCK_PATH = Path("matrix") / "constraints.txt"

#: distributions whose versions determine a cell's numbers (accuracy, size, latency ratios): training
#: and export (torch, onnx, onnxscript, onnxslim), pre/post-processing and metrics (numpy, pillow,
#: scipy, pycocotools), optimization (torch-pruning, nvidia-modelopt) and the runtimes.
NUMERIC_PACKAGES = (
    "numpy",
    "pillow",
    "scipy",
    "pycocotools",
    "torch",
    "onnx",
    "onnxscript",
    "onnxslim",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "tensorrt",
    "torch-pruning",
    "nvidia-modelopt",
)

#: keys of the environment that are not packages
ENVIRONMENT_FACTS = ("python", "arch")

_ARCH = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}


class LockError(EdgeMatrixError):
    """The lock file is missing or malformed."""


def canonical_name(name: str) -> str:
    """PEP 503 normalized distribution name (``Torch_Pruning`` → ``torch-pruning``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def public_version(version: str) -> str:
    """The version without its local label (``2.13.0+cpu`` → ``2.13.0``)."""
    return version.split("+", 1)[0]


def machine_arch(machine: str | None = None) -> str:
    raw = (machine or platform.machine()).lower()
    return _ARCH.get(raw, raw)


def libc() -> str:
    """The C library of this interpreter (``glibc 2.36``): recorded with a baseline, not keyed."""
    name, version = platform.libc_ver()
    return f"{name} {version}".strip() or "unknown"


def current_environment() -> dict[str, str]:
    """The environment key of this interpreter: python, arch and every installed numeric package.

    This is what the cell pipeline records in a baseline and compares with it. Cheap: reads package
    metadata, imports no runtime.
    """
    env = {"python": f"{sys.version_info.major}.{sys.version_info.minor}", "arch": machine_arch()}
    for name in NUMERIC_PACKAGES:
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return env


@dataclass(frozen=True)
class Lock:
    """A parsed lock: pins by canonical name, and the Python / platform it was resolved on."""

    path: Path
    pins: dict[str, str]
    python: str
    platform: str

    def environment(self) -> dict[str, str]:
        """The environment key a full install of the lock gives (versions without local labels)."""
        arch = self.platform.split()[-1] if self.platform else ""
        env = {"python": self.python, "arch": machine_arch(arch)}
        installed = [n for n in NUMERIC_PACKAGES if n in self.pins and n not in SAME_RELEASE_AS]
        env.update({name: self.pins[name] for name in installed})
        return env


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*$")


def read_lock(path: str | Path) -> Lock:
    """Parse the lock (header fields ``# python:`` and ``# platform:``, then ``name==version`` lines)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise LockError(
            f"the lock {path} does not exist; create it with `nox -s lock` and commit it "
            "(it pins what every Nox session installs)"
        ) from None
    header: dict[str, str] = {}
    pins: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep and key.strip() in ("python", "platform"):
                header.setdefault(key.strip(), value.strip())
            continue
        m = _PIN.match(line)
        if m is None:
            raise LockError(
                f"{path}:{n}: {line!r} is not an exact pin (name==version); regenerate the lock with `nox -s lock`"
            )
        name = canonical_name(m.group(1))
        if name in pins:
            raise LockError(f"{path}:{n}: {name} is pinned twice; regenerate the lock with `nox -s lock`")
        pins[name] = m.group(2)
    missing = [k for k in ("python", "platform") if k not in header]
    if missing:
        raise LockError(
            f"{path}: the header lacks {' and '.join(f'# {k}:' for k in missing)} (the interpreter and platform "
            "it was resolved on); regenerate it with `nox -s lock`"
        )
    return Lock(path, pins, header["python"], header["platform"])


#: pins added to the lock beside what the lock's virtualenv resolved: CUDA's ONNX Runtime build is the
#: same release as the CPU build (it cannot be installed beside it to be resolved)
SAME_RELEASE_AS = {"onnxruntime-gpu": "onnxruntime"}


def render_lock(freeze: list[str], *, python: str, platform: str, libc: str, made_by: str) -> str:
    """The lock's text from ``pip freeze`` lines: sorted exact pins under a header saying how it was made.

    Local version labels are dropped (``torch==2.13.0+cpu`` → ``torch==2.13.0``): a constraint without
    one takes the CPU wheel where pip can reach it (this project's CI adds the CPU index) and PyPI's
    build elsewhere; the environment key still records the build that was installed.
    """
    pins: dict[str, str] = {}
    for raw in freeze:
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("-e "):
            continue
        m = _PIN.match(line)
        if m is None:
            raise ValueError(
                f"pip freeze line {line!r} is not an exact pin (name==version); the lock needs one per package"
            )
        pins[canonical_name(m.group(1))] = public_version(m.group(2))
    for extra, same in SAME_RELEASE_AS.items():
        if same in pins and extra not in pins:
            pins[extra] = pins[same]
    header = [
        "# The lock: the exact version of every package the Nox sessions install (`pip install -c",
        "# matrix/constraints.txt ...` in every session of noxfile.py); the offline images' wheelhouses are",
        "# downloaded with it too (docker/<image>/requirements.txt + this file, for images of the Python below).",
        *textwrap.wrap(f"Made by {made_by}.", width=100, initial_indent="# ", subsequent_indent="# "),
        "# Local version labels are dropped (torch's +cpu): torch==X takes the CPU wheel where pip reaches it.",
        "# onnxruntime-gpu is pinned to onnxruntime's release (the two builds cannot be installed together).",
        "# Do not edit by hand: change a runtime pin in docker/x86_cpu/requirements.txt (or a range in",
        "# pyproject.toml), run `nox -s lock` and `nox -s update_baselines`, and commit the lock and the",
        "# baselines in one pull request (README: Updating the toolchain).",
        f"# python: {python}",
        f"# platform: {platform}",
        f"# libc: {libc}",
    ]
    return "\n".join([*header, *(f"{name}=={pins[name]}" for name in sorted(pins))]) + "\n"


def lock_applies(lock: Lock, python_version: str) -> bool:
    """Whether ``lock`` pins the packages of an interpreter (or image) of ``python_version`` (``3.11``).

    Images of another Python (JetPack's 3.10, the NGC image's 3.12) install their recipe's own pins:
    the lock's versions need not exist for that ABI.
    """
    return lock.python == ".".join(python_version.split(".")[:2])
