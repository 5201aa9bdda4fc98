"""Target images: tags keyed by their inputs, offline bases, wheelhouses, builds that never pull.

A target's image is ``docker/<image>/Dockerfile`` built with the target's ``image_args`` from
``matrix/targets.toml`` (base image, SDK and package versions) and the pinned
``docker/<image>/requirements.txt``, installed from a *wheelhouse* built on the host. The tag is
``edgematrix/<image>:<hash>``, the hash covering the Dockerfile, every other file of the recipe
folder, the build args, the architecture and the lock, so an unchanged recipe finds its image and
does not rebuild (the source is mounted at run time, never copied into the image).

The wheelhouse is downloaded with the lock (``pip download -c matrix/constraints.txt``) when the
image's Python is the lock's (the x86_cpu image and the emulated Jetson on the Debian 12 base, for
either architecture), so a container installs the very versions a local Nox session installs and
both share one baseline (``edgematrix.core.toolchain``). Images of another Python (JetPack's 3.10,
NGC's 3.12) install their recipe's own pins. The wheelhouse lives in the read-write cache and is
reused only when every wheel matches the SHA-256 recorded when it was downloaded
(``edgematrix.core.cache.seal_tree``); otherwise it is deleted, one line says why, and it is built
again.

Hosts without registry access (this project's CI) build the base themselves: ``debootstrap`` of
Debian's packages for the target's architecture, then ``docker import`` (:func:`ensure_offline_base`).
Each recipe's *offline variant* is the same Dockerfile with other build args: by default
``BASE_IMAGE`` becomes the debootstrap base; a recipe whose vendor base cannot stand in that simply
says what changes in ``docker/<image>/offline.toml`` (:class:`OfflineVariant`: the build args, and
Debian packages its base needs, e.g. the DriveOS image's aarch64 cross toolchain).
:func:`ensure_target_image` is the one call that gets a target's image, either variant.
Docker is never asked to pull: builds pass ``pull=False``, and a base image that is not on the
host (every ``FROM`` of the recipe, resolved with its build args) is an error naming how to provide it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import string
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgematrix.core.toolchain import LOCK_PATH, lock_applies, read_lock
from edgematrix.errors import EdgeMatrixError

Log = Callable[[str], None]

# Debian suite and packages of the offline base. Bump BASE_RECIPE_VERSION when the recipe changes.
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates", "passwd", "tzdata")
BASE_RECIPE_VERSION = "1"
OFFLINE_BASE_REPO = "edgematrix/base"
DOCKER_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
# The Python of the offline base (Debian 12): wheelhouses for it are cp311.
OFFLINE_PYTHON = "3.11"
# label of the recipes' intermediate build stages (pruned after a build)
STAGE_LABEL = "org.edgematrix.stage=build"
#: a recipe's offline variant, when it differs from "BASE_IMAGE is the debootstrap base"
OFFLINE_FILE = "offline.toml"
#: what an offline variant's build args may name: the base image's reference, repository and tag
OFFLINE_PLACEHOLDERS = ("base", "base_repo", "base_version")


class ImageError(EdgeMatrixError):
    """An image could not be found or built."""


def _emit(log: Log | None, line: str) -> None:
    (log or (lambda s: print(s, file=sys.stderr, flush=True)))(line)


@dataclass(frozen=True)
class ImageSpec:
    """What to build for one target image."""

    name: str  # docker/<name>/
    recipe_dir: Path
    arch: str  # x86_64 | aarch64
    build_args: dict[str, str] = field(default_factory=dict)
    lock: Path | None = None  # the lock its wheelhouse is downloaded with (None: the recipe's pins alone)

    @property
    def dockerfile(self) -> Path:
        return self.recipe_dir / "Dockerfile"

    @property
    def requirements(self) -> Path:
        return self.recipe_dir / "requirements.txt"

    @property
    def python_version(self) -> str:
        return self.build_args.get("PYTHON_VERSION", OFFLINE_PYTHON)

    def recipe_files(self) -> list[Path]:
        """Every file of the recipe folder that goes into the build (sorted; wheelhouse excluded)."""
        return sorted(
            p
            for p in self.recipe_dir.rglob("*")
            if p.is_file() and "wheelhouse" not in p.relative_to(self.recipe_dir).parts
        )

    def content_hash(self) -> str:
        h = hashlib.sha256()
        h.update(f"arch={self.arch}\n".encode())
        for key in sorted(self.build_args):
            h.update(f"arg {key}={self.build_args[key]}\n".encode())
        for path in self.recipe_files():
            h.update(f"file {path.relative_to(self.recipe_dir).as_posix()}\n".encode())
            h.update(path.read_bytes())
        if self.lock is not None:
            h.update(b"lock\n" + self.lock.read_bytes())
        return h.hexdigest()[:16]

    @property
    def tag(self) -> str:
        return f"edgematrix/{self.name}:{self.content_hash()}"


@dataclass(frozen=True)
class OfflineVariant:
    """How a recipe builds on the debootstrap base instead of its vendor base.

    Read from ``docker/<image>/offline.toml`` when the recipe has one; otherwise ``BASE_IMAGE`` becomes
    the base. ``packages``: Debian packages debootstrapped into that base besides :data:`BASE_PACKAGES`
    (a cross toolchain, qemu-user): the build itself fetches nothing. ``build_args``: the build args that
    replace the vendor defaults of ``matrix/targets.toml``, where ``{base}``, ``{base_repo}`` and
    ``{base_version}`` stand for the base image's reference, repository and tag. ``PYTHON_VERSION`` is
    always the base's (Debian 12: 3.11), so the lock applies to its wheelhouse.
    """

    packages: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=lambda: {"BASE_IMAGE": "{base}"})
    source: Path | None = None  # the offline.toml it came from

    def args_for(self, base: str) -> dict[str, str]:
        """The build args with the base image ``base`` (``repo:tag``) filled in."""
        repo, _, version = base.rpartition(":")
        values = {"base": base, "base_repo": repo, "base_version": version}
        args = {k: v.format_map(values) for k, v in self.build_args.items()}
        args["PYTHON_VERSION"] = OFFLINE_PYTHON
        return args


def offline_variant(recipe_dir: Path) -> OfflineVariant:
    """The offline variant of the recipe in ``recipe_dir`` (its ``offline.toml``, or the default)."""
    path = recipe_dir / OFFLINE_FILE
    if not path.is_file():
        return OfflineVariant()
    where = f"docker/{recipe_dir.name}/{OFFLINE_FILE}"
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ImageError(f"{where}: not valid TOML ({e})") from None
    unknown = sorted(set(doc) - {"packages", "build_args"})
    if unknown:
        raise ImageError(
            f"{where}: unknown key(s) {', '.join(unknown)}; an offline variant has packages and build_args"
        )
    packages = doc.get("packages", [])
    if not isinstance(packages, list) or not all(
        isinstance(p, str) and re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", p) for p in packages
    ):
        raise ImageError(f"{where}: packages must be a list of Debian package names, got {packages!r}")
    args = doc.get("build_args", {})
    if not isinstance(args, dict) or not args or not all(isinstance(v, str) for v in args.values()):
        raise ImageError(f"{where}: [build_args] must map build arg names to strings, got {args!r}")
    used: set[str] = set()
    for key, value in args.items():
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as e:
            raise ImageError(f"{where}: build_args.{key} = {value!r}: {e}") from None
        bad = sorted(fields - set(OFFLINE_PLACEHOLDERS))
        if bad:
            raise ImageError(
                f"{where}: build_args.{key} = {value!r} names {{{bad[0]}}}; known: "
                + ", ".join(f"{{{p}}}" for p in OFFLINE_PLACEHOLDERS)
            )
        used |= fields
    if not used:
        raise ImageError(
            f"{where}: no build arg names the debootstrap base ({', '.join(f'{{{p}}}' for p in OFFLINE_PLACEHOLDERS)}): "
            "the variant would still build on the vendor base"
        )
    return OfflineVariant(tuple(packages), {str(k): v for k, v in args.items()}, path)


def recipe_dir(repo_root: Path, target_name: str, target: Mapping[str, Any]) -> Path:
    """``docker/<image>/`` of ``target``; an error listing the recipes when it has no Dockerfile."""
    name = target.get("image") or target_name
    recipe = repo_root / "docker" / name
    if not (recipe / "Dockerfile").is_file():
        known = sorted(p.parent.name for p in (repo_root / "docker").glob("*/Dockerfile"))
        raise ImageError(
            f"target {target_name!r} names image {name!r}, but docker/{name}/Dockerfile does not exist; "
            f"image recipes: {', '.join(known) or '(none)'}"
        )
    return recipe


def image_arch(target: Mapping[str, Any]) -> str:
    """The architecture of the target's image (``image_arch``, else the target's ``arch``)."""
    return str(target.get("image_arch") or target["arch"])


def image_spec(
    repo_root: Path, target_name: str, target: Mapping[str, Any], *, offline_base: str | None = None
) -> ImageSpec:
    """The image of ``target`` (a target table). With ``offline_base`` (the debootstrap base's tag) it is the
    recipe's offline variant (:func:`offline_variant`): its build args replace the vendor defaults."""
    recipe = recipe_dir(repo_root, target_name, target)
    name = recipe.name
    args = {k: str(v) for k, v in dict(target.get("image_args") or {}).items()}
    if offline_base:
        args.update(offline_variant(recipe).args_for(offline_base))
    arch = image_arch(target)
    spec = ImageSpec(name=name, recipe_dir=recipe, arch=arch, build_args=args)
    lock_file = repo_root / LOCK_PATH
    if lock_file.is_file() and lock_applies(read_lock(lock_file), spec.python_version):
        spec = ImageSpec(name=name, recipe_dir=recipe, arch=arch, build_args=args, lock=lock_file)
    return spec


# -- the Docker engine ------------------------------------------------------------------------


class DockerUnavailableError(EdgeMatrixError):
    """No Docker engine answers."""


def docker_client() -> Any:
    """A connected Docker SDK client, or a clear error naming how to start an engine."""
    try:
        import docker
    except ImportError:
        raise DockerUnavailableError(
            "the Docker SDK for Python is not installed: pip install 'edgematrix[docker]' (or `pip install docker`)"
        ) from None
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as e:  # docker.errors.DockerException wraps connection and permission errors
        raise DockerUnavailableError(
            f"no Docker engine answers at {where} ({type(e).__name__}: {str(e).splitlines()[0][:200]}).\n"
            "Start one: `sudo dockerd &` (Debian: `sudo apt-get install docker.io`, or run "
            "docker/base/host-tools.sh as root), `sudo systemctl start docker` where systemd runs, or point "
            "DOCKER_HOST at a running engine; if the socket exists, check you may use it (docker group)."
        ) from None
    return client


def image_exists(client: Any, ref: str) -> bool:
    import docker.errors

    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


# -- offline base: debootstrap + docker import ----------------------------------------------------


def debian_mirror(
    sources: Iterable[Path] = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")),
) -> str:
    """The Debian mirror of this host's own apt sources (no mirror host is written in the repo)."""
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text()
        if path.suffix == ".sources":  # deb822
            for stanza in text.split("\n\n"):
                fields = dict(
                    line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.startswith("#")
                )
                suites = fields.get("Suites", "").split()
                uris = fields.get("URIs", "").split()
                if BASE_SUITE in suites and uris:
                    return uris[0]
        else:
            for line in text.splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == BASE_SUITE:
                    return parts[1] if not parts[1].startswith("[") else parts[2]
    raise ImageError(
        f"this host has no Debian {BASE_SUITE} apt source to build the offline base from "
        f"(looked in {', '.join(str(p) for p in sources)}); on another distribution, import a {BASE_SUITE} "
        "root filesystem yourself (`docker import`) and pass it as the image's BASE_IMAGE"
    )


def _extra_packages(packages: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(packages) - set(BASE_PACKAGES)))


