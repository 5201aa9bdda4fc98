"""The history dashboard (`edgematrix report --history FILE --html DIR`), opened in a real browser.

22 runs are replayed from two real cell results (tests/report/dashboard_runs/README.md says what
is rewritten per run), appended to a history with the report's own code, and the site is written
by the CLI. Debian's headless ``chromium`` renders the pages from the file system: the test reads
the rendered DOM (cell names, the latest values, the marked regressions, commit links) and saves a
screenshot of a cell page to docs/images/dashboard.png.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from edgematrix.cli import main
from edgematrix.report.dashboard import build_series, commit_url, repo_url_from_env, write_dashboard
from edgematrix.report.history import append_records, append_run, read_history

ROOT = Path(__file__).resolve().parents[2]
RUNS = Path(__file__).with_name("dashboard_runs")
SCREENSHOT = ROOT / "docs" / "images" / "dashboard.png"
REPO_URL = "https://github.com/example-org/edgematrix"
#: 22 real commits of this repository, oldest first (the replayed runs' commits)
COMMITS = [
    "85a83e53d46db6810d3310ff234769e372754b2c",
    "7c396111e80ff83300aa0cc2f927225396dc75b5",
    "e10f4df143122ed12fefc256bd18f63a6619945f",
    "047ff07542b45c46c184990d61210e6bbe0d4eee",
    "d0631877ba594e8580150abc3ed408a2ec4721b1",
    "8e26d3abc9dedfdb175bd075b1fbc97302090107",
    "ef1b310c41d436590424ebdf0ff974623b527e77",
    "22220be9bd1b7090b488f5ef0804e783cdc318e3",
    "20ec98bcdc4bc827fdcdef2ea1add69317c7effd",
    "f27d941113cbaa1245fa333d461d67adb735d64f",
    "5597ca52b3dc7a480f584e4a88238bbaafc0fbf9",
    "41d733e58911d602ca4955793971cf74c0ac5f2c",
    "9b68e43191b18207b63a3d1ce36d76e5b3f7e38a",
    "2490c86f9041320ee53631a046c4a40dba3678dd",
    "e69e5ad6f9d552664e7d1ecc356f69f6a14dd7fe",
    "3990ef53dc2ce54df8fb09cfe473f37646861774",
    "3b63e07b9a53aec5a7328c3f6b616f00bee0cecc",
    "3d69e509ada42ca5d5383c68cbcea1ea613d1d3a",
    "6b7bc424b52b28562a79e71c65dea1f9d0ccf034",
    "85be1e005ef21127c274f9ca70b41782584abd02",
    "bd7330c9b3276989a6f123057b3009a5a3dd315b",
    "392a5133a3d09d5efc68e3476350b583d2f443e9",
]
LATENCY_REGRESSION_RUN = 17  # x86_cpu_int8, ONNX Runtime: 1.5x slower, latency_vs_baseline failed
ACCURACY_REGRESSION_RUN = 9  # x86_cpu_pilotnet_static_int8, ONNX Runtime: MSE +0.0003, accuracy_vs_reference failed
START = datetime(2026, 11, 1, 2, 23, tzinfo=UTC)


def drift(i: int) -> float:
    return 1 + 0.03 * math.sin(1.3 * i)


def replayed_extra(cell: str, extra: dict[str, Any], i: int) -> dict[str, Any]:
    """A benchmark's ``extra_info`` as run ``i`` replays it (tests/report/dashboard_runs/README.md)."""
    extra = dict(extra)
    slower = 1.5 if (i, cell, extra["role"], extra["backend"]) == (
        LATENCY_REGRESSION_RUN, "x86_cpu_int8", "candidate", "onnxruntime"
    ) else 1.0  # fmt: skip
    for key in ("p50_ms", "p90_ms", "p99_ms"):
        extra[key] = round(extra[key] * drift(i) * slower, 4)
    if extra.get("metric_direction") == "lower":
        extra["accuracy"] = extra["accuracy"] * (1 + 0.004 * math.cos(i))
        if (i, extra["role"], extra["backend"]) == (ACCURACY_REGRESSION_RUN, "candidate", "onnxruntime"):
            extra["accuracy"] += 0.0003
    else:
        extra["accuracy"] = round(extra["accuracy"] + 0.03 * math.cos(i), 6)
    return extra


def fixture_extra(cell: str, role: str, backend: str) -> dict[str, Any]:
    doc = json.loads((RUNS / cell / "benchmark.json").read_text())
    return next(
        b["extra_info"]
        for b in doc["benchmarks"]
        if (b["extra_info"]["role"], b["extra_info"]["backend"]) == (role, backend)
    )


