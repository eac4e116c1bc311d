"""``neurodata sandbox up | down | status | seed | env | faults`` (registered by ``cli.py``)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from typing import Any

from prefect_neurodata.sandbox.launcher import FAULT_SERVICES, KNOWN_SERVICES, SERVICES, Sandbox
from prefect_neurodata.sandbox.processes import SandboxError

DEFAULT_WORKDIR = ".sandbox"


def _add_workdir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workdir",
        default=DEFAULT_WORKDIR,
        help="sandbox directory with state, env file, logs and data",
    )


def _json_arg(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _services_arg(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in KNOWN_SERVICES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown service(s) {bad}; choose from {KNOWN_SERVICES}")
    return names


FAULT_KEYS_HELP = """\
fault config keys (JSON object; '{}' turns faults off):
  rate         probability (0-1) that a request is answered with one of `statuses`
               instead of reaching the service (a faulted write did not happen)
  statuses     HTTP statuses to answer with (default [429, 500, 502, 503, 504])
  drop_rate    probability (0-1) that the connection is closed without any answer
  lost_rate    probability (0-1) that the service carries the request out but the
               client gets a 504 instead of its answer (a write that landed, answer lost)
  latency_ms   milliseconds added to every request (faulted ones too)
  seed         seeds the random draws: the same requests get the same faults each run
  retry_after  seconds in the Retry-After header of 429 and 503 answers (default 1)
example: neurodata sandbox faults docdb '{"rate": 0.2, "latency_ms": 30, "seed": 7}'
"""


def _subcommand(
    sub: argparse._SubParsersAction, name: str, help_text: str, epilog: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` shows its description and every default."""
    return sub.add_parser(
        name,
        help=help_text,
        description=help_text[:1].upper() + help_text[1:] + ".",
        epilog=epilog,
        formatter_class=_HelpFormatter,
    )


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the epilog's layout."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``sandbox`` command group to the top-level ``subparsers``."""
    group = subparsers.add_parser(
        "sandbox",
        help="start, inspect, seed and stop the local stand-in services",
        description="Local stand-ins of DocDB, CAVE and AWS on 127.0.0.1.",
    )
    sub = group.add_subparsers(dest="command", metavar="SUBCOMMAND")

    up = _subcommand(
        sub,
        "up",
        "start the services on free loopback ports and write the env file",
        epilog=FAULT_KEYS_HELP,
    )
    _add_workdir(up)
    up.add_argument("--env-file", help="env file to write (None: <workdir>/sandbox.env)")
    up.add_argument(
        "--services",
        type=_services_arg,
        default=SERVICES,
        help=f"comma-separated subset of {','.join(KNOWN_SERVICES)} (postgres only when named)",
    )
    up.add_argument("--mongo-uri", help="use this MongoDB instead of starting SecantusDB")
    for svc in FAULT_SERVICES:
        up.add_argument(
            f"--faults-{svc}",
            type=_json_arg,
            metavar="JSON",
            help=f'fault config of {svc}, e.g. \'{{"rate": 0.2, "seed": 7}}\'',
        )
    up.add_argument("--latency-ms", type=float, help="added latency of every HTTP stand-in")
    up.add_argument("--page-bytes", type=int, help="DocDB find page cap in bytes")
    up.add_argument("--request-bytes", type=int, help="DocDB request cap in bytes")
    up.add_argument("--bucket", default="aind-open-data", help="asset bucket")
    up.add_argument("--cave-db-url", help="SQLAlchemy URL of the CAVE database")
    up.add_argument("--timeout", type=float, default=90.0, help="start-up timeout in seconds")
    up.add_argument("--json", action="store_true", help="print the result as JSON")
    up.set_defaults(func=cmd_up)

    down = _subcommand(
        sub, "down", "stop the services this sandbox started and the processes it adopted"
    )
    _add_workdir(down)
    down.set_defaults(func=cmd_down)

    status = _subcommand(
        sub,
        "status",
        "show each service and adopted process (e.g. the demo's Prefect server, deployment "
        "runner and event relay) with its URL, pid and health",
    )
    _add_workdir(status)
    status.add_argument("--json", action="store_true", help="print the result as JSON")
    status.set_defaults(func=cmd_status)

    seed = _subcommand(sub, "seed", "fill the running sandbox with realistic data")
    _add_workdir(seed)
    seed.add_argument("--records", type=int, default=15_000, help="DocDB records (v1+v2)")
    seed.add_argument("--synapses", type=int, default=1_000_000, help="CAVE synapse rows")
    seed.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    seed.add_argument("--v2-fraction", type=float, default=0.5, help="share of v2 records")
    seed.add_argument("--s3-assets", type=int, help="records that also get an S3 folder")
    seed.add_argument("--unregistered", type=int, help="S3 folders with no DocDB record")
    seed.add_argument("--no-reset", action="store_true", help="keep previously seeded data")
    seed.add_argument("--json", action="store_true", help="print the report as JSON")
    seed.set_defaults(func=cmd_seed)

    env = _subcommand(sub, "env", "print the env file as shell exports")
    _add_workdir(env)
    env.set_defaults(func=cmd_env)

    faults = _subcommand(
        sub, "faults", "change a running service's injected faults", epilog=FAULT_KEYS_HELP
    )
    _add_workdir(faults)
    faults.add_argument("service", choices=FAULT_SERVICES)
    faults.add_argument("config", type=_json_arg, help="JSON fault config; '{}' turns off")
    faults.set_defaults(func=cmd_faults)


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def cmd_up(args: argparse.Namespace) -> int:
    """``neurodata sandbox up``."""
    faults = {s: getattr(args, f"faults_{s}") for s in FAULT_SERVICES}
    try:
        sb = Sandbox(
            args.workdir,
            services=args.services,
            mongo_uri=args.mongo_uri,
            faults={k: v for k, v in faults.items() if v is not None},
            latency_ms=args.latency_ms,
            page_bytes=args.page_bytes,
            request_bytes=args.request_bytes,
            env_file=args.env_file,
            bucket=args.bucket,
            cave_db_url=args.cave_db_url,
            start_timeout=args.timeout,
            detach=True,
        )
        sb.up()
    except (SandboxError, ValueError) as exc:
        return _fail(exc)
    status = sb.status()
    if args.json:
        print(
            json.dumps(
                {
                    "start_seconds": sb.start_seconds,
                    "env_file": str(sb.env_file),
                    "services": status,
                }
            )
        )
    else:
        _print_status(status)
        print(f"env file: {sb.env_file}")
        if sb.reused:
            print("already running (nothing started)")
        else:
            print(f"started in {sb.start_seconds:.2f}s")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """``neurodata sandbox down``."""
    stopped = Sandbox(args.workdir).down()
    print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    return 0