def offline_base_tag(arch: str, packages: Iterable[str] = ()) -> str:
    """The tag of the debootstrap base for ``arch`` with ``packages`` besides :data:`BASE_PACKAGES`."""
    recipe = f"{BASE_SUITE} {arch} {' '.join(BASE_PACKAGES)} v{BASE_RECIPE_VERSION}"
    extra = _extra_packages(packages)
    if extra:  # the plain base keeps the tag it always had
        recipe += " + " + " ".join(extra)
    h = hashlib.sha256(recipe.encode()).hexdigest()
    return f"{OFFLINE_BASE_REPO}:{BASE_SUITE}-{DOCKER_ARCH[arch]}-{h[:12]}"


def ensure_offline_base(client: Any, arch: str, packages: Iterable[str] = (), *, log: Log | None = None) -> str:
    """The debootstrap base for ``arch`` (with ``packages`` besides :data:`BASE_PACKAGES`), built and imported
    when missing. Returns its tag."""
    extra = _extra_packages(packages)
    tag = offline_base_tag(arch, extra)
    if image_exists(client, tag):
        _emit(log, f"offline base {tag}: present")
        return tag
    if os.geteuid() != 0:
        raise ImageError(f"building the offline base {tag} needs root (debootstrap); run `sudo nox -s images`")
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed: apt-get install debootstrap (or run docker/base/host-tools.sh)")
    from edgematrix.executors.select import host_arch

    if arch != host_arch() and not Path(f"/proc/sys/fs/binfmt_misc/qemu-{arch}").exists():
        raise ImageError(
            f"building an {arch} base on an {host_arch()} host needs qemu-user-static registered with binfmt_misc "
            "(bookworm-backports' qemu-user-static; docker/base/host-tools.sh installs and registers it)"
        )
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="edgematrix-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = [
            "debootstrap",
            f"--arch={DOCKER_ARCH[arch]}",
            "--variant=minbase",
            f"--include={','.join((*BASE_PACKAGES, *extra))}",
            BASE_SUITE,
            str(rootfs),
            mirror,
        ]
        _emit(log, f"offline base {tag}: {' '.join(cmd)}")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageError(
                f"debootstrap failed (exit {proc.returncode}) building {tag}:\n"
                + "\n".join(proc.stdout.splitlines()[-15:])
            )
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / leftover).glob("*"):
                if p.is_file():
                    p.unlink()
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(
            [
                "tar",
                "-C",
                str(rootfs),
                "--numeric-owner",
                "--exclude=./proc/*",
                "--exclude=./sys/*",
                "--exclude=./dev/*",
                "-cf",
                str(tarball),
                ".",
            ],
            check=True,
        )
        _emit(log, f"offline base {tag}: importing {tarball.stat().st_size / 2**20:.0f} MiB")
        _import(client, tarball, tag, arch)
    return tag


