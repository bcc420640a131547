#!/usr/bin/env python
"""The default test suite, run by `make test` and CI.

1. sync: in a scratch copy of the project, run nbdev_clean, nbdev_export and `minillm lessons`; any
   difference from the working tree (unclean notebooks, a stale package, README or lessons) fails,
   with the command that fixes it. The working tree itself is never touched.
2. notebooks: nbdev_test over nbs/ (cells flagged slow, gpu, multigpu are skipped; see settings.ini).
3. pytest: tests/, one process per file, two at a time (tests marked slow, gpu, multigpu are skipped unless MINILLM_TEST_FLAGS names them).

Usage: python tests/suite.py [--only sync|notebooks|pytest ...] [--flags "slow gpu"]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def project_files(root: Path) -> list[str]:
    "Tracked and untracked-but-not-ignored files (what a commit would hold), or every file outside .venv/.git."
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                             capture_output=True, check=True).stdout.decode()
        files = [f for f in out.split("\0") if f]
    except (subprocess.CalledProcessError, FileNotFoundError):
        skip = {".venv", "venv", ".git", "__pycache__", "build", "dist"}
        files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not skip & set(p.relative_to(root).parts)]
    return [f for f in files if (root / f).is_file()]


def tree(root: Path, sub: str, pattern: str = "*") -> dict[str, bytes]:
    base = root / sub
    if base.is_file(): return {sub: base.read_bytes()}
    if not base.exists(): return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(base.rglob(pattern))
            if p.is_file() and not {"__pycache__", ".ipynb_checkpoints", ".hypothesis"} & set(p.parts)}


def compare(copy: Path, subs: list[str]) -> list[str]:
    "Paths under `subs` (a folder, a file, or 'folder/*.ext') whose content differs between the working tree and the regenerated copy."
    bad = []
    for sub in subs:
        sub, _, pattern = sub.partition("/*")
        a, b = tree(ROOT, sub, "*" + pattern), tree(copy, sub, "*" + pattern)
        bad += [k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    return bad


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def sync_check() -> tuple[int, list[str]]:
    "(number of checks, failure messages)."
    failures = []
    with tempfile.TemporaryDirectory(prefix="minillm-sync-") as tmp:
        copy = Path(tmp) / "repo"
        for f in project_files(ROOT):
            (copy / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, copy / f)
        env = {**os.environ, "PYTHONPATH": str(copy)}
        steps = [
            ("nbdev_clean", [str(BIN / "nbdev_clean")], ["nbs/*.ipynb"],
             "notebook not clean (outputs metadata, execution counts): {}.\n  Fix: run `nbdev_clean` (or `make sync`), then commit."),
            ("nbdev_export", [str(BIN / "nbdev_export")], ["minillm"],
             "{} differs from what `nbdev_export` generates from nbs/ (never edit minillm/ by hand).\n"
             "  Fix: run `nbdev_export` (or `make sync`), then commit."),
            ("minillm lessons", [sys.executable, "-m", "minillm", "lessons"],
             ["README.md", "lessons"],
             "{} differs from what `minillm lessons` generates from nbs/.\n  Fix: run `minillm lessons` (or `make sync`), then commit."),
        ]
        for name, cmd, subs, msg in steps:
            r = run(cmd, copy, env)
            if r.returncode != 0:
                failures.append(f"`{name}` failed in a scratch copy of the project:\n{r.stdout}{r.stderr}")
                continue
            failures += [msg.format(p) for p in compare(copy, subs)]
    return len(steps), failures


def walked_in_full() -> list[str]:
    """Lessons whose every cell tests/test_lessons.py runs (its walk executes the lesson as generated, plus the notebook's
    hidden test cells, top to bottom, the exercises filled with their references): nbdev_test need not run them a
    second time. Cells flagged slow/gpu are skipped by both."""
    sys.path.insert(0, str(ROOT))
    from minillm.lessons import lesson_sources
    return [p.name for p in lesson_sources(ROOT)]


def notebooks(flags: str) -> tuple[int, int, str]:
    "(notebooks passed, failed, output) from nbdev_test, on the notebooks the lesson walk does not already run in full."
    walked = walked_in_full()
    nbs = [p for p in (ROOT / "nbs").glob("*.ipynb") if not p.name.startswith(("_", ".")) and p.name not in walked]
    skip = "^[_.]|^(" + "|".join(re.escape(n) for n in walked) + ")$"
    print(f"== notebooks run by the lesson walk (tests/test_lessons.py), not here: {', '.join(walked)}", flush=True)
    # Two notebooks at a time, each with torch's default of one thread per core, would run 2x as many threads as cores
    # (spinning OpenMP threads halve throughput or worse: 393 s against 190 s here); one thread each fills the cores.
    r = run([str(BIN / "nbdev_test"), "--n_workers", "2", "--timing", "--flags", flags, "--skip_file_re", skip], ROOT,
            {"OMP_NUM_THREADS": "1", **os.environ})
    out = r.stdout + r.stderr
    failed = 0 if r.returncode == 0 else max(1, sum(1 for p in nbs if f"\t{p.name}" in out))
    return len(nbs) - failed, failed, out


# Seconds each file took on the 2-core machine (November 2026): only the order in which the two workers take files
# (longest first, so that neither is left with a long file at the end). A file not named here goes last.
WEIGHTS = {"test_lessons.py": 570, "test_deepspeed.py": 315, "test_badinput_train.py": 265, "test_engines.py": 170,
           "test_train.py": 105, "test_badinput_prepare.py": 83, "test_moe.py": 81, "test_cli.py": 80, "test_hosted.py": 79,
           "test_badinput_model.py": 71, "test_launch.py": 60, "test_scaling.py": 36, "test_badinput_misc.py": 28,
           "test_kernel_poll.py": 25}
WORKERS = 2


def pytest_file(path: Path, flags: str, tmp: Path) -> dict:
    "pytest on one file, in its own process: its counts, output, the time it took and its tests' durations."
    xml = tmp / f"{path.stem}.xml"
    # one thread per process, as the notebooks' workers: two pytest processes share the 2 cores
    env = {"OMP_NUM_THREADS": "1", **os.environ, "MINILLM_TEST_FLAGS": flags}
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "pytest", str(path.relative_to(ROOT)), "-q", "-rs", "-p", "no:cacheprovider",
                        f"--junitxml={xml}"], cwd=ROOT, env=env, text=True, capture_output=True)
    res = dict(name=path.name, wall=time.time() - t, out=r.stdout + r.stderr, passed=0, failed=0, skipped=0, durations=[])
    if r.returncode == 5: return res       # no tests collected
    if not xml.exists(): return {**res, "failed": 1}
    s = ET.parse(xml).getroot()
    s = s if s.tag == "testsuite" else s.find("testsuite")
    total, fail, err, skip = (int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    failed = fail + err + (1 if r.returncode not in (0, 1) and not fail + err else 0)
    res.update(passed=total - fail - err - skip, failed=failed, skipped=skip,
               durations=[(float(c.get("time", 0)), f"{path.name}::{c.get('name')}") for c in s.iter("testcase")])
    return res


def pytest(flags: str, files: list[Path] | None = None) -> tuple[int, int, int, str, list[str]]:
    """(passed, failed, skipped, output, failing files) from pytest over tests/, one process per file, WORKERS files at a time: most
    of a test's time is a subprocess starting Python, importing torch or waiting on a launcher, which leaves a core
    idle; two at a time took the phase from 1958 s to 1291 s here (the same 310 tests)."""
    from concurrent.futures import ThreadPoolExecutor
    files = sorted(files or (ROOT / "tests").glob("test_*.py"), key=lambda p: -WEIGHTS.get(p.name, 0))
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(lambda p: pytest_file(p, flags, Path(tmp)), files))
    out = []
    for r in results:
        lines = r["out"].rstrip().splitlines()
        # a passing file shows its last line and skip reasons; a failing one shows everything
        # (and a lesson walk's SlowStep warnings: a cell or a kernel that took minutes)
        shown = lines if r["failed"] else [l for l in lines if l.startswith("SKIPPED") or "SlowStep:" in l] + lines[-1:]
        out.append(f"-- {r['name']} ({r['wall']:.0f} s)\n" + "\n".join("   " + l for l in shown))
    slowest = sorted((d for r in results for d in r["durations"]), reverse=True)[:12]
    out.append("slowest tests:\n" + "\n".join(f"  {t:7.1f} s  {name}" for t, name in slowest))
    total = lambda k: sum(r[k] for r in results)
    return total("passed"), total("failed"), total("skipped"), "\n".join(out), [r["name"] for r in results if r["failed"]]


SHM = Path("/dev/shm")


def shm_segments() -> set[Path]:
    "DeepSpeed's shared-memory all-reduce segments now in /dev/shm (each holds RAM until unlinked)."
    return set(SHM.glob("deepspeed_allreduce_buffer_*")) if SHM.is_dir() else set()


def shm_check(before: set[Path]) -> list[str]:
    """Segments this suite's runs left in /dev/shm: removed (they are its own), and reported, since each
    run that leaves one keeps ~69 MB of RAM per rank taken on the machine until reboot."""
    new = sorted(shm_segments() - before)
    if not new: return []
    mb = sum(p.stat().st_size for p in new) / 2**20
    for p in new: p.unlink(missing_ok=True)
    return [f"{len(new)} DeepSpeed shared-memory segment(s) ({mb:.0f} MB) were left in /dev/shm by this suite's runs "
            f"(e.g. {new[0].name}); removed. A run built DeepSpeed's CPU all-reduce op: see minillm.ds.skip_shm_allreduce."]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=["sync", "notebooks", "pytest"], default=["sync", "notebooks", "pytest"])
    p.add_argument("--flags", default=os.environ.get("MINILLM_TEST_FLAGS", ""),
                   help="space-separated flags to run as well (slow gpu multigpu)")
    args = p.parse_args(argv)
    t0, times, passed, failed, skipped, messages = time.time(), {}, 0, 0, 0, []
    shm_before = shm_segments()

    if "sync" in args.only:
        t = time.time(); n, fails = sync_check(); times["sync"] = time.time() - t
        print(f"== sync: {n} generators compared, {len(fails)} problem(s)")
        for m in fails: print("  FAIL " + m)
        passed += n if not fails else 0; failed += 1 if fails else 0; messages += fails
    if "notebooks" in args.only:
        t = time.time(); ok, bad, out = notebooks(args.flags); times["notebooks"] = time.time() - t
        print(f"== notebooks (nbdev_test --flags '{args.flags}'): {ok} passed, {bad} failed")
        if not bad: print("\n".join("  " + l for l in out.splitlines() if l.endswith(" secs")))   # --timing: slowest first
        if bad: print(out); messages.append("notebooks failed (see above). Reproduce: nbdev_test --path nbs/NAME.ipynb")
        passed += ok; failed += bad
    if "pytest" in args.only:
        t = time.time(); ok, bad, sk, out, bad_files = pytest(args.flags); times["pytest"] = time.time() - t
        print(out.rstrip())
        print(f"== pytest tests/: {ok} passed, {bad} failed, {sk} skipped")
        if bad: messages.append("pytest failed (see above). Reproduce: .venv/bin/python -m pytest "
                                     + " ".join(f"tests/{f}" for f in bad_files) + " -x")
        passed += ok; failed += bad; skipped += sk

    leaks = shm_check(shm_before)
    print(f"== shared memory: {len(leaks)} problem(s)")
    for m in leaks: print("  FAIL " + m)
    messages += leaks; failed += 1 if leaks else 0

    wall = time.time() - t0
    print(f"\nsuite wall time: {wall:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()) + ")")
    if messages: print("FAILED:\n  " + "\n  ".join(m.splitlines()[0] for m in messages))
    print(f"suite: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
