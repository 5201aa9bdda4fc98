"""Nox sessions: one per matrix cell (``<target>_<recipe>``), plus tests, lint, validate and lock.

The cell sessions are generated from ``matrix/*.toml``; `nox -l` lists them. Each checks that the
target can run here *before* installing anything, then runs ``edgematrix run <cell>`` with the
session's arguments (``nox -s x86_cpu_int8 -- --runner local --data-root DIR``).

Every session installs with the lock, ``pip install -c matrix/constraints.txt`` (:func:`_install`), so
a fresh clone gets the versions the baselines in ``matrix/baselines/`` were measured with;
``nox -s lock`` rewrites the lock (see its docstring and ``edgematrix.core.toolchain``).
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT / "src"))
# stdlib-only modules of the package: usable before the package is installed
from edgematrix.core.toolchain import LOCK_PATH, render_lock  # noqa: E402
from edgematrix.executors.select import RunnerChoiceError, choose_runner  # noqa: E402
from edgematrix.matrix.listing import SessionInfo, list_sessions  # noqa: E402

nox.needs_version = ">=2024.10.9"
nox.options.default_venv_backend = "virtualenv"  # torch's CPU wheel is reachable by pip, not uv
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "tests"]

PYPROJECT = nox.project.load_toml("pyproject.toml")

LOCK = ROOT / LOCK_PATH
# What `nox -s lock` resolves: every extra that installs beside the others on a CPU host (gpu and
# tensorrt conflict with cpu's onnxruntime / need NVIDIA's stack) and the development groups, with the
# runtimes held at the versions the baselines are measured with (the x86_cpu image's pins).
LOCK_EXTRAS = ("cpu", "openvino", "docker", "optimize", "demo")
LOCK_GROUPS = ("test", "lint")
LOCK_INPUT = ROOT / "docker" / "x86_cpu" / "requirements.txt"


def _install(session: nox.Session, *args: str) -> None:
    """``pip install -c matrix/constraints.txt *args``: every session installs the locked versions."""
    if not LOCK.is_file():
        session.error(f"{LOCK_PATH} (the lock) is missing; restore it from git or write it with `nox -s lock`")
    session.install("-c", str(LOCK), *args)


def _requested_runner(posargs: list[str]) -> str:
    for i, arg in enumerate(posargs):
        if arg == "--runner" and i + 1 < len(posargs):
            return posargs[i + 1]
        if arg.startswith("--runner="):
            return arg.split("=", 1)[1]
    if any(a == "--remote" or a.startswith("--remote=") for a in posargs):
        return "remote"  # a device URL given: `edgematrix run` measures there (as it does for auto + --remote)
    return "auto"


def _cell_impl(session: nox.Session, info: SessionInfo) -> None:
    try:
        choice = choose_runner(info.name, info.target, info.target_table, _requested_runner(session.posargs))
    except RunnerChoiceError as e:
        session.error(str(e))
    session.log(f"runner: {choice.runner} ({choice.reason})")
    if choice.runner == "docker":
        # the cell runs in the target's image; this venv only drives Docker (no torch, no runtimes)
        _install(session, "-e", ".", "--no-deps")
        _install(session, *LIGHT_REQUIREMENTS, *_extra("docker"))
    elif choice.runner in ("remote", "emulated"):
        # this host builds the artifacts and scores the device's outputs (ONNX Runtime CPU); the
        # emulated Jetson runs in a container
        _install(session, "-e", ".[cpu,docker]")
    else:
        extras = info.target_table.get("extras", [])
        _install(session, "-e", f".[{','.join(extras)}]" if extras else ".")
    if info.packages and choice.runner != "docker":  # the model's own package (factory, plugin task)
        _install(session, *info.packages)
    session.run("edgematrix", "run", info.name, *session.posargs)


def _requirements(*names: str) -> list[str]:
    """The pyproject dependency specs of ``names`` (so versions live in one place)."""
    deps = PYPROJECT["project"]["dependencies"]
    found = [d for d in deps if d.split(">")[0].split("=")[0].split("<")[0].strip() in names]
    return found + [n for n in names if not any(d.startswith(n) for d in found)]


def _extra(name: str) -> list[str]:
    return list(PYPROJECT["project"]["optional-dependencies"][name])


#: what a session that only drives Docker installs besides the `docker` extra (`images`, a cell's
#: `--runner docker`): enough to load and validate the matrix (the task adapters import numpy and Pillow, never
#: torch or a runtime; tests/test_light_sessions.py loads it with the other dependencies blocked)
LIGHT_REQUIREMENTS = _requirements("pydantic", "rich", "packaging", "numpy", "pillow")


def _register(info: SessionInfo) -> None:
    def cell(session: nox.Session) -> None:
        _cell_impl(session, info)

    cell.__doc__ = info.description
    venv_params = ["--system-site-packages"] if info.target_table.get("system_site_packages") else []
    nox.session(name=info.name, tags=info.tags, venv_params=venv_params, default=False)(cell)


try:
    for _info in list_sessions(ROOT / "matrix"):
        _register(_info)
except ValueError as _e:  # a broken matrix must not hide the tests and lint sessions
    print(f"noxfile: matrix/ is invalid, no cell sessions: {_e}", file=sys.stderr)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (pytest; arguments after -- go to pytest).

    The container tests (tests/executors/test_docker_*.py) use a real Docker engine: a running one,
    or, as root, one they start from the installed `dockerd` and stop again (docker/base/host-tools.sh
    installs it, debootstrap and qemu-user-static on Debian).
    """
    _install(session, "-e", ".[cpu,openvino,docker,optimize,demo]", *nox.project.dependency_groups(PYPROJECT, "test"))
    _install_model_packages(session)  # tests load the whole matrix/: its plugin tasks and factories too
    session.run("pytest", *session.posargs)


