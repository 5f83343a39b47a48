"""Copy an example workspace and point its services at the locally built test images.

Real users pull postgres:17 and friends from a registry; this machine cannot, so tests and
`make demo` run the examples with `services.<name>.image` set to the moat-test/* images that
`make engine` builds. Everything else in the example's moat.yaml is left as written (comments too).

    python engine/localize.py examples/multi-service /tmp/moat-demo
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from ruamel.yaml import YAML

LOCAL_IMAGES = {
    "postgres": "moat-test/postgres:latest",
    "mysql": "moat-test/mysql:latest",
    "redis": "moat-test/redis:latest",
    "ollama": "moat-test/ollama-standin:latest",
}


def localize(example: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(example, target)
    config_path = target / "moat.yaml"
    yaml = YAML()  # round-trip: keeps comments and order
    config = yaml.load(config_path.read_text())
    services = config.setdefault("services", {})
    for dependency in config.get("dependencies") or []:
        name = str(dependency).split("@", 1)[0]
        if name in LOCAL_IMAGES:
            block = services.get(name)
            if block is None:
                block = services[name] = {}
            block.setdefault("image", LOCAL_IMAGES[name])
    if not services:
        del config["services"]
    with config_path.open("w") as handle:
        yaml.dump(config, handle)
    return target


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: localize.py EXAMPLE_DIR TARGET_DIR")
    print(localize(Path(sys.argv[1]), Path(sys.argv[2])))