def _import(client: Any, tarball: Path, tag: str, arch: str) -> None:
    """``docker import --platform linux/<arch>`` through the Engine API (the SDK has no platform param)."""
    repo, _, version = tag.rpartition(":")
    params = {"fromSrc": "-", "repo": repo, "tag": version, "platform": f"linux/{DOCKER_ARCH[arch]}"}
    changes = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 'CMD ["/bin/bash"]']
    api = client.api
    with tarball.open("rb") as f:
        resp = api._post(
            api._url("/images/create"),
            params={**params, "changes": changes},
            data=f,
            headers={"Content-Type": "application/tar"},
            timeout=None,
        )
    api._raise_for_status(resp)
    if not image_exists(client, tag):
        raise ImageError(f"docker import did not create {tag}: {resp.text[-500:]}")


# -- wheelhouse -----------------------------------------------------------------------------------


def wheelhouse_dir(cache_dir: Path, spec: ImageSpec) -> Path:
    h = hashlib.sha256(spec.requirements.read_bytes())
    if spec.lock is not None:
        h.update(b"lock\n" + spec.lock.read_bytes())
    return cache_dir / "wheelhouse" / f"{spec.name}-{spec.arch}-py{spec.python_version}-{h.hexdigest()[:12]}"


def requirements_for(spec: ImageSpec) -> list[str]:
    """The recipe's requirement lines that apply to the image's Python and architecture, markers removed."""
    from packaging.requirements import InvalidRequirement, Requirement

    env = {
        "python_version": spec.python_version,
        "python_full_version": f"{spec.python_version}.0",
        "platform_machine": spec.arch,
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    lines = []
    for n, raw in enumerate(spec.requirements.read_text().splitlines(), 1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            req = Requirement(text)
        except InvalidRequirement as e:
            raise ImageError(f"{spec.requirements}:{n}: {e}") from None
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        req.marker = None
        lines.append(str(req))
    return lines


def build_wheelhouse(spec: ImageSpec, cache_dir: Path, *, log: Log | None = None) -> Path:
    """Download the image's pinned requirements (and their dependencies, held by the lock) as wheels, on
    the host. A wheelhouse of an earlier call is reused only when every file matches the SHA-256
    recorded when it was downloaded; otherwise it is deleted (one line says why) and downloaded again."""
    from edgematrix.core.cache import reuse_tree, seal_tree

    if not spec.requirements.is_file():
        raise ImageError(f"{spec.requirements} is missing: each image recipe pins its Python packages there")
    out = wheelhouse_dir(cache_dir, spec)
    if reuse_tree(out, "wheelhouse"):
        return out
    shutil.rmtree(out, ignore_errors=True)  # a partial download (no manifest yet) starts over
    out.mkdir(parents=True)
    # pip evaluates environment markers against the interpreter running it, not --python-version:
    # resolve them for the image's Python and architecture first.
    resolved = out / "requirements.resolved.txt"
    lines = requirements_for(spec)
    resolved.write_text("".join(f"{line}\n" for line in lines))
    if not lines:  # e.g. the DriveOS PDK image: nothing of the recipe's applies to its Python
        _emit(
            log,
            f"wheelhouse {out.name}: no requirement of {spec.requirements.name} applies to Python {spec.python_version}",
        )
        seal_tree(out)
        return out
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "-d",
        str(out),
        "-r",
        str(resolved),
    ]
    if spec.lock is not None:
        cmd += ["-c", str(spec.lock)]
    from edgematrix.executors.select import host_arch

    pyver = spec.python_version
    if spec.arch != host_arch() or pyver != f"{sys.version_info.major}.{sys.version_info.minor}":
        plat = {"x86_64": "manylinux2014_x86_64", "aarch64": "manylinux2014_aarch64"}[spec.arch]
        cmd += ["--platform", plat, "--python-version", pyver, "--implementation", "cp"]
        # newer manylinux tags too (pip accepts several --platform values)
        for newer in ("manylinux_2_28", "manylinux_2_27", "manylinux_2_26", "manylinux_2_24", "manylinux_2_17"):
            cmd += ["--platform", f"{newer}_{spec.arch}"]
    lock_note = (
        f" -c {LOCK_PATH}"
        if spec.lock is not None
        else f" (no lock for Python {spec.python_version} images: the recipe's pins alone)"
    )
    _emit(
        log,
        f"wheelhouse {out.name}: pip download -r {spec.requirements.relative_to(spec.recipe_dir.parent.parent)}"
        + lock_note,
    )
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(
            f"building the wheelhouse for {spec.name} ({spec.arch}, Python {pyver}) failed:\n"
            + "\n".join((proc.stderr or proc.stdout).splitlines()[-12:])
            + "\nCheck the pins in "
            + str(spec.requirements)
            + (f" (and {spec.lock}: they must agree)" if spec.lock is not None else "")
            + " and that PyPI (or your index) is reachable."
        )
    seal_tree(out)  # every file's SHA-256, verified before the next reuse
    return out


# -- build ----------------------------------------------------------------------------------------


def ensure_image(
    client: Any,
    spec: ImageSpec,
    cache_dir: Path,
    *,
    log: Log | None = None,
    rebuild: bool = False,
) -> tuple[str, bool]:
    """The image of ``spec``, built when missing. Returns ``(tag, built)``."""
    tag = spec.tag
    if not rebuild and image_exists(client, tag):
        return tag, False
    for base in base_images(spec):
        if not image_exists(client, base):
            raise ImageError(
                f"base image {base!r} of docker/{spec.name}/ is not on this host, and edgematrix never pulls "
                f"(no registry here). Either `docker pull {base}` on a host with registry access, or build offline: "
                "`nox -s images` (debootstrap base from Debian's packages) and run with --offline-base."
            )
    wheels = build_wheelhouse(spec, cache_dir, log=log)
    with tempfile.TemporaryDirectory(prefix=f"edgematrix-ctx-{spec.name}-") as tmp:
        ctx = Path(tmp)
        for path in spec.recipe_files():
            dst = ctx / path.relative_to(spec.recipe_dir)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dst)
        wh = ctx / "wheelhouse"
        wh.mkdir()
        for whl in wheels.glob("*.whl"):
            try:
                os.link(whl, wh / whl.name)
            except OSError:
                shutil.copy2(whl, wh / whl.name)
        _emit(
            log,
            f"building {tag} from docker/{spec.name}/ (args: {', '.join(f'{k}={v}' for k, v in sorted(spec.build_args.items()))})",
        )
        _build(client, ctx, tag, spec, log)
    return tag, True


