"""The agent image's build: moat against `docker build` of the same image written by hand.

    python benchmarks/image_build.py [--rounds N] [--json FILE]

Two dependency sets: BASE (node@22, git, typescript) and BASE + prettier (one npm tool added).

- cold: the BASE image with no layer cache (``moat run --rebuild … -- true``, whose build is
  ``nocache``; against ``docker build --no-cache`` of a hand-written Dockerfile, then ``docker run
  --rm … true`` — moat's number includes its whole run, which the floor's ``docker run`` stands for);
- add one: BASE built and cached, then BASE + prettier (moat: a new workspace's ``moat run -- true``;
  hand-written: ``docker build`` of the second Dockerfile with the cache): what layer order buys.

Rounds alternate moat and the hand-written build (these machines are noisy: compare the ratios).
The npm registry is reached through the host network (and the machine's TLS-inspecting proxy: set
MOAT_BUILD_CA_CERTS or let this script find /usr/local/share/ca-certificates). The images are
removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST_CAS = Path("/usr/local/share/ca-certificates")
BASE = ["node@22", "git", "typescript"]
ADDED = [*BASE, "prettier"]
NPM_BASE, NPM_ADDED = ["typescript"], ["typescript", "prettier"]  # the same, by hand
TAG = "moat-bench/handwritten"


def handwritten(packages: list[str], ca: bool) -> str:
    """What a user would write for the same image (uid 1000, as moat's agent user)."""
    lines = ["FROM node:22-slim",
             "RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates git"
             " && rm -rf /var/lib/apt/lists/*"]
    if ca:
        lines += ["COPY ca.crt /usr/local/share/ca-certificates/ca.crt", "RUN update-ca-certificates",
                  "ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt"]
    lines += [f"RUN npm install --global {' '.join(packages)}",
              "RUN (userdel node || true) && useradd -m -u 1000 moatuser", "USER 1000", "WORKDIR /workspace"]
    return "\n".join(lines) + "\n"


def timed(command: list[str], **kw: object) -> float:
    start = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   **kw)  # type: ignore[call-overload]
    return time.monotonic() - start


def docker_build(context: Path, packages: list[str], ca: bool, cache: bool) -> float:
    (context / "Dockerfile").write_text(handwritten(packages, ca))
    build = timed(["docker", "build", "--network", "host", *([] if cache else ["--no-cache"]), "-t", TAG,
                   str(context)], env={**os.environ, "DOCKER_BUILDKIT": "0"})
    return build + timed(["docker", "run", "--rm", TAG, "true"])


def moat_run(moat: str, workspace: Path, deps: list[str], env: dict[str, str], rebuild: bool) -> float:
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "moat.yaml").write_text(f"name: bench\ndependencies: [{', '.join(deps)}]\n")
    return timed([moat, "run", *(["--rebuild"] if rebuild else []), "--runtime", "docker", str(workspace),
                  "--", "true"], env=env)


def moat_tag(moat: str, workspace: Path, env: dict[str, str]) -> str:
    out = subprocess.run([moat, "run", "--dry-run", "--json", "--runtime", "docker", str(workspace)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return str(json.loads(out)["image"]["tag"])


def remove_images(tags: list[str]) -> None:
    subprocess.run(["docker", "rmi", "-f", *tags], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    moat = shutil.which("moat", path=str(Path(sys.executable).parent)) or "moat"
    ca_path = os.environ.get("MOAT_BUILD_CA_CERTS") or (str(HOST_CAS) if any(HOST_CAS.glob("*.crt")) else "")
    with tempfile.TemporaryDirectory(prefix="moat-bench-build-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "MOAT_HOME": str(root / "home"), "MOAT_BUILD_CA_CERTS": ca_path}
        context = root / "context"
        context.mkdir()
        if ca_path:
            cas = [Path(ca_path)] if Path(ca_path).is_file() else sorted(Path(ca_path).glob("*.crt"))
            (context / "ca.crt").write_text("".join(p.read_text() for p in cas))
        results: dict[str, dict[str, list[float]]] = {"cold": {"moat": [], "docker": []},
                                                      "add_one": {"moat": [], "docker": []}}
        built: set[str] = set()
        try:
            for round_ in range(args.rounds):
                order = ["moat", "docker"] if round_ % 2 == 0 else ["docker", "moat"]
                for who in order:
                    if who == "moat":
                        results["cold"]["moat"].append(moat_run(moat, root / "ws-base", BASE, env, rebuild=True))
                        added = root / "ws-added"
                        results["add_one"]["moat"].append(moat_run(moat, added, ADDED, env, rebuild=False))
                        # The next round's add-one must build again: drop the image it made.
                        built.add(moat_tag(moat, added, env))
                        remove_images([moat_tag(moat, added, env)])
                        built.add(moat_tag(moat, root / "ws-base", env))
                    else:
                        results["cold"]["docker"].append(docker_build(context, NPM_BASE, bool(ca_path), cache=False))
                        results["add_one"]["docker"].append(docker_build(context, NPM_ADDED, bool(ca_path),
                                                                         cache=True))
        finally:
            remove_images([TAG, *built])
    summary = {}
    for case, by in results.items():
        moat_s, docker_s = statistics.median(by["moat"]), statistics.median(by["docker"])
        summary[case] = {"moat_s": round(moat_s, 2), "docker_build_s": round(docker_s, 2),
                         "ratio": round(moat_s / docker_s, 2), "runs": by}
        print(f"{case:8} moat {moat_s:6.2f} s   hand-written docker build {docker_s:6.2f} s   "
              f"moat/docker {moat_s / docker_s:.2f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
