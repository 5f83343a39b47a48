"""Start-up of moat against docker-compose, testcontainers, the reference algorithm and the floor.

    python benchmarks/startup.py [--runs N] [--json FILE]      (or: make bench)

On the local engine and images, after a warm-up of each contender and in rotating order, N times:
postgres + mysql + redis, then a trivial agent container that prints one line. Each contender is timed
from its start to the agent's first output line (and to its exit). Also measured: moat's readiness
lag (a service answering → moat noticing) and CLI start-up. Prints medians, min/max and the ratios
of moat to each peer beside their goals; ``--json`` writes the figures (keys in the README).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
from benchmarks import compose_peer, direct, lag  # noqa: E402
from benchmarks.common import AGENT_LINE  # noqa: E402

MOAT = [str(ROOT / ".venv" / "bin" / "moat")]
TC_PYTHON = ROOT / "benchmarks" / ".peers" / "testcontainers" / "bin" / "python"
GOALS = {
    "moat_over_floor": 1.10,
    "moat_over_compose": 0.90,
    "moat_over_testcontainers": 0.75,
    "moat_over_reference": 0.92,
    "readiness_lag_ms_median": 100.0,
    "help_seconds_median": 0.25,
}


def _localized_example(scratch: Path) -> Path:
    sys.path.insert(0, str(ROOT / "engine"))
    import localize  # type: ignore[import-not-found]

    return Path(localize.localize(ROOT / "examples" / "multi-service", scratch / "multi-service"))


def moat_run(workspace: Path, home: Path) -> dict[str, float]:
    env = {**os.environ, "MOAT_HOME": str(home)}
    started = time.monotonic()
    proc = subprocess.Popen([*MOAT, "run", str(workspace), "--", "echo", AGENT_LINE], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    first = None
    for line in proc.stdout:
        if first is None and AGENT_LINE in line:
            first = time.monotonic() - started
    proc.wait()
    if proc.returncode != 0 or first is None:
        raise RuntimeError(f"moat run failed (exit {proc.returncode})")
    return {"first_output": first, "total": time.monotonic() - started}


def testcontainers_run() -> dict[str, float]:
    done = subprocess.run([str(TC_PYTHON), str(ROOT / "benchmarks" / "tc_peer.py")], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"testcontainers failed:\n{done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def cli_startup(runs: int) -> dict[str, float]:
    def timed(argv: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        return time.perf_counter() - start

    figures: dict[str, list[float]] = {"python -c pass": [], "moat --help": [], "moat deps list": []}
    for _ in range(runs):
        figures["python -c pass"].append(timed([sys.executable, "-c", "pass"]))
        figures["moat --help"].append(timed([*MOAT, "--help"]))
        figures["moat deps list"].append(timed([*MOAT, "deps", "list"]))
    return {name: statistics.median(values) for name, values in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--skip", action="append", default=[], choices=["compose", "testcontainers"],
                        help="leave a peer out (e.g. where it cannot be installed)")
    args = parser.parse_args()
    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="moat-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        workspace = _localized_example(scratch)
        home = scratch / "home"
        contenders: dict[str, Any] = {
            "moat": lambda: moat_run(workspace, home),
            "floor": lambda: direct.floor(client),
            "reference": lambda: direct.reference(client),
        }
        if "compose" not in args.skip:
            contenders["compose"] = compose_peer.run
        if "testcontainers" not in args.skip:
            contenders["testcontainers"] = testcontainers_run
        for run in contenders.values():  # warm-up: the agent image build, page cache, first-run costs
            run()
        results: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
        names = list(contenders)
        for index in range(args.runs):
            for name in names[index % len(names):] + names[:index % len(names)]:  # rotating order
                results[name].append(contenders[name]())
        lag_home = scratch / "lag-home"
        service_lags: list[float] = []
        for _ in range(args.runs):
            with lag.Watcher(client, lag_home) as watcher:
                moat_run(workspace, lag_home)
            service_lags += list(lag.lags(lag_home, watcher.first).values())
            for log in lag_home.glob("runs/*"):
                subprocess.run(["rm", "-rf", str(log)], check=True)
        cli = cli_startup(max(args.runs, 7))
    report(results, service_lags, cli, args)


def report(results: dict[str, list[dict[str, float]]], service_lags: list[float], cli: dict[str, float],
           args: argparse.Namespace) -> None:
    medians = {name: statistics.median(r["first_output"] for r in runs) for name, runs in results.items()}
    print(f"start-up to the agent's first output line, {args.runs} runs each after a warm-up (seconds)")
    print(f"{'contender':<15} {'median':>7} {'min':>7} {'max':>7} {'exit median':>12}")
    for name, runs in results.items():
        firsts = [r["first_output"] for r in runs]
        print(f"{name:<15} {medians[name]:7.3f} {min(firsts):7.3f} {max(firsts):7.3f}"
              f" {statistics.median(r['total'] for r in runs):12.3f}")
    figures: dict[str, float | None] = {
        f"moat_over_{peer}": medians["moat"] / medians[peer] if peer in medians else None
        for peer in ("floor", "compose", "testcontainers", "reference")
    }
    figures["readiness_lag_ms_median"] = statistics.median(service_lags) * 1000 if service_lags else None
    figures["help_seconds_median"] = cli["moat --help"]
    print()
    for key, value in figures.items():
        goal = GOALS[key]
        verdict = "-" if value is None else ("meets goal" if value <= goal else "MISSES goal")
        shown = "n/a" if value is None else f"{value:.3f}"
        print(f"{key:<28} {shown:>8}   goal <= {goal:<6} {verdict}")
    print()
    print("CLI start-up (medians, seconds): " + ", ".join(f"{k} {v:.3f}" for k, v in cli.items()))
    if service_lags:
        print(f"readiness lag per service (ms): min {min(service_lags) * 1000:.0f}, "
              f"max {max(service_lags) * 1000:.0f}, {len(service_lags)} samples")
    if args.json:
        payload = {**figures, "medians_seconds": medians, "cli_seconds": cli,
                   "runs": {name: runs for name, runs in results.items()}}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