def base_images(spec: ImageSpec) -> list[str]:
    """The images the recipe's ``FROM`` lines name, with its build args (and the Dockerfile's ``ARG``
    defaults) substituted; ``scratch`` and the recipe's own stages are left out."""
    defaults: dict[str, str] = {}
    stages: set[str] = set()
    bases: list[str] = []

    def resolve(text: str) -> str:
        values = {**defaults, **spec.build_args}
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), ""), text)

    seen_from = False
    for line in spec.dockerfile.read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        keyword = words[0].upper()
        if keyword == "ARG" and not seen_from and len(words) > 1:
            key, _, value = words[1].partition("=")
            defaults[key] = resolve(value.strip('"'))
        elif keyword == "FROM":
            seen_from = True
            rest = [w for w in words[1:] if not w.startswith("--")]
            if len(rest) >= 3 and rest[1].upper() == "AS":
                stages.add(rest[2])
            if rest:
                ref = resolve(rest[0])
                if ref != "scratch" and ref not in stages and ref not in bases:
                    bases.append(ref)
    return [b for b in bases if b not in stages]


def _build(client: Any, ctx: Path, tag: str, spec: ImageSpec, log: Log | None) -> None:
    tail: list[str] = []
    stream = client.api.build(
        path=str(ctx),
        tag=tag,
        buildargs=spec.build_args,
        pull=False,
        rm=True,
        forcerm=True,
        decode=True,
        labels={"org.edgematrix.image": spec.name, "org.edgematrix.arch": spec.arch},
    )
    for chunk in stream:
        if "error" in chunk:
            detail = chunk.get("errorDetail", {}).get("message", chunk["error"])
            raise ImageError(
                f"building {tag} from docker/{spec.name}/Dockerfile failed: {detail.strip()}\n" + "".join(tail[-15:])
            )
        text = chunk.get("stream") or ""
        if text:
            tail.append(text)
            for line in text.rstrip("\n").splitlines():
                if line.strip():
                    _emit(log, f"  {line}")
    if not image_exists(client, tag):
        raise ImageError(f"the build of {tag} ended without an image:\n" + "".join(tail[-15:]))
    # The legacy builder keeps each earlier stage as an untagged image; drop ours (labelled in the
    # recipes' build stages), never anyone else's.
    with contextlib.suppress(Exception):
        client.images.prune(filters={"dangling": True, "label": STAGE_LABEL})


