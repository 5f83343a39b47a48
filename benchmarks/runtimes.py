"""Sandbox runtime against Docker runtime, in one process, alternating, on the same machine.

    python benchmarks/runtimes.py [--runs N] [--json FILE]

Measures the wall time of `moat run --runtime R -- true` from process start to exit, for an empty
workspace and for one that declares redis, after a warm-up of each. Prints medians, min/max and the
ratio sandbox/docker (these machines are noisy: compare ratios, not absolute times).
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

ROOT = Path(__file__).resolve().parent.parent
MOAT = [sys.executable, "-m", "moat.cli.main"]
CASES = {
    "true": "name: bench-true\n",
    "redis": "name: bench-redis\ndependencies: [redis]\nservices:\n  redis:\n    image: moat-test/redis:latest\n",
}


def run_once(runtime: str, workspace: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([*MOAT, "run", "--runtime", runtime, str(workspace), "--", "true"], env=env,
                          capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"moat run --runtime {runtime} failed:\n{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="moat-bench-") as scratch:
        env = {**os.environ, "MOAT_HOME": str(Path(scratch) / "home")}
        results: dict[str, dict[str, list[float]]] = {}
        for case, config in CASES.items():
            workspace = Path(scratch) / case
            workspace.mkdir()
            (workspace / "moat.yaml").write_text(config)
            for runtime in ("docker", "sandbox"):  # warm-up: image build, page cache
                run_once(runtime, workspace, env)
            times: dict[str, list[float]] = {"docker": [], "sandbox": []}
            for index in range(args.runs):
                order = ("docker", "sandbox") if index % 2 == 0 else ("sandbox", "docker")
                for runtime in order:
                    times[runtime].append(run_once(runtime, workspace, env))
            results[case] = times
    report = {}
    print(f"moat run -- true, {args.runs} runs each, alternating (seconds, process start to exit)")
    print(f"{'case':<8} {'runtime':<8} {'median':>7} {'min':>7} {'max':>7}")
    for case, times in results.items():
        for runtime, values in times.items():
            print(f"{case:<8} {runtime:<8} {statistics.median(values):7.3f} {min(values):7.3f} {max(values):7.3f}")
        ratio = statistics.median(times["sandbox"]) / statistics.median(times["docker"])
        print(f"{case:<8} sandbox/docker = {ratio:.2f}")
        report[case] = {
            "docker_median": statistics.median(times["docker"]),
            "sandbox_median": statistics.median(times["sandbox"]),
            "sandbox_over_docker": ratio,
        }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