def rewrite_junit(path: Path, cell: str, i: int) -> None:
    failures = set()
    if i == LATENCY_REGRESSION_RUN:
        failures.add(("x86_cpu_int8", "latency_vs_baseline", "onnxruntime"))
    if i == ACCURACY_REGRESSION_RUN:
        failures.add(("x86_cpu_pilotnet_static_int8", "accuracy_vs_reference", "onnxruntime"))
    tree = ET.parse(path)
    for case in tree.iter("testcase"):
        name = case.get("name", "")
        gate, _, backend = name.partition("[")
        backend = backend.rstrip("]") or "onnxruntime"
        failed = (cell, gate, backend) in failures
        judged = cell == "x86_cpu_int8" and gate in ("accuracy_vs_baseline", "latency_vs_baseline")
        if failed or judged:
            for child in list(case):
                case.remove(child)
        if failed:
            ET.SubElement(case, "failure", message=f"replayed regression of run {i}: {gate} beyond its threshold")
        elif judged:
            ET.SubElement(case, "system-out").text = f"replayed run {i}: {gate} within its threshold vs the baseline"
    tree.write(path, encoding="utf-8", xml_declaration=True)


def write_baselines(root: Path) -> Path:
    """What ``--update-baseline`` records from the real x86_cpu_int8 run: per backend, its candidate's
    accuracy and candidate/reference p50 ratio, keyed to the run's device."""
    doc = json.loads((RUNS / "x86_cpu_int8" / "benchmark.json").read_text())
    device = doc["machine_info"]["cpu_model"]
    root.mkdir(parents=True)
    for backend, name in (("onnxruntime", "x86_cpu_int8"), ("openvino", "x86_cpu_int8.openvino")):
        cand, ref = (
            fixture_extra("x86_cpu_int8", "candidate", backend),
            fixture_extra("x86_cpu_int8", "reference", backend),
        )
        record = {
            "cell": "x86_cpu_int8",
            "precision": "int8",
            "backend": backend,
            "backend_version": cand["backend_version"],
            "accuracy": cand["accuracy"],
            "reference_accuracy": ref["accuracy"],
            "p50_ratio": round(cand["p50_ms"] / ref["p50_ms"], 4),
            "candidate_p50_ms": cand["p50_ms"],
            "reference_p50_ms": ref["p50_ms"],
            "artifact_sha256": cand["artifact_sha256"],
            "cpu": device,
            "created": "2026-12-06T06:21:40+00:00",
        }
        (root / f"{name}.json").write_text(json.dumps({"records": [record]}, indent=2))
    return root


def replay_history(tmp_path: Path) -> Path:
    baselines = write_baselines(tmp_path / "baselines")
    store = tmp_path / "history" / "results.jsonl"
    for i, sha in enumerate(COMMITS):
        results = tmp_path / f"run{i:02d}"
        for cell_dir in sorted(p for p in RUNS.iterdir() if p.is_dir()):
            dst = results / cell_dir.name
            shutil.copytree(cell_dir, dst)
            doc = json.loads((dst / "benchmark.json").read_text())
            doc["commit_info"].update(id=sha, dirty=False)
            for bench in doc["benchmarks"]:
                bench["extra_info"] = replayed_extra(cell_dir.name, bench["extra_info"], i)
            (dst / "benchmark.json").write_text(json.dumps(doc))
            rewrite_junit(dst / "junit.xml", cell_dir.name, i)
        stamp = (START + timedelta(days=i)).isoformat()
        assert append_run(store, results, timestamp=stamp, baselines_dir=baselines) == 8
    return store