def target_image_spec(
    repo_root: Path, target_name: str, target: Mapping[str, Any], *, offline: bool = False
) -> ImageSpec:
    """The spec of the target's image, vendor or offline variant, without building anything."""
    if not offline:
        return image_spec(repo_root, target_name, target)
    _require_offline_variant(target_name, target)
    variant = offline_variant(recipe_dir(repo_root, target_name, target))
    base = offline_base_tag(image_arch(target), variant.packages)
    return image_spec(repo_root, target_name, target, offline_base=base)


def _require_offline_variant(target_name: str, target: Mapping[str, Any]) -> None:
    if not target.get("offline_image"):
        raise ImageError(
            f"target {target_name!r} has no offline variant of its image (offline_image = false in "
            "matrix/targets.toml): build it on a host with registry access, without --offline-base"
        )


def ensure_target_image(
    client: Any,
    repo_root: Path,
    target_name: str,
    target: Mapping[str, Any],
    cache_dir: Path,
    *,
    offline: bool = False,
    rebuild: bool = False,
    log: Log | None = None,
) -> tuple[ImageSpec, str, bool]:
    """The image of ``target`` (its table in ``matrix/targets.toml``), built when missing: the recipe on its
    vendor base, or with ``offline`` its offline variant on the debootstrap base (which is built first
    when missing, with the packages the variant names). Returns ``(spec, tag, built)``."""
    if offline:
        _require_offline_variant(target_name, target)
        variant = offline_variant(recipe_dir(repo_root, target_name, target))
        base = ensure_offline_base(client, image_arch(target), variant.packages, log=log)
        spec = image_spec(repo_root, target_name, target, offline_base=base)
    else:
        spec = image_spec(repo_root, target_name, target)
    tag, built = ensure_image(client, spec, cache_dir, log=log, rebuild=rebuild)
    return spec, tag, built


