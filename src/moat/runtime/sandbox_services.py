"""Services from host binaries, honouring the official images' environment contract.

Each recipe turns what a sidecar container would get (its environment, its command, its binds)
into commands for host programs: a one-time setup (initdb, mariadb-install-db) and a server that
listens on 127.0.0.1 at the service's usual port inside the run's private network namespace.
"""

from __future__ import annotations

import glob
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from moat.catalog.model import HostRecipe
from moat.errors import EngineError

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Step:
    command: tuple[str, ...]
    stdin: str | None = None


@dataclass
class HostService:
    setup: list[Step]
    server: tuple[str, ...]
    env: dict[str, str]  # for the server and every command run "in" the service (probes, pulls)
    secret_files: dict[Path, str] = field(default_factory=dict)  # written 0600 for setup only
    scratch: list[Path] = field(default_factory=list)  # paths outside the data dir to remove
    server_stdin: str | None = None  # given to the server on stdin (e.g. a password), not its argv


def find_binary(name: str, recipe: HostRecipe) -> str:
    """A program on PATH, or in a versioned package directory (postgres keeps its own)."""
    found = shutil.which(name)
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


def prepare(recipe: HostRecipe, data: Path, short_dir: Path, env: Mapping[str, str],
            command: tuple[str, ...] | None, port: int, binds: Mapping[str, tuple[str, str]]) -> HostService:
    builders = {"postgres": _postgres, "mariadb": _mariadb, "redis": _redis, "ollama": _ollama}
    return builders[recipe.recipe](recipe, data, short_dir, env, command, port, binds)


def _postgres(recipe: HostRecipe, data: Path, _short: Path, env: Mapping[str, str], _command: object,
              port: int, _binds: object) -> HostService:
    user = env.get("POSTGRES_USER") or "postgres"
    database = env.get("POSTGRES_DB") or user
    pgdata = data / "pgdata"
    password_file = data / ".pwfile"
    setup = [Step((find_binary("initdb", recipe), "-D", str(pgdata), "-U", user, f"--pwfile={password_file}",
                   "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C"))]
    if database != "postgres":
        quoted = '"' + database.replace('"', '""') + '"'
        setup.append(Step((find_binary("postgres", recipe), "--single", "-D", str(pgdata), "-c", "exit_on_error=on",
                           "postgres"), stdin=f"CREATE DATABASE {quoted};\n"))
    server = (find_binary("postgres", recipe), "-D", str(pgdata), "-h", LOOPBACK, "-p", str(port),
              # no Unix socket (its path would be too long here); throwaway data needs no fsync
              "-c", "unix_socket_directories=", "-c", "fsync=off", "-c", "full_page_writes=off")
    return HostService(setup, server, {}, {password_file: env.get("POSTGRES_PASSWORD", "") + "\n"})


def _sql(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _mariadb(recipe: HostRecipe, data: Path, short: Path, env: Mapping[str, str], _command: object,
             port: int, _binds: object) -> HostService:
    password = _sql(env.get("MYSQL_ROOT_PASSWORD", ""))
    sql = [
        "FLUSH PRIVILEGES;",
        # install-db also creates password-less root@127.0.0.1 and @::1, which would win over root@'%'
        # for TCP connections from loopback: the official image drops them too.
        "DROP USER IF EXISTS root@'127.0.0.1', root@'::1';",
        "EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS root@\\'', @@hostname, '\\'');",
        f"ALTER USER 'root'@'localhost' IDENTIFIED BY '{password}';",
        f"CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '{password}';",
        "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;",
    ]
    if env.get("MYSQL_DATABASE"):
        sql.append("CREATE DATABASE IF NOT EXISTS `" + env["MYSQL_DATABASE"].replace("`", "``") + "`;")
    if env.get("MYSQL_USER") and env.get("MYSQL_PASSWORD"):
        sql.append(f"CREATE USER IF NOT EXISTS '{_sql(env['MYSQL_USER'])}'@'%' IDENTIFIED BY"
                   f" '{_sql(env['MYSQL_PASSWORD'])}';")
        if env.get("MYSQL_DATABASE"):  # as the official image does
            database = env["MYSQL_DATABASE"].replace("`", "``")
            sql.append(f"GRANT ALL ON `{database}`.* TO '{_sql(env['MYSQL_USER'])}'@'%';")
    sql.append("FLUSH PRIVILEGES;")
    datadir = data / "mysql"
    setup_file = data / ".setup.sql"
    socket = short / "mysqld.sock"  # Unix socket paths must stay short
    setup = [Step((find_binary("mariadb-install-db", recipe), "--no-defaults", f"--datadir={datadir}", "--rpm",
                   "--cross-bootstrap", "--skip-test-db", "--auth-root-authentication-method=normal",
                   "--skip-name-resolve", "--disable-log-bin", f"--extra-file={setup_file}"))]
    server = (find_binary("mariadbd", recipe), "--no-defaults", f"--datadir={datadir}", f"--socket={socket}",
              f"--port={port}", f"--bind-address={LOOPBACK}", "--skip-name-resolve", "--skip-log-bin",
              f"--pid-file={data / 'mariadbd.pid'}", "--innodb-buffer-pool-size=32M")
    return HostService(setup, server, {}, {setup_file: "\n".join(sql) + "\n"}, [socket])


def _redis(recipe: HostRecipe, data: Path, _short: Path, _env: object, command: tuple[str, ...] | None,
           port: int, _binds: object) -> HostService:
    args = list(command[1:]) if command and command[0] == "redis-server" else list(command or ())
    # The password goes in through a configuration read from stdin ("-"): a host's process list
    # shows every command line to every local user.
    config = []
    while "--requirepass" in args:
        at = args.index("--requirepass")
        config.append(f"requirepass {args[at + 1]}" if at + 1 < len(args) else "")
        del args[at:at + 2]
    server = (find_binary("redis-server", recipe), "-", *args, "--bind", LOOPBACK, "--port", str(port),
              "--dir", str(data), "--save", "", "--appendonly", "no", "--protected-mode", "no",
              "--daemonize", "no")
    return HostService([], server, {}, server_stdin="\n".join(config) + "\n")


def _ollama(recipe: HostRecipe, data: Path, _short: Path, _env: object, _command: object, port: int,
            binds: Mapping[str, tuple[str, str]]) -> HostService:
    # The host cache is bound at /root/.ollama in a container; here ollama is pointed at it.
    cache = next((host for host, (target, _) in binds.items() if target.rstrip("/").endswith(".ollama")), None)
    env = {"OLLAMA_HOST": f"{LOOPBACK}:{port}", "HOME": str(data)}
    if cache:
        env["OLLAMA_MODELS"] = str(Path(cache) / "models")
    return HostService([], (find_binary("ollama", recipe), "serve"), env)