def _print_status(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no sandbox running")
        return
    print(f"{'service':<17} {'pid':>8}  {'health':<9} url")
    for r in rows:
        health = "healthy" if r["healthy"] else ("running" if r["running"] else "stopped")
        pid = "-" if r["pid"] is None else str(r["pid"])
        print(f"{r['service']:<17} {pid:>8}  {health:<9} {r['url']}")
        if not r["healthy"]:
            print(f"{'':<28}{r['detail']}")


def cmd_status(args: argparse.Namespace) -> int:
    """``neurodata sandbox status``; exit code 1 unless every service is healthy."""
    rows = Sandbox(args.workdir).status()
    if args.json:
        print(json.dumps(rows))
    else:
        _print_status(rows)
    return 0 if rows and all(r["healthy"] for r in rows) else 1


def cmd_seed(args: argparse.Namespace) -> int:
    """``neurodata sandbox seed``."""
    t0 = time.perf_counter()
    try:
        report = Sandbox(args.workdir).seed(
            records=args.records,
            synapses=args.synapses,
            seed=args.seed,
            v2_fraction=args.v2_fraction,
            s3_assets=args.s3_assets,
            unregistered=args.unregistered,
            reset=not args.no_reset,
        )
    except (SandboxError, ValueError, RuntimeError) as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(report.as_dict()))
        return 0
    print(
        f"docdb: {report.records_v1} v1 + {report.records_v2} v2 records "
        f"(JSON size min {report.record_bytes_min / 1e3:.1f} KB, median "
        f"{report.record_bytes_median / 1e3:.1f} KB, max {report.record_bytes_max / 1e3:.1f} KB, "
        f"{report.records_over_100kb} over 100 KB)"
    )
    print(
        f"s3: {report.s3_assets} registered asset folders + {report.s3_unregistered} not in "
        f"DocDB ({report.s3_objects} objects)"
    )
    if report.cave is not None:
        print(f"cave: {report.synapses} synapses")
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in report.timings.items())
    print(f"seeded in {time.perf_counter() - t0:.2f}s ({timings})")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """``neurodata sandbox env``: ``eval "$(neurodata sandbox env)"`` loads the sandbox env."""
    try:
        env = Sandbox(args.workdir).env
    except SandboxError as exc:
        return _fail(exc)
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_faults(args: argparse.Namespace) -> int:
    """``neurodata sandbox faults SERVICE JSON``."""
    try:
        result = Sandbox(args.workdir).faults(args.service, **args.config)
    except (SandboxError, ValueError) as exc:
        return _fail(exc)
    print(json.dumps(result))
    return 0