@nox.session(default=False)
def images(session: nox.Session) -> None:
    """Build target images. `nox -s images` builds every target's offline variant (debootstrap base +
    host wheelhouse: x86_cpu, x86_trainer with CPU torch, the emulated jetson, ti with the FX8 emulation,
    driveos cross-compiling its runner; docker/README.md says what each runs); `nox -s images -- jetson
    x86_gpu` names targets; add --online to build on the recipes' vendor base images (which must already be
    on the host: edgematrix never pulls)."""
    _install(session, "-e", ".", "--no-deps")
    _install(session, *LIGHT_REQUIREMENTS, *_extra("docker"))
    args = [a for a in session.posargs if a != "--online"]
    offline = [] if "--online" in session.posargs else ["--offline-base"]
    session.run("edgematrix", "images", "build", *offline, *args)
    session.run("edgematrix", "images", "list", *offline, *[a for a in args if not a.startswith("--")])


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint + format check), mypy and import-linter (the layer contracts in pyproject.toml)."""
    _install(session, "-e", ".[cpu]", *nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", "src", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "noxfile.py")
    session.run("mypy")
    session.run("lint-imports")


@nox.session(default=False)
def update_baselines(session: nox.Session) -> None:
    """Re-measure the cells this host can run and rewrite matrix/baselines/ (review the diff in a PR).

    `nox -s update_baselines -- x86_cpu_int8` limits it to the named cells. Cells of other targets
    are listed as skipped: run this session on their device runners.
    """
    wanted = set(session.posargs)
    infos = [i for i in list_sessions(ROOT / "matrix") if not wanted or i.name in wanted]
    unknown = wanted - {i.name for i in infos}
    if unknown:
        session.error(f"unknown cell(s) {sorted(unknown)}; see `nox -l`")
    runnable = []
    for info in infos:
        try:
            choose_runner(info.name, info.target, info.target_table, "auto")
            runnable.append(info)
        except RunnerChoiceError as e:
            session.log(f"skipped {info.name}: {str(e).splitlines()[0]}")
    if not runnable:
        session.error("no cell of the selection can run on this host")
    extras = sorted({e for i in runnable for e in i.target_table.get("extras", [])})
    _install(session, "-e", f".[{','.join(extras)}]" if extras else ".")
    packages = sorted({p for i in runnable for p in i.packages})
    if packages:  # the models' own packages (factories, plugin tasks)
        _install(session, *packages)

    def written() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in (ROOT / "matrix" / "baselines").glob("*.json")}

    unwritten = []
    for info in runnable:
        before = written()
        session.run("edgematrix", "run", info.name, "--update-baseline", "--no-progress")
        files = sorted(name for name, mtime in written().items() if before.get(name) != mtime)
        if files:
            session.log(f"{info.name}: rewrote matrix/baselines/{', '.join(files)}")
        else:
            unwritten.append(info.name)
    if unwritten:  # the run says why (a busy machine writes none)
        session.error(
            f"no baseline written for {', '.join(unwritten)} (each run above says why); re-run "
            f"`nox -s update_baselines -- {' '.join(unwritten)}` on a quiet machine"
        )
    session.log("baselines rewritten under matrix/baselines/: review `git diff matrix/baselines` and commit")


@nox.session(default=False)
def pilotnet_strategies(session: nox.Session) -> None:
    """PilotNet (steering): FP32, global / local pruning, dynamic and static INT8, QAT, prune + INT8 — the x86_cpu
    cells of matrix/pilotnet.toml, then their table (MSE, MAE, size, same-run speedup, INT8 size gate, Pareto)
    in results/pilotnet_strategies/. Arguments go to each `edgematrix run` (`-- --data-root DIR`)."""
    cells = [i for i in list_sessions(ROOT / "matrix") if i.model == "pilotnet" and i.target == "x86_cpu"]
    if not cells:
        session.error("matrix/ has no pilotnet cell on x86_cpu (matrix/pilotnet.toml)")
    extras = sorted({e for i in cells for e in i.target_table.get("extras", [])})
    _install(session, "-e", f".[{','.join(extras)}]" if extras else ".")
    for info in cells:  # a cell whose gate fails (exit 1) still wrote its results: the table shows it
        session.run("edgematrix", "run", info.name, *session.posargs, success_codes=[0, 1])
    session.run("edgematrix", "strategies", "pilotnet", "--target", "x86_cpu", "--results", "results")


@nox.session(default=False)
def report(session: nox.Session) -> None:
    """Merge results/*/ into report/: JUnit, summary.md, pr-comment.md, plots (args go to `edgematrix report`)."""
    _install(session, "-e", ".")
    session.run("edgematrix", "report", *session.posargs)


def _install_model_packages(session: nox.Session) -> None:
    """The pip arguments of every model's ``packages`` in matrix/ (a model's factory and plugin task are
    imported when the matrix is validated)."""
    packages = sorted({p for i in list_sessions(ROOT / "matrix") for p in i.packages})
    if packages:
        _install(session, *packages)


@nox.session(default=False)
def validate(session: nox.Session) -> None:
    """Validate matrix/*.toml against the schema and print the cells."""
    _install(session, "-e", ".")
    _install_model_packages(session)
    session.run("edgematrix", "validate")
    session.run("edgematrix", "list")


@nox.session(default=False, reuse_venv=False)  # a fresh virtualenv every time
def lock(session: nox.Session) -> None:
    """Rewrite matrix/constraints.txt, the lock every session installs with (then re-record the baselines).

    A fresh virtualenv installs every extra that coexists on a CPU host and the test and lint groups,
    with the runtimes held at docker/x86_cpu/requirements.txt's pins (the versions the baselines are
    measured with); `pip freeze` of it, with a header naming how it was made and the Python and
    platform it was resolved on, becomes the lock. Commit it with `nox -s update_baselines`' baselines.
    """
    # deliberately not _install: the lock is resolved anew, held only by the runtime pins
    session.install(
        "-c",
        str(LOCK_INPUT),
        "-e",
        f".[{','.join(LOCK_EXTRAS)}]",
        *nox.project.dependency_groups(PYPROJECT, *LOCK_GROUPS),
    )
    freeze = session.run("python", "-m", "pip", "freeze", "--exclude-editable", silent=True)
    facts = session.run(
        "python",
        "-c",
        "import platform, sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}'); "
        "print(platform.system().lower(), platform.machine()); print(' '.join(platform.libc_ver()))",
        silent=True,
    )
    if not isinstance(freeze, str) or not isinstance(facts, str):
        session.error("pip freeze printed nothing")
    python, plat, libc = facts.strip().splitlines()[-3:]
    made_by = (
        f"`nox -s lock` on {datetime.date.today().isoformat()}: a fresh virtualenv, "
        f"`pip install -c {LOCK_INPUT.relative_to(ROOT)} -e '.[{','.join(LOCK_EXTRAS)}]'` with the dependency "
        f"groups {' and '.join(LOCK_GROUPS)}, then `pip freeze --exclude-editable`"
    )
    try:
        text = render_lock(freeze.splitlines(), python=python, platform=plat, libc=libc, made_by=made_by)
    except ValueError as e:
        session.error(str(e))
    LOCK.write_text(text)
    session.log(f"wrote {LOCK_PATH}: review `git diff {LOCK_PATH}`, then `nox -s update_baselines` and commit both")