def build_images(
    repo_root: Path,
    targets: Mapping[str, Mapping[str, Any]],
    names: Iterable[str] = (),
    *,
    cache_dir: Path,
    offline_base: bool = False,
    rebuild: bool = False,
    list_only: bool = False,
    log: Log | None = None,
) -> Iterator[str]:
    """Build (or with ``list_only`` just describe) the images of ``names`` (default: every target with a
    recipe; with ``offline_base``, the targets marked ``offline_image``). Yields one line per image."""
    wanted = list(names)
    unknown = [n for n in wanted if n not in targets]
    if unknown:
        raise ImageError(f"unknown target(s) {', '.join(unknown)}; targets: {', '.join(sorted(targets))}")
    if not wanted:
        wanted = [n for n, t in targets.items() if t.get("image") and (t.get("offline_image") or not offline_base)]
    if offline_base:
        not_offline = [n for n in wanted if not targets[n].get("offline_image")]
        if not_offline:
            raise ImageError(
                f"target(s) {', '.join(not_offline)} need their vendor base image (offline_image = false in "
                "matrix/targets.toml): build them on a host with registry access, without --offline-base"
            )
    client = docker_client()
    for name in wanted:
        target = targets[name]
        if list_only:
            spec = target_image_spec(repo_root, name, target, offline=offline_base)
            state = "present" if image_exists(client, spec.tag) else "not built"
            yield f"{name:<10} docker/{spec.name}/  {spec.arch:<8} {spec.tag}  {state}"
            continue
        t0 = time.perf_counter()
        spec, tag, built = ensure_target_image(
            client, repo_root, name, target, cache_dir, offline=offline_base, rebuild=rebuild, log=log
        )
        yield f"{name:<10} {tag}  {'built' if built else 'present'} ({time.perf_counter() - t0:.1f} s)"
