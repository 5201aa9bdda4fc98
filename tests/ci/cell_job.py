"""Emulate one hosted cell job of a workflow on this machine, with the job's own steps (docs/ci.md).

A job of ``hosted-cells`` (pull_request.yml, nightly.yml) is run as GitHub's runner would run it:

- ``actions/checkout``: a fresh clone of ``--source`` at ``--commit`` (nothing of this checkout's
  ``.nox/`` or ``.cache/`` comes along);
- ``actions/setup-python``: a fresh virtual environment of ``--python`` first on ``PATH`` (the runner's
  tool-cache interpreter, into which the job's ``pip install nox`` goes);
- ``run:`` steps: the YAML's own commands, in bash ``-eo pipefail``, with the job's and the step's
  ``env`` (``${{ }}`` rendered), ``GITHUB_OUTPUT``, ``GITHUB_STEP_SUMMARY``, ``RUNNER_TEMP`` and
  ``CI=true``; ``if:`` conditions evaluated (``hashFiles``, ``format``, status functions);
- ``actions/cache/restore`` / ``actions/cache/save``: a store folder of tar archives, one per key, with
  the action's rules: the exact key, else the newest archive whose key starts with the first
  restore key that matches any, then the next; ``cache-hit`` is ``true`` only for the exact key; a
  key that exists is never overwritten (caches are immutable);
- ``actions/upload-artifact``: recorded, not uploaded.

``python tests/ci/cell_job.py --cell x86_cpu_int8 --source . --commit HEAD --store /tmp/store --work
/tmp/job1`` prints each step's time and a JSON summary. Hosts that cannot reach a URL the job's
environment names (``PIP_EXTRA_INDEX_URL``) drop it with ``--drop-env`` and install from their own pip
configuration.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: workflowkit

from workflowkit import evaluate, render, yaml_load

CACHE_ACTIONS = ("actions/cache/restore@", "actions/cache/save@", "actions/cache@")


@dataclass
class Step:
    name: str
    seconds: float
    status: str  # "success" | "failure" | "skipped"
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class Job:
    cell: str
    commit: str
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0
    restored_key: str = ""
    cache_hit: bool = False
    saved_key: str = ""
    log: Path = Path()

    @property
    def status(self) -> str:
        return "failure" if any(s.status == "failure" for s in self.steps) else "success"

    def step(self, prefix: str) -> Step:
        return next(s for s in self.steps if s.name.startswith(prefix))

    def summary(self) -> dict[str, Any]:
        return {
            "cell": self.cell,
            "commit": self.commit,
            "status": self.status,
            "seconds": round(self.seconds, 1),
            "restored_key": self.restored_key,
            "cache_hit": self.cache_hit,
            "saved_key": self.saved_key,
            "steps": [{"name": s.name, "seconds": round(s.seconds, 1), "status": s.status} for s in self.steps],
            "log": str(self.log),
        }


class CacheStore:
    """actions/cache's service, as a folder of ``<key>.tar`` archives (paths relative to the workspace)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _archive(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"cache key {key!r}")
        return self.root / f"{key}.tar"

    def restore(self, workspace: Path, key: str, restore_keys: list[str]) -> tuple[str, bool]:
        """The key restored ("" on a miss) and whether it was the exact key."""
        exact = self._archive(key)
        chosen = exact if exact.is_file() else None
        if chosen is None:
            for prefix in restore_keys:
                matches = [p for p in self.root.glob("*.tar") if p.stem.startswith(prefix)]
                if matches:
                    chosen = max(matches, key=lambda p: p.stat().st_mtime_ns)
                    break
        if chosen is None:
            return "", False
        with tarfile.open(chosen) as tar:
            tar.extractall(workspace, filter="tar")
        return chosen.stem, chosen == exact

    def save(self, workspace: Path, key: str, paths: list[str]) -> bool:
        archive = self._archive(key)
        if archive.exists():  # immutable: GitHub refuses to reserve an existing key
            return False
        tmp = archive.with_suffix(".tmp")
        with tarfile.open(tmp, "w") as tar:
            for rel in paths:
                if (workspace / rel).exists():
                    tar.add(workspace / rel, arcname=rel)
        tmp.rename(archive)
        return True


