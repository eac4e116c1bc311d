"""Run the official clients' own test suites against the official packages and against ours.

``make compat`` runs this file with the project's ``.venv`` Python. It

1. creates ``.compat/official-venv`` from ``compat/official-requirements.lock`` (once per lock);
2. downloads the official sdists (``pip download --no-deps --no-binary :all:``) and copies their
   unedited ``tests/`` folders to ``.compat/suites/<suite>/`` (nothing is vendored in the repo);
3. runs each suite once in the official venv (the baseline) and once in ``.venv`` with
   ``compat/alias_plugin.py`` loaded, which makes ``caveclient`` and ``aind_data_access_api``
   (submodules included) import ``prefect_neurodata.clients.cave`` / ``.aind``;
4. prints ``<suite> <side>: N passed, M failed, K excluded`` and exits non-zero unless every test
   that passes on the official package passes on ours, apart from the tests listed in
   ``compat/exclusions.json`` (each with its kind, reason and the test of ours that shows the
   same behaviour on the wire);
5. records the requests of the same public calls on both sides (``wire_check.py``: DocDB;
   ``cave_wire_check.py``: caveclient's ``materialize.tables`` / ``.views``) and fails on any
   request whose values differ.

Example:
    ```bash
    make compat                      # both suites
    .venv/bin/python compat/run.py --suite caveclient
    ```
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
import venv
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMPAT_DIR = REPO / "compat"
LOCK = COMPAT_DIR / "official-requirements.lock"
EXCLUSIONS = COMPAT_DIR / "exclusions.json"
# Kinds of exclusion the project accepts (issue 11): a test that patches or calls a private name
# of the official package, or mocks a transport call that our public behaviour does not go through.
ALLOWED_KINDS = {"private-name", "transport-mock"}


@dataclass(frozen=True)
class Suite:
    """One official project whose own tests are run."""

    name: str
    requirement: str
    sdist_prefix: str
    # At most this many exclusions are acceptable for the suite (None: any of the allowed kinds).
    max_exclusions: int | None


SUITES = {
    "caveclient": Suite("caveclient", "caveclient==5.25.0", "caveclient-5.25.0", 1),
    "aind-data-access-api": Suite(
        "aind-data-access-api", "aind-data-access-api==1.10.0", "aind_data_access_api-1.10.0", None
    ),
}


@dataclass
class SideResult:
    """Outcomes of one run of a suite."""

    outcomes: dict[str, str]
    collection_errors: list[str] = field(default_factory=list)

    def with_outcome(self, outcome: str) -> set[str]:
        return {test for test, value in self.outcomes.items() if value == outcome}


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    """Run a command, echoing it, and fail loudly if it fails."""
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def official_venv(work: Path) -> Path:
    """The official clients' virtualenv, (re)built when the lock changes; returns its python."""
    venv_dir = work / "official-venv"
    python = venv_dir / "bin" / "python"
    stamp = venv_dir / ".lock-sha256"
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    shutil.rmtree(venv_dir, ignore_errors=True)
    venv.EnvBuilder(with_pip=True).create(venv_dir)
    run([str(python), "-m", "pip", "install", "--quiet", "-r", str(LOCK)])
    stamp.write_text(digest)
    return python


def suite_tests(work: Path, python: Path, suite: Suite) -> Path:
    """Download the suite's sdist and lay its unedited ``tests/`` out; returns the suite folder."""
    sdists = work / "sdists"
    sdists.mkdir(parents=True, exist_ok=True)
    archive = sdists / f"{suite.sdist_prefix}.tar.gz"
    if not archive.exists():
        run(
            [str(python), "-m", "pip", "download", "--quiet", "--no-deps"]
            + ["--no-binary", ":all:", suite.requirement, "-d", str(sdists)]
        )
    suite_dir = work / "suites" / suite.name
    shutil.rmtree(suite_dir, ignore_errors=True)
    suite_dir.mkdir(parents=True)
    prefix = f"{suite.sdist_prefix}/tests/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
        for member in members:
            member.name = member.name[len(suite.sdist_prefix) + 1 :]
        tar.extractall(suite_dir, members=members, filter="data")
    # An empty ini makes this folder pytest's rootdir, so no configuration of ours applies.
    (suite_dir / "pytest.ini").write_text("[pytest]\n")
    return suite_dir


