"""The Docker runner: run a cell inside its target's container.

``edgematrix run CELL --runner docker`` (``nox -s CELL -- --runner docker``) builds the target image
when it is missing (:mod:`edgematrix.executors.images`), then runs ``edgematrix run CELL --runner
local`` inside it with:

- the repository mounted read-only at ``/workspace`` (code and matrix come from there, so a code
  change never rebuilds the image),
- the results folder read-write at ``/results`` and the cache (data, trained models) at ``/cache``,
  so the container reuses what a local run already trained and leaves its results where a local
  run would,
- ``--data-root`` / ``--ab-base`` mounted read-only when given,
- only allow-listed environment variables, no network, the host user's uid/gid (files it writes
  belong to you), the host's GPUs when the target asks for them.

Logs stream as they come; the container's exit code is the command's; the container is removed on
success, failure and Ctrl-C.

Running something else in a target's image (an evaluation bundle through the target's runtime, a
training stage, the DriveOS runner) is two calls::

    image = target_image("ti", target, cache_dir=cache)          # built when missing; offline variant by default
    code = run_in_image(image, ["python3", "-m", "edgematrix.executors.on_device", ...],
                        mounts=[Mount(bundle_dir, "/bundle"), Mount(out_dir, "/out", writable=True)])

:func:`run_in_image` adds the source read-only at ``/workspace`` (on ``PYTHONPATH`` in every image),
runs as the host user with ``HOME=/tmp``, without network, and returns the exit code; an arm64 image
runs under qemu-user (binfmt_misc) on an x86-64 host.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgematrix.errors import EdgeMatrixError
from edgematrix.executors.images import (
    DockerUnavailableError,
    ImageSpec,
    docker_client,
    ensure_target_image,
)
from edgematrix.executors.select import host_arch

#: environment variables passed into the container when set on the host (never secrets by default)
ENV_ALLOWLIST = (
    "CI",
    "GITHUB_ACTIONS",
    "GITHUB_RUN_ID",
    "GITHUB_SHA",
    "GITHUB_REF",
    "GITHUB_HEAD_REF",
    "GITHUB_BASE_REF",
    "TZ",
    "TERM",
    "COLUMNS",
    "NO_COLOR",
    "FORCE_COLOR",
    "OMP_NUM_THREADS",
    "EDGEMATRIX_DATA_ROOT",
)

WORKSPACE, RESULTS, CACHE, DATA, AB_BASE, MATRIX = "/workspace", "/results", "/cache", "/data", "/ab-base", "/matrix"
#: this checkout (src/edgematrix/executors/docker.py -> the repository root): what is mounted at /workspace
REPO_ROOT = Path(__file__).resolve().parents[3]


class ContainerError(EdgeMatrixError):
    """The container could not be created or run."""


@dataclass
class DockerRunOptions:
    repo_root: Path
    matrix_dir: Path
    results_dir: Path
    cache_dir: Path
    data_root: Path | None = None
    ab_base: Path | None = None
    offline_base: bool = False  # build on the debootstrap base instead of the recipe's BASE_IMAGE
    rebuild: bool = False
    extra_env: Sequence[str] = ()  # NAME or NAME=VALUE, added to the allow-list
    cell_args: Sequence[str] = ()  # further `edgematrix run` arguments (e.g. --update-baseline)
    log: Callable[[str], None] | None = None
    mounts: dict[str, tuple[str, str]] = field(default_factory=dict)  # host -> (container, mode), extra


def container_environment(extra: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed host variables that are set, plus ``extra`` (NAME taken from the host, or NAME=VALUE)."""
    env = os.environ if environ is None else environ
    out = {k: env[k] for k in ENV_ALLOWLIST if k in env}
    for item in extra:
        name, sep, value = item.partition("=")
        if not name.isidentifier():
            raise EdgeMatrixError(f"--env {item!r}: expected NAME or NAME=VALUE")
        if sep:
            out[name] = value
        elif name in env:
            out[name] = env[name]
        else:
            raise EdgeMatrixError(f"--env {name}: the variable is not set on this host; use {name}=VALUE")
    return out


def container_command(cell: str, options: DockerRunOptions) -> list[str]:
    cmd = [
        "python3",
        "-m",
        "edgematrix.cli",
        "--matrix",
        _matrix_in_container(options),
        "run",
        cell,
        "--runner",
        "local",
        "--results",
        RESULTS,
        "--cache",
        CACHE,
        "--no-progress",
    ]
    if options.data_root is not None:
        cmd += ["--data-root", DATA]
    if options.ab_base is not None:
        cmd += ["--ab-base", f"{AB_BASE}/{options.ab_base.name}" if options.ab_base.is_file() else AB_BASE]
    return cmd + list(options.cell_args)


def _matrix_in_container(options: DockerRunOptions) -> str:
    matrix = options.matrix_dir.resolve()
    root = options.repo_root.resolve()
    if matrix.is_relative_to(root):
        return f"{WORKSPACE}/{matrix.relative_to(root).as_posix()}"
    return MATRIX


