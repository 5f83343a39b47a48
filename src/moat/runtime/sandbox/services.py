"""Services from host programs, honouring the official images' environment contract.

Each recipe turns what a sidecar container would get (its environment, its command, its mounts) into
one ``/bin/sh`` script that sets the service up (initdb, mariadb-install-db) and then ``exec``s its
server, listening on 127.0.0.1 at the usual port in the run's network namespace. So a service is one
process from the start, and its readiness wait covers its setup.

Secrets reach the script only through its environment and are used as "$VAR": never in a command
line (every local user can read those) nor in a file that outlives setup. Every other value in the
script is quoted for the shell (``quoting.shell``), and for the language it ends up in (SQL, redis.conf).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field

from moat import quoting
from moat.catalog.model import HostRecipe
from moat.errors import EngineError
from moat.plan.containers import ContainerSpec
from moat.plan.warm import SEED_DIR

LOOPBACK = "127.0.0.1"
HOME = "/run/moat"  # the service's scratch directory, as the service sees it
DATA = f"{HOME}/data"  # its data: in memory (tmpfs) or in the scratch directory
MOUNTS = f"{HOME}/mnt"  # its mounts (a host cache), as /run/moat/mnt/<n>
SETUP_VAR = "MOAT_SANDBOX_SETUP"  # setup-only text (SQL, a config) that may hold secrets
SEED_ON_STDIN = "stdin"  # how a warm template's archive reaches a service's script (see starting.py)
SETUP_FILE = "/tmp/moat-setup.sql"  # noqa: S108 — the service's own /tmp: in memory, gone with it


@dataclass(frozen=True)
class Program:
    script: str  # run as /bin/sh -c SCRIPT
    env: dict[str, str] = field(default_factory=dict)  # added to the container's environment
    exec_env: dict[str, str] = field(default_factory=dict)  # what commands run in it need


SYSTEM_PATH = "/usr/local/sbin:/usr/sbin:/sbin"  # servers (mariadbd) live here, off most users' PATH


def find_binary(name: str, recipe: HostRecipe) -> str:
    """A program on PATH, in the system directories, or in a versioned package directory (postgres
    keeps its own)."""
    found = shutil.which(name) or shutil.which(name, path=SYSTEM_PATH)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if candidates:
        return candidates[-1]
    if recipe.package:
        how = f"install Debian's {recipe.package} (sudo apt-get install {recipe.package})"
    else:
        how = "install it (Debian has no package: see https://ollama.com/download) so it is on PATH"
    raise EngineError(f"the sandbox runtime runs services from the host's programs, and `{name}` is missing",
                      hint=f"To run {recipe.recipe} in the sandbox, {how}; or use --runtime docker.")


def programs_identity() -> str:
    """What the services' data depends on in the sandbox: the host's server programs, as installed
    (path, size and time of each found): an upgrade makes the old warm templates unused."""
    found = []
    for name in sorted(PROGRAMS):
        path = shutil.which(name) or shutil.which(name, path=SYSTEM_PATH)
        candidates = [path] if path else sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
        for candidate in candidates:
            with contextlib.suppress(OSError):
                info = os.stat(candidate)
                found.append(f"{candidate}:{info.st_size}:{info.st_mtime_ns}")
    return "host:" + hashlib.sha256("\n".join(found).encode()).hexdigest()


# The programs that make and read a service's data (the clients do not).
PROGRAMS = ("initdb", "postgres", "mariadb-install-db", "mariadbd")


def program(recipe: HostRecipe, spec: ContainerSpec, port: int, mounts: Mapping[str, str]) -> Program:
    """``mounts``: each mount's target in a container → where the service sees it."""
    builders = {"postgres": _postgres, "mariadb": _mariadb, "redis": _redis, "ollama": _ollama}
    return builders[recipe.recipe](recipe, spec, port, mounts)


def _seeded(mounts: Mapping[str, str], server: str) -> Program | None:
    """A service started from a warm template (plan.warm): its data unpacked, then its server, which
    finds it initialised (moat sets the run's credentials over TCP once it answers)."""
    seed = mounts.get(SEED_DIR)
    if seed is None:
        return None
    if seed != SEED_ON_STDIN:
        raise EngineError(f"the warm template reached the sandbox as {seed!r}, not on stdin (a bug in moat)")
    unpack = quoting.shell(["tar", "-x", "-p", "-f", "-", "-C", HOME])  # its top directory: DATA
    return Program("\n".join(["set -e", unpack, f"exec {server} </dev/null"]))


def _postgres(recipe: HostRecipe, spec: ContainerSpec, port: int, mounts: Mapping[str, str]) -> Program:
    user = spec.env.get("POSTGRES_USER") or "postgres"
    database = spec.env.get("POSTGRES_DB") or user
    pgdata = f"{DATA}/pgdata"
    postgres = find_binary("postgres", recipe)
    server = quoting.shell([
        # No Unix socket (clients use TCP, as in a container); throwaway data needs no fsync.
        postgres, "-D", pgdata, "-h", LOOPBACK, "-p", str(port), "-c", "unix_socket_directories=",
        "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off"])
    seeded = _seeded(mounts, server)
    if seeded is not None:
        return seeded
    lines = [
        "set -e",
        "printf '%s\\n' \"$POSTGRES_PASSWORD\" | " + quoting.shell([
            find_binary("initdb", recipe), "-D", pgdata, "-U", user, "--pwfile=/dev/stdin", "--auth-local=trust",
            "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C"]),
    ]
    env = {}
    if database != "postgres":
        env[SETUP_VAR] = f"CREATE DATABASE {quoting.pg_name(database)};"
        lines.append(f"printf '%s\\n' \"${SETUP_VAR}\" | " + quoting.shell(
            [postgres, "--single", "-D", pgdata, "-c", "exit_on_error=on", "postgres"]) + " >/dev/null")
    lines += [f"unset {SETUP_VAR}", f"exec {server}"]
    return Program("\n".join(lines), env)