#: HTML elements without an end tag
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Dom(HTMLParser):
    """The rendered DOM: text by element id, the table rows (class, data-*, text), every link."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.rows: list[dict[str, Any]] = []  # class, data-*, text, cells (the text of each td)
        self.links: list[str] = []
        self.sources: list[str] = []
        self.groups: dict[str, list[str]] = {}  # <g id=...>: the links inside it
        self._open: list[tuple[str, str | None, dict[str, str]]] = []
        self.feed(text)

    def _tag(self, tag: str, a: dict[str, str]) -> None:
        href = a.get("href") or a.get("xlink:href")
        if tag == "a" and href:
            self.links.append(href)
            for _, gid, _ in self._open:
                if gid in self.groups:
                    self.groups[gid].append(href)
        if "src" in a:
            self.sources.append(a["src"])
        if tag == "g" and a.get("id"):
            self.groups.setdefault(a["id"], [])

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, {k: v or "" for k, v in attrs})

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self._tag(tag, a)
        if tag in VOID:
            return
        self._open.append((tag, a.get("id"), a))
        if tag == "tr":
            data = {k: v for k, v in a.items() if k.startswith("data-")}
            self.rows.append({"class": a.get("class", ""), "text": "", "cells": [], **data})
        if tag in ("td", "th") and self.rows:
            self.rows[-1]["cells"].append("")

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            t, _, _ = self._open.pop()
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, eid, _ in self._open:
            if eid:
                self.by_id[eid] = self.by_id.get(eid, "") + data
        if any(t == "tr" for t, _, _ in self._open) and self.rows:
            self.rows[-1]["text"] += data
            if self.rows[-1]["cells"]:
                self.rows[-1]["cells"][-1] += data


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(
            "chromium is not installed: the dashboard test renders the pages in a real headless browser. "
            "Install Debian's `chromium` package (apt-get install chromium; docker/base/host-tools.sh "
            "installs it on CI machines)"
        )
    return path


def browse(page: Path, profile: Path, *extra: str) -> str:
    cmd = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={profile}", *extra, page.resolve().as_uri(),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_dashboard_of_22_replayed_runs_in_headless_chromium(tmp_path: Path) -> None:
    store = replay_history(tmp_path)
    records = read_history(store)
    assert len(records) == 22 * 8  # 2 cells x 2 backends x (reference, candidate) per run
    site = tmp_path / "site"
    assert main(["report", "--history", str(store), "--html", str(site), "--repo-url", REPO_URL]) == 0
    pages = sorted(p.name for p in site.iterdir())
    assert pages == [
        "index.html",
        "x86_cpu_int8--onnxruntime.html",
        "x86_cpu_int8--openvino.html",
        "x86_cpu_pilotnet_static_int8--onnxruntime.html",
        "x86_cpu_pilotnet_static_int8--openvino.html",
    ]
    for page in site.iterdir():  # opens from the file system: nothing fetched, no script
        text = page.read_text()
        assert "<script" not in text and "@import" not in text and not re.search(r"\ssrc=", text)

    profile = tmp_path / "chromium-profile"
    # the index: every cell and backend, its latest values, the regression counts
    index = Dom(browse(site / "index.html", profile, "--dump-dom"))
    rows = {(r["data-cell"], r["data-backend"]): r for r in index.rows if "data-cell" in r}
    assert sorted(rows) == [
        ("x86_cpu_int8", "onnxruntime"),
        ("x86_cpu_int8", "openvino"),
        ("x86_cpu_pilotnet_static_int8", "onnxruntime"),
        ("x86_cpu_pilotnet_static_int8", "openvino"),
    ]
    last = len(COMMITS) - 1
    for (cell, backend), row in rows.items():
        latest = replayed_extra(cell, fixture_extra(cell, "candidate", backend), last)
        metric = latest["metric"]
        assert row["cells"] == [
            cell,
            backend,
            "22",
            COMMITS[last][:10],
            metric,
            f"{latest['accuracy']:.4g}",
            f"{latest['p50_ms']:.4g}",
            f"{latest['p90_ms']:.4g}",
            "1" if backend == "onnxruntime" else "0",  # regressions over the history: runs 17 and 9
            "ok",  # the latest run
        ], row
        assert row["class"] == "run"
    assert all(
        not link.startswith(("http:", "https:")) or link.startswith(f"{REPO_URL}/commit/") for link in index.links
    )

    # a cell page: latest values, the thresholds drawn, the latency regression of run 17 marked and linked
    page = site / "x86_cpu_int8--onnxruntime.html"
    dom = Dom(browse(page, profile, "--dump-dom"))
    latest = replayed_extra("x86_cpu_int8", fixture_extra("x86_cpu_int8", "candidate", "onnxruntime"), last)
    assert dom.by_id["latest-accuracy"] == f"{latest['accuracy']:.4g}"
    assert dom.by_id["latest-p50"] == f"{latest['p50_ms']:.4g} ms"
    assert dom.by_id["latest-p90"] == f"{latest['p90_ms']:.4g} ms"
    runs = [r for r in dom.rows if "data-commit" in r]
    assert [r["data-commit"] for r in runs] == COMMITS[::-1]  # newest first, one row per replayed run
    marked = [r for r in runs if r["class"] == "regression"]
    assert [r["data-commit"] for r in marked] == [COMMITS[LATENCY_REGRESSION_RUN]]
    assert "latency_vs_baseline failed" in marked[0]["text"]
    slow = replayed_extra("x86_cpu_int8", fixture_extra("x86_cpu_int8", "candidate", "onnxruntime"), 17)
    assert marked[0]["cells"][4] == f"{slow['p50_ms']:.4g}"
    # the chart's ring around the slow point links to its commit; every point links to its commit
    assert dom.groups["latency-regressions"] == [f"{REPO_URL}/commit/{COMMITS[LATENCY_REGRESSION_RUN]}"]
    assert "accuracy-regressions" not in dom.groups  # its accuracy did not regress: no ring there
    assert {f"{REPO_URL}/commit/{sha}" for sha in COMMITS} <= set(dom.links)
    chart_text = dom.by_id["accuracy-chart"] + dom.by_id["latency-chart"]
    for label in (
        "gate: accuracy vs reference",
        "gate: accuracy vs baseline",
        "gate: accuracy floor",
        "gate: latency (p50)",
    ):
        assert label in chart_text
    # the latency gate of the slow run: its reference p50 x the baseline ratio x 1.1, which its p50 exceeds
    ref = replayed_extra("x86_cpu_int8", fixture_extra("x86_cpu_int8", "reference", "onnxruntime"), 17)
    base = json.loads((tmp_path / "baselines" / "x86_cpu_int8.json").read_text())["records"][0]
    limit = ref["p50_ms"] * base["p50_ratio"] * 1.1
    assert slow["p50_ms"] > limit
    assert marked[0]["cells"][6] == f"{limit:.4g}"

    # the lower-is-better cell: the MSE regression of run 9 (its gate failed and it crossed the budget)
    dom = Dom(browse(site / "x86_cpu_pilotnet_static_int8--onnxruntime.html", profile, "--dump-dom"))
    marked = [r for r in dom.rows if r.get("class") == "regression"]
    assert [r["data-commit"] for r in marked] == [COMMITS[ACCURACY_REGRESSION_RUN]]
    assert "accuracy_vs_reference failed" in marked[0]["text"]
    assert dom.groups["accuracy-regressions"] == [f"{REPO_URL}/commit/{COMMITS[ACCURACY_REGRESSION_RUN]}"]
    assert "latency-regressions" not in dom.groups
    assert "gate: latency (p50)" not in dom.by_id["latency-chart"]  # no baseline: its latency gate did not apply

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shot = tmp_path / "dashboard.png"
    browse(page, profile, f"--screenshot={shot}", "--window-size=1280,900")
    assert png_size(shot) == (1280, 900)
    assert shot.stat().st_size > 30_000  # the charts, not a blank page
    shutil.copyfile(shot, SCREENSHOT)


def test_old_history_rows_load_and_draw_unmarked(tmp_path: Path) -> None:
    """Rows written before metric, gates, verdicts and baseline were recorded: drawn, no thresholds."""
    store = tmp_path / "old.jsonl"
    old = {
        "v": 1, "cell": "x86_cpu_int8", "backend": "onnxruntime", "precision": "int8", "accuracy": 89.38,
        "p50_ms": 13.24, "p90_ms": 15.07, "p99_ms": 16.05, "speedup_vs_reference": 2.96, "commit": "d00878e",
        "dirty": False, "measured_at": "2026-11-21T07:19:02+00:00", "machine": "AMD EPYC (x86_64, 2 cores)", "host": "vm",
    }  # fmt: skip
    append_records(
        store,
        [
            {**old, "role": "reference", "accuracy": 89.34, "p50_ms": 36.97, "timestamp": "2026-11-21T07:30:00+00:00"},
            {**old, "role": "candidate", "timestamp": "2026-11-21T07:30:00+00:00"},
            {**old, "role": "candidate", "commit": "e10f4df", "p50_ms": 30.0, "timestamp": "2026-11-22T07:30:00+00:00"},
        ],
    )
    (series,) = build_series(read_history(store))
    assert [run.commit for run in series.runs] == ["d00878e", "e10f4df"]
    assert series.metric == "accuracy" and series.direction == "higher"
    assert all(not run.acc_limits and run.p50_limit is None and not run.regression for run in series.runs)
    paths = write_dashboard(store, tmp_path / "site")  # no repository URL: the shas are text, not links
    text = paths["dashboard:x86_cpu_int8:onnxruntime"].read_text()
    assert "<span class='sha' title='e10f4df'>e10f4df</span>" in text and "/commit/" not in text
    assert "no gates" in text


def test_repository_url_from_the_actions_environment() -> None:
    env = {"GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "org/edgematrix"}
    assert repo_url_from_env(env) == "https://github.com/org/edgematrix"
    assert repo_url_from_env({}) is None
    assert (
        commit_url("https://github.com/org/edgematrix", COMMITS[0])
        == f"https://github.com/org/edgematrix/commit/{COMMITS[0]}"
    )
    assert commit_url("https://github.com/org/edgematrix", "unversioned") is None  # not a commit id: text


def test_html_needs_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--html", str(tmp_path / "site")]) == 2
    assert "--html DIR draws the history: give it with --history FILE" in capsys.readouterr().err