def container_mounts(options: DockerRunOptions) -> dict[str, dict[str, str]]:
    """Host path -> bind spec. The source is read-only; results and cache are read-write."""
    options.results_dir.mkdir(parents=True, exist_ok=True)
    options.cache_dir.mkdir(parents=True, exist_ok=True)
    mounts = {
        str(options.repo_root.resolve()): {"bind": WORKSPACE, "mode": "ro"},
        str(options.results_dir.resolve()): {"bind": RESULTS, "mode": "rw"},
        str(options.cache_dir.resolve()): {"bind": CACHE, "mode": "rw"},
    }
    if options.data_root is not None:
        if not options.data_root.is_dir():
            raise EdgeMatrixError(f"--data-root {options.data_root} is not a folder")
        mounts[str(options.data_root.resolve())] = {"bind": DATA, "mode": "ro"}
    if options.ab_base is not None:
        if not options.ab_base.exists():
            raise EdgeMatrixError(f"--ab-base {options.ab_base} does not exist")
        src = options.ab_base.resolve()
        mounts[str(src.parent if src.is_file() else src)] = {"bind": AB_BASE, "mode": "ro"}
    matrix_inside = _matrix_in_container(options)
    if matrix_inside == MATRIX:  # a matrix folder outside the repository
        mounts[str(options.matrix_dir.resolve())] = {"bind": MATRIX, "mode": "ro"}
    if "--update-baseline" in options.cell_args:  # the one write into the source: reviewed baselines
        baselines = options.matrix_dir / "baselines"
        baselines.mkdir(parents=True, exist_ok=True)
        mounts[str(baselines.resolve())] = {"bind": f"{matrix_inside}/baselines", "mode": "rw"}
    for host, (inside, mode) in options.mounts.items():
        mounts[host] = {"bind": inside, "mode": mode}
    return mounts


def prepare_image(
    client: Any, target_name: str, target: Mapping[str, Any], options: DockerRunOptions
) -> tuple[ImageSpec, str, bool]:
    """Resolve the target's image spec and make sure the image exists. Returns (spec, tag, built)."""
    return ensure_target_image(
        client,
        options.repo_root,
        target_name,
        target,
        options.cache_dir,
        offline=options.offline_base,
        rebuild=options.rebuild,
        log=options.log,
    )


@dataclass(frozen=True)
class Mount:
    """A host folder or file inside the container at ``container`` (an absolute path), read-only unless
    ``writable``. The container runs as the host user: a writable folder must be writable by that user."""

    host: Path
    container: str
    writable: bool = False


@dataclass(frozen=True)
class TargetImage:
    """A target's image that exists on this host."""

    target: str
    tag: str
    spec: ImageSpec
    built: bool  # built by this call (else found)
    offline: bool  # the offline variant (debootstrap base), else the vendor base

    @property
    def arch(self) -> str:
        return self.spec.arch

    @property
    def emulated(self) -> bool:
        """Whether its containers run under qemu-user here (an arm64 image on an x86-64 host)."""
        return self.spec.arch != host_arch()

    def describe(self) -> str:
        variant = "offline variant" if self.offline else "vendor base"
        how = ", under qemu-user" if self.emulated else ""
        return (
            f"{self.tag} ({'built' if self.built else 'cached'}; docker/{self.spec.name}/ {variant}, {self.arch}{how})"
        )


def target_image(
    target_name: str,
    target: Mapping[str, Any] | Any,
    *,
    cache_dir: Path,
    repo_root: Path | None = None,
    offline: bool = True,
    rebuild: bool = False,
    log: Callable[[str], None] | None = None,
    client: Any = None,
) -> TargetImage:
    """The image of ``target`` (its table: a mapping, or the matrix's pydantic ``Target``), built when missing.

    ``offline`` (the default here, where nothing can be pulled): the recipe's offline variant on the
    debootstrap base (``docker/<image>/offline.toml``; needs root once, to debootstrap the base). The wheelhouse
    and the debootstrap base are kept under ``cache_dir`` and in the engine; the tag is a hash of the
    recipe, so an unchanged recipe is found, not rebuilt.
    """
    table = target if isinstance(target, Mapping) else target.model_dump()
    engine = client if client is not None else docker_client()
    spec, tag, built = ensure_target_image(
        engine,
        (repo_root or REPO_ROOT).resolve(),
        target_name,
        table,
        cache_dir,
        offline=offline,
        rebuild=rebuild,
        log=log,
    )
    return TargetImage(target_name, tag, spec, built, offline)