def mariadb_setup(env: Mapping[str, str]) -> str:
    """The SQL the official image runs on first start, for these variables."""
    password = quoting.sql_string(env.get("MYSQL_ROOT_PASSWORD", ""))
    sql = [
        "FLUSH PRIVILEGES;",
        # install-db also creates password-less root@127.0.0.1 and @::1, which would win over root@'%'
        # for TCP connections from loopback: the official image drops them too.
        "DROP USER IF EXISTS root@'127.0.0.1', root@'::1';",
        "EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS root@\\'', @@hostname, '\\'');",
        f"ALTER USER 'root'@'localhost' IDENTIFIED BY {password};",
        f"CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY {password};",
        "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;",
    ]
    database = env.get("MYSQL_DATABASE")
    if database:
        sql.append(f"CREATE DATABASE IF NOT EXISTS {quoting.sql_name(database)};")
    user, user_password = env.get("MYSQL_USER"), env.get("MYSQL_PASSWORD")
    if user and user_password:
        sql.append(f"CREATE USER IF NOT EXISTS {quoting.sql_string(user)}@'%'"
                   f" IDENTIFIED BY {quoting.sql_string(user_password)};")
        if database:  # as the official image does
            sql.append(f"GRANT ALL ON {quoting.sql_name(database)}.* TO {quoting.sql_string(user)}@'%';")
    sql.append("FLUSH PRIVILEGES;")
    return "\n".join(sql)


def _mariadb(recipe: HostRecipe, spec: ContainerSpec, port: int, mounts: Mapping[str, str]) -> Program:
    datadir = f"{DATA}/mysql"
    install = quoting.shell([
        find_binary("mariadb-install-db", recipe), "--no-defaults", f"--datadir={datadir}", "--rpm",
        "--cross-bootstrap", "--skip-test-db", "--auth-root-authentication-method=normal", "--skip-name-resolve",
        "--disable-log-bin", f"--extra-file={SETUP_FILE}"])
    server = quoting.shell([
        find_binary("mariadbd", recipe), "--no-defaults", f"--datadir={datadir}", f"--socket={HOME}/mysqld.sock",
        f"--port={port}", f"--bind-address={LOOPBACK}", "--skip-name-resolve", "--skip-log-bin",
        f"--pid-file={HOME}/mariadbd.pid", "--innodb-buffer-pool-size=32M"])
    seeded = _seeded(mounts, server)
    if seeded is not None:
        return seeded
    lines = [
        "set -e",
        "umask 077",
        # install-db insists on a regular file: one in the service's private in-memory /tmp, for setup only.
        f"printf '%s\\n' \"${SETUP_VAR}\" > {SETUP_FILE}",
        f"unset {SETUP_VAR}",
        "status=0",
        f"{install} || status=$?",
        f"rm -f {SETUP_FILE}",
        '[ "$status" -eq 0 ] || exit "$status"',
        f"exec {server}",
    ]
    return Program("\n".join(lines), {SETUP_VAR: mariadb_setup(spec.env)})


def redis_config(env: Mapping[str, str], port: int) -> str:
    """redis.conf, read from stdin: the password from the container's REDIS_PASSWORD (as the catalog's
    command gives it to the official image), never on a command line, which every local user can read."""
    directives: list[tuple[str, list[str]]] = []
    if env.get("REDIS_PASSWORD"):
        directives.append(("requirepass", [env["REDIS_PASSWORD"]]))
    # moat's own settings come last: they win over the same option given before.
    directives += [("bind", [LOOPBACK]), ("port", [str(port)]), ("dir", [DATA]), ("save", [""]),
                   ("appendonly", ["no"]), ("protected-mode", ["no"]), ("daemonize", ["no"])]
    return "".join(f"{name} {' '.join(quoting.redis(v) for v in values)}\n" for name, values in directives)


def _redis(recipe: HostRecipe, spec: ContainerSpec, port: int, _mounts: object) -> Program:
    lines = [
        f'config="${SETUP_VAR}"',  # a shell variable: the server's environment will not hold it
        f"unset {SETUP_VAR}",
        # The here-document (a pipe, in dash) holds the expanded variable as it is: no further expansion.
        f"exec {quoting.shell([find_binary('redis-server', recipe), '-'])} <<MOAT_EOF",
        "$config",
        "MOAT_EOF",
    ]
    return Program("\n".join(lines), {SETUP_VAR: redis_config(spec.env, port)})


def _ollama(recipe: HostRecipe, spec: ContainerSpec, port: int, mounts: Mapping[str, str]) -> Program:
    # The host cache is mounted at /root/.ollama in a container; here ollama is pointed at it.
    cache = next((inside for target, inside in mounts.items() if target.rstrip("/").endswith(".ollama")), None)
    address = {"OLLAMA_HOST": f"{LOOPBACK}:{port}"}
    env = {**address, "HOME": HOME}
    if cache:
        env["OLLAMA_MODELS"] = f"{cache}/models"
    return Program("exec " + quoting.shell([find_binary("ollama", recipe), "serve"]), env, address)