def _hash_files(workspace: Path) -> Any:
    def hash_files(*patterns: str) -> str:
        files = sorted(
            {Path(f) for p in patterns for f in glob(str(workspace / p), recursive=True) if Path(f).is_file()}
        )
        if not files:
            return ""
        outer = hashlib.sha256()
        for f in files:
            outer.update(hashlib.sha256(f.read_bytes()).digest())
        return outer.hexdigest()

    return hash_files


def _lines(value: Any) -> list[str]:
    return [line.strip() for line in str(value or "").splitlines() if line.strip()]


def run_job(
    workflow: Path,
    job_id: str,
    cell: str,
    *,
    source: Path,
    commit: str,
    store: Path,
    work: Path,
    python: str = sys.executable,
    drop_env: tuple[str, ...] = (),
    out: Any = sys.stdout,
) -> Job:
    """Run ``job_id`` of ``workflow`` for the matrix entry of ``cell`` in the fresh folder ``work``."""
    wf = yaml_load(workflow.read_text())
    spec = wf["jobs"][job_id]
    if work.exists():
        raise FileExistsError(f"{work} exists: every job starts in a fresh folder")
    work.mkdir(parents=True)
    repo, temp, log = work / "workspace", work / "runner-temp", work / "job.log"
    temp.mkdir()
    cache = CacheStore(store)
    sha = subprocess.run(
        ["git", "-C", str(source), "rev-parse", commit], capture_output=True, text=True, check=True
    ).stdout.strip()
    job = Job(cell, sha, log=log)
    matrix = {"cell": cell, "target": cell.split("_")[0], "runner_labels": ["ubuntu-24.04"]}
    github = {"event_name": "pull_request", "sha": sha, "ref": "refs/pull/1/merge", "workspace": str(repo)}
    ctx: dict[str, Any] = {"github": github, "matrix": matrix, "steps": {}, "runner": {"temp": str(temp)}}
    base_env = {k: v for k, v in os.environ.items() if k not in drop_env and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    base_env["PATH"] = os.pathsep.join(p for p in base_env.get("PATH", "").split(os.pathsep) if ".nox" not in p)
    job_env = {k: str(render(v, ctx)) for k, v in (spec.get("env") or {}).items() if k not in drop_env}
    failed = False
    started = time.perf_counter()
    with log.open("w") as log_file:
        for i, step in enumerate(spec["steps"]):
            uses = str(step.get("uses", ""))
            name = step.get("name") or uses.split("@")[0] or step["run"].splitlines()[0]
            cond = step.get("if")
            functions = {
                "hashfiles": _hash_files(repo),
                "success": (lambda ok=not failed: ok),
                "failure": (lambda bad=failed: bad),
                "cancelled": lambda: False,
            }
            runs = (not failed) if cond is None else bool(evaluate(str(cond), ctx, functions))
            if cond is not None and not any(f"{fn}(" in str(cond) for fn in ("always", "cancelled", "failure")):
                runs = runs and not failed  # a condition without a status function is `success() && ...`
            if not runs:
                job.steps.append(Step(name, 0.0, "skipped"))
                print(f"[{cell}] skipped  {name}", file=out, flush=True)
                continue
            t0 = time.perf_counter()
            outputs: dict[str, str] = {}
            status = "success"
            with_ = {k: render(v, ctx) for k, v in (step.get("with") or {}).items()}
            print(f"\n### step {i}: {name}", file=log_file, flush=True)
            if uses.startswith("actions/checkout@"):
                subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(source), str(repo)], check=True)
                subprocess.run(["git", "-C", str(repo), "checkout", "-q", "--detach", sha], check=True)
            elif uses.startswith("actions/setup-python@"):
                subprocess.run([python, "-m", "venv", str(work / "python")], check=True)
                base_env["PATH"] = f"{work / 'python' / 'bin'}{os.pathsep}{base_env['PATH']}"
            elif uses.startswith("actions/cache/restore@"):
                key = str(with_["key"])
                job.restored_key, job.cache_hit = cache.restore(repo, key, _lines(with_.get("restore-keys")))
                outputs = {"cache-primary-key": key, "cache-matched-key": job.restored_key}
                if job.restored_key:
                    outputs["cache-hit"] = "true" if job.cache_hit else "false"
                print(f"restored {job.restored_key or '(nothing)'} for key {key}", file=log_file, flush=True)
            elif uses.startswith("actions/cache/save@"):
                key = str(with_["key"])
                if cache.save(repo, key, _lines(with_["path"])):
                    job.saved_key = key
                print(f"saved {key}: {job.saved_key == key}", file=log_file, flush=True)
            elif uses.startswith(CACHE_ACTIONS):
                raise ValueError(f"{uses}: the emulator runs actions/cache/restore and actions/cache/save")
            elif uses.startswith("actions/upload-artifact@"):
                print(f"artifact {with_.get('name')}: {with_.get('path')} (not uploaded)", file=log_file, flush=True)
            elif "run" in step:
                output_file, summary = temp / f"output-{i}", temp / f"summary-{i}"
                output_file.write_text("")
                step_env = {k: str(render(v, ctx)) for k, v in (step.get("env") or {}).items()}
                env = {
                    **base_env,
                    **job_env,
                    **step_env,
                    "CI": "true",
                    "GITHUB_ACTIONS": "true",
                    "GITHUB_OUTPUT": str(output_file),
                    "GITHUB_STEP_SUMMARY": str(summary),
                    "GITHUB_SHA": sha,
                    "GITHUB_WORKSPACE": str(repo),
                    "RUNNER_TEMP": str(temp),
                }
                proc = subprocess.run(
                    ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                    cwd=repo,
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
                status = "success" if proc.returncode == 0 else "failure"
                outputs = dict(line.split("=", 1) for line in output_file.read_text().splitlines() if "=" in line)
            else:
                raise ValueError(f"step {i} ({name}): the emulator has no rule for {uses!r}")
            seconds = time.perf_counter() - t0
            failed = failed or status == "failure"
            job.steps.append(Step(name, seconds, status, outputs))
            if "id" in step:
                ctx["steps"][step["id"]] = {"outputs": outputs, "outcome": status, "conclusion": status}
            print(f"[{cell}] {seconds:7.1f} s  {status:<8} {name}", file=out, flush=True)
    job.seconds = time.perf_counter() - started
    print(f"[{cell}] {job.seconds:7.1f} s  job {job.status} (log {log})", file=out, flush=True)
    return job


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[2]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", required=True)
    p.add_argument("--source", default=str(repo), help="the repository to clone (default: this one)")
    p.add_argument("--commit", default="HEAD")
    p.add_argument("--store", required=True, help="the actions/cache store (a folder of <key>.tar)")
    p.add_argument("--work", required=True, help="a fresh folder for the job")
    p.add_argument("--workflow", default=str(repo / ".github" / "workflows" / "pull_request.yml"))
    p.add_argument("--job", default="hosted-cells")
    p.add_argument("--python", default=shutil.which("python3.11") or sys.executable)
    p.add_argument("--drop-env", action="append", default=[], help="leave this variable out of the job's env")
    args = p.parse_args(argv)
    job = run_job(
        Path(args.workflow), args.job, args.cell, source=Path(args.source), commit=args.commit,
        store=Path(args.store), work=Path(args.work), python=args.python, drop_env=tuple(args.drop_env),
    )  # fmt: skip
    print(json.dumps(job.summary(), indent=2))
    return 0 if job.status == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