def run_in_image(
    image: TargetImage | str,
    command: Sequence[str],
    *,
    mounts: Sequence[Mount] = (),
    repo_root: Path | None = None,
    environment: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    out: Any = None,
    network: bool = False,
    gpus: bool = False,
    client: Any = None,
) -> int:
    """Run ``command`` in ``image`` (a :class:`TargetImage` or a tag) and return its exit code.

    The source (``repo_root``, default this checkout) is mounted read-only at ``/workspace``, the working
    folder; ``mounts`` add host paths (each must exist). The container runs as the host user with
    ``HOME=/tmp`` plus ``environment``, without network unless ``network``, with the host's GPUs only if
    ``gpus``; its output streams to ``out`` (default stdout) and it is removed afterwards, also on Ctrl-C.
    """
    tag = image.tag if isinstance(image, TargetImage) else image
    if not command:
        raise ContainerError(f"run_in_image({tag}): empty command")
    source = (repo_root or REPO_ROOT).resolve()
    binds: dict[str, dict[str, str]] = {str(source): {"bind": WORKSPACE, "mode": "ro"}}
    for m in mounts:
        if not m.container.startswith("/") or m.container.rstrip("/") in ("", WORKSPACE):
            raise ContainerError(
                f"mount {m.host} -> {m.container!r}: the container path must be absolute and not / or {WORKSPACE}"
            )
        host = Path(m.host).resolve()
        if not host.exists():
            raise ContainerError(f"mount {m.host} -> {m.container}: {m.host} does not exist")
        if str(host) in binds:
            raise ContainerError(f"{host} is mounted twice ({binds[str(host)]['bind']} and {m.container})")
        binds[str(host)] = {"bind": m.container, "mode": "rw" if m.writable else "ro"}
    env = {"HOME": "/tmp", **(environment or {})}
    engine = client if client is not None else docker_client()
    return run_command(
        engine, tag, command, mounts=binds, environment=env, gpus=gpus, network=network, labels=labels, out=out
    )


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cancelled CI job, `kill`) unwinds like Ctrl-C, so ``finally`` blocks remove containers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def running_container(client: Any, image: str, command: Sequence[str], **kwargs: Any) -> Iterator[Any]:
    """Create and start a container; always remove it (success, failure, Ctrl-C, SIGTERM)."""
    import docker.errors

    with _sigterm_as_interrupt():
        try:
            container = client.containers.create(image, command=list(command), **kwargs)
        except docker.errors.APIError as e:
            raise ContainerError(f"could not create a container of {image}: {e.explanation or e}") from None
        try:
            container.start()
            yield container
        finally:
            with contextlib.suppress(Exception):
                container.kill()
            with contextlib.suppress(Exception):
                container.remove(force=True)


def stream_and_wait(container: Any, out: Any = None) -> int:
    """Copy the container's output to ``out`` as it comes; return its exit code."""
    sink = out or sys.stdout
    for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
        text = chunk.decode("utf-8", "replace") if isinstance(chunk, bytes) else str(chunk)
        sink.write(text)
        sink.flush()
    status = container.wait()
    return int(status.get("StatusCode", 1))


def run_command(
    client: Any,
    image: str,
    command: Sequence[str],
    *,
    mounts: Mapping[str, Mapping[str, str]],
    environment: Mapping[str, str],
    gpus: bool = False,
    network: bool = False,
    labels: Mapping[str, str] | None = None,
    out: Any = None,
) -> int:
    """Run ``command`` in ``image`` with the given mounts; stream its output; return its exit code."""
    import docker.types

    kwargs: dict[str, Any] = {
        "volumes": {k: dict(v) for k, v in mounts.items()},
        "environment": dict(environment),
        "working_dir": WORKSPACE,
        "user": f"{os.getuid()}:{os.getgid()}",
        "init": True,  # signals reach the process; zombies are reaped
        "labels": {"org.edgematrix.run": "1", **(labels or {})},
        "detach": True,
    }
    if not network:
        kwargs["network_mode"] = "none"
    if gpus:
        kwargs["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    with running_container(client, image, command, **kwargs) as container:
        return stream_and_wait(container, out)


def run_cell_in_container(cell: str, target_name: str, target: Mapping[str, Any], options: DockerRunOptions) -> int:
    """Build (if needed) the target image and run ``cell`` in it. Returns the cell's exit code."""
    log = options.log or (lambda s: print(s, file=sys.stderr, flush=True))
    client = docker_client()
    spec, tag, built = prepare_image(client, target_name, target, options)
    log(f"image: {tag} ({'built' if built else 'cached'}; docker/{spec.name}/, {spec.arch})")
    env = container_environment(options.extra_env)
    env.setdefault("HOME", "/tmp")  # the host uid may have no home in the image
    # where the cell ran (recorded, not keyed): baselines are keyed by the environment the container
    # reports (core/toolchain.py), not by the image's bytes, which differ with every build
    env["EDGEMATRIX_IMAGE"] = tag
    command = container_command(cell, options)
    log(f"container: {' '.join(command)}")
    code = run_command(
        client,
        tag,
        command,
        mounts=container_mounts(options),
        environment=env,
        gpus=bool(target.get("gpus")),
        labels={"org.edgematrix.cell": cell},
    )
    log(f"container exited with {code}; results in {options.results_dir / cell}/")
    return code


__all__ = [
    "ENV_ALLOWLIST",
    "ContainerError",
    "DockerRunOptions",
    "DockerUnavailableError",
    "Mount",
    "TargetImage",
    "container_command",
    "container_environment",
    "container_mounts",
    "prepare_image",
    "run_cell_in_container",
    "run_command",
    "run_in_image",
    "target_image",
]