def run_side(
    python: Path, suite_dir: Path, results: Path, ours: bool, deselect: list[str]
) -> SideResult:
    """Run one suite once, in the official venv or (ours=True) in ours with the alias plugin."""
    results.unlink(missing_ok=True)
    env = dict(os.environ)
    env["COMPAT_OUTCOMES"] = str(results)
    env["PYTHONPATH"] = str(COMPAT_DIR)
    env.pop("PYTHONSAFEPATH", None)
    cmd = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "outcome_recorder"]
    cmd += ["--continue-on-collection-errors", "--tb=short", "-o", "addopts="]
    if ours:
        cmd += ["-p", "alias_plugin"]
        for test in deselect:
            cmd += ["--deselect", test]
    cmd.append("tests")
    print("+", " ".join(cmd), flush=True)
    log = results.with_suffix(".log")
    with open(log, "w", encoding="utf-8") as handle:
        subprocess.run(cmd, cwd=suite_dir, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if not results.exists():
        sys.exit(f"pytest wrote no outcomes for {suite_dir.name}; see {log}")
    data = json.loads(results.read_text())
    return SideResult(data["outcomes"], data["collection_errors"])


def load_exclusions(suite: Suite) -> dict[str, dict[str, str]]:
    """The listed exclusions of one suite, checked for an accepted kind and a covering test."""
    entries = json.loads(EXCLUSIONS.read_text())["suites"].get(suite.name, [])
    excluded: dict[str, dict[str, str]] = {}
    for entry in entries:
        if entry.get("kind") not in ALLOWED_KINDS:
            sys.exit(f"{EXCLUSIONS.name}: {entry.get('test')!r} has kind {entry.get('kind')!r}")
        if not entry.get("reason") or not entry.get("covered_by"):
            sys.exit(f"{EXCLUSIONS.name}: {entry.get('test')!r} needs a reason and covered_by")
        excluded[entry["test"]] = entry
    return excluded


def load_pending(suite: Suite) -> dict[str, str]:
    """Official tests failing on ours because another open item is not landed yet -> item."""
    entries = json.loads(EXCLUSIONS.read_text()).get("pending", {}).get(suite.name, [])
    return {entry["test"]: entry["item"] for entry in entries}


def compare(
    suite: Suite,
    official: SideResult,
    ours: SideResult,
    excluded: set[str],
    pending: dict[str, str] | None = None,
) -> list[str]:
    """Print both sides' counts; return the problems that break the done-condition."""
    pending = pending or {}
    official_passed = official.with_outcome("passed")
    official_failed = set(official.outcomes) - official_passed
    counted = official_passed - excluded
    ours_passed = ours.with_outcome("passed") & counted
    regressions = sorted(counted - ours_passed)
    print(
        f"{suite.requirement} official: {len(counted)} passed, {len(official_failed)} failed, "
        f"{len(official_passed & excluded)} excluded"
    )
    print(
        f"{suite.requirement} ours: {len(ours_passed)} passed, {len(regressions)} failed, "
        f"{len(official_passed & excluded)} excluded"
    )
    for test in sorted(official_failed):
        ours_outcome = ours.outcomes.get(test, "not run")
        print(f"  fails on the official package too (not counted): {test} (ours: {ours_outcome})")
    for error in ours.collection_errors:
        print(f"  not importable on ours: {error}")
    for test in regressions:
        if test in pending:
            print(f"  PENDING {test}: fails on ours until {pending[test]} lands")
    for test in sorted(set(pending) - set(regressions)):
        print(f"  pending entry {test} passes now: remove it from {EXCLUSIONS.name}")
    problems = [
        f"{suite.name}: {test} passes on the official package, not on ours"
        for test in regressions
        if test not in pending
    ]
    stale = sorted(excluded - set(official.outcomes))
    problems += [
        f"{suite.name}: excluded test {test} does not exist in the suite" for test in stale
    ]
    if suite.max_exclusions is not None and len(excluded) > suite.max_exclusions:
        problems.append(f"{suite.name}: {len(excluded)} exclusions, at most {suite.max_exclusions}")
    return problems


@dataclass(frozen=True)
class WireCheck:
    """A script recording the requests of one official package's public calls (run per side)."""

    suite: str
    script: str
    label: str
    # Query parameters ours adds to every request (README "Differences from the official
    # clients"): left out of ours' recording before the comparison, and reported.
    documented_query: tuple[tuple[str, str], ...] = ()


WIRE_CHECKS = {
    "aind-data-access-api": WireCheck(
        "aind-data-access-api", "wire_check.py", "aind-data-access-api==1.10.0 wire"
    ),
    "caveclient": WireCheck(
        "caveclient",
        "cave_wire_check.py",
        "caveclient==5.25.0 tables/views wire",
        documented_query=(("direct_sql_pandas", "True"),),
    ),
}


def wire_check(
    check: WireCheck, official_python: Path, ours_python: Path, results: Path
) -> list[str]:
    """Record the requests on both sides and compare them (see wire_check.py)."""
    sys.path.insert(0, str(COMPAT_DIR))
    import wire_check as wire  # noqa: PLC0415  (lives beside this file)

    env = dict(os.environ, PYTHONPATH=str(COMPAT_DIR))
    recordings = {}
    for side, python, extra in (
        ("official", official_python, []),
        ("ours", ours_python, ["--ours"]),
    ):
        out = results / f"wire-{check.suite}-{side}.json"
        run([str(python), str(COMPAT_DIR / check.script), str(out), *extra], env=env)
        recordings[side] = json.loads(out.read_text())
    ours, added = wire.without_query_params(recordings["ours"], check.documented_query)
    problems, notes = wire.compare(recordings["official"], ours)
    # a call that sent nothing on the official side would compare equal to anything
    problems += [
        f"{name}: the official package sent no request ({result['error']})"
        for name, result in sorted(recordings["official"].items())
        if not result["requests"]
    ]
    same = len(recordings["official"]) - len(problems)
    total = len(recordings["official"])
    print(f"{check.label}: {same} of {total} calls send the same requests")
    if notes:
        print(
            "  same JSON values, compact JSON / key order (documented difference): "
            + ", ".join(notes)
        )
    if added:
        extra_params = sorted(k for k, _ in check.documented_query)
        print(f"  ours adds the documented query parameters {extra_params}")
    return [f"wire: {problem}" for problem in problems]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=[*SUITES, "all"], default="all")
    parser.add_argument(
        "--work", type=Path, default=Path(os.environ.get("COMPAT_WORK", REPO / ".compat"))
    )
    args = parser.parse_args(argv)
    work: Path = args.work.resolve()
    (work / "results").mkdir(parents=True, exist_ok=True)
    official_python = official_venv(work)
    ours_python = Path(sys.executable)
    problems: list[str] = []
    summary: list[str] = []
    for suite in SUITES.values():
        if args.suite not in ("all", suite.name):
            continue
        suite_dir = suite_tests(work, official_python, suite)
        exclusions = load_exclusions(suite)
        results = work / "results"
        official = run_side(
            official_python, suite_dir, results / f"{suite.name}-official.json", False, []
        )
        ours = run_side(
            ours_python, suite_dir, results / f"{suite.name}-ours.json", True, sorted(exclusions)
        )
        print()
        problems += compare(suite, official, ours, set(exclusions), load_pending(suite))
        for test, entry in sorted(exclusions.items()):
            summary.append(f"  excluded {test} [{entry['kind']}]: {entry['reason']}")
        if suite.name in WIRE_CHECKS:
            problems += wire_check(WIRE_CHECKS[suite.name], official_python, ours_python, results)
    if summary:
        print("\nExclusions (compat/exclusions.json):")
        print("\n".join(summary))
    if problems:
        print("\nCOMPAT FAILED:")
        print("\n".join(f"  {problem}" for problem in problems))
        return 1
    print("\ncompat: every test that passes on the official packages passes on ours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
