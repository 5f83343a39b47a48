"""A warm start, planned: the container that initialises a service's template, and how a run that
starts from the template gets its own credentials (see services/warm.py for the doing).

A template is initialised with a throwaway password of its own and never with a run's. A run seeded
from it sets its own credentials over the service's local socket (the template's password proves
who it is where the socket asks) before its readiness check — the catalog's authenticated check with
the run's credentials — may pass. The statements that set them travel in the exec's environment,
as the readiness check's password does: never on a command line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from moat.catalog.model import Service
from moat.constants import LABEL_ROLE, LABEL_SERVICE
from moat.masking import is_credential_name
from moat.plan.containers import ContainerSpec
from moat.plan.contract import contract, generate_password
from moat.quoting import pg_name, sql_string

WARM_CACHE_ENV = "MOAT_WARM_CACHE"  # where templates are kept, when not under MOAT_HOME
FORMAT = 1  # bump when what a template holds or how it is made changes: older ones are never used
ROLE_WARM = "warm"  # the label of a container that initialises a template
LOOPBACK = "127.0.0.1"
SQL_VAR = "MOAT_REKEY_SQL"
USER_VAR = "MOAT_REKEY_USER"
TEMPLATE_PASSWORD_VAR = "MOAT_TEMPLATE_PASSWORD"  # noqa: S105 — a name; the client's own is the check's
SCRAM_ITERATIONS = 4096  # PostgreSQL's default
SEED_DIR = "/run/moat-warm"  # where a template is mounted in the sidecar that starts from it
# The sandbox keeps a service's data in one directory of its own (runtime/sandbox/services.DATA),
# whatever the image would: its templates hold that directory.
SANDBOX_DATA = "/run/moat/data"

REKEY_REFUSED = 97  # the rekey's exit when the service answers and refuses it: no use trying again
# The statements arrive on the client's stdin from a shell builtin: in no process's arguments.
_PIPE = 'printf "%s\\n" "$' + SQL_VAR + '" | '


@dataclass(frozen=True)
class Rekey:
    """Sets the run's credentials in a service started from a template."""

    # /bin/sh: exits 1 while the service does not answer yet, REKEY_REFUSED when it answers and the
    # credentials cannot be set; falls through once they are set. The template's password is in
    # $MOAT_TEMPLATE_PASSWORD.
    script: str
    env: Mapping[str, str]  # holds the run's secret (as the readiness check's does)
    secrets: frozenset[str]  # what the statements hold that must never be shown


@dataclass(frozen=True)
class WarmSpec:
    recipe: str
    service: str  # the catalog's name: templates are shared by every run's service of that kind
    settings: str  # what the data depends on besides the image (canonical JSON, no secret in it)
    data_paths: tuple[str, ...]
    template: ContainerSpec  # initialises a template (the service's own image, settings and command)
    # A network made for the template alone (the sandbox's containers need one); None: none at all.
    template_network: str | None
    template_probe: tuple[tuple[str, ...], Mapping[str, str], str | None]  # command, env, expect
    template_password: str  # this plan's throwaway, used only if it makes the template
    rekey: Rekey


def warm_root(home: Path, env: Mapping[str, str]) -> Path:
    """Where the warm templates are: ``$MOAT_WARM_CACHE``, else ``MOAT_HOME/cache/.warm`` (several
    MOAT_HOMEs, a test suite's, may share one: its locks are its own)."""
    chosen = env.get(WARM_CACHE_ENV)
    # Absolute: the engine binds templates from it, and a run started elsewhere must find the same.
    return Path(os.path.abspath(Path(chosen).expanduser())) if chosen else home / "cache" / ".warm"


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802/7677), made here: the server is
    given the verifier, never the password (a failed statement is logged with its text)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


UP_POLL = 0.01  # seconds between looks, inside the sidecar, at whether its server answers
UP_LOOKS = 150  # then the exec ends (exit 1) and the readiness wait decides whether to look again


def _until_up(check: str) -> str:
    """Waits inside the sidecar until ``check`` sets ``up``: the exec is under way when the server
    comes up, so moat learns it within milliseconds, not an exec's round trip later."""
    return (f"up=; n=0; while :; do {check}; [ -n \"$up\" ] && break; n=$((n+1));"
            f" [ $n -lt {UP_LOOKS} ] || exit 1; sleep {UP_POLL}; done")


def _postgres(credentials: Mapping[str, str], port: int, socket: bool) -> Rekey:
    # A verifier made from the password as given equals the server's only for ASCII (it applies
    # SASLprep): others are refused by ``plan_warm`` before this.
    verifier = scram_verifier(credentials["password"])
    sql = f"ALTER ROLE {pg_name(credentials['user'])} PASSWORD '{verifier}';"
    # The image's server has a socket (trusted, unless the user chose peer: the exec is root, so TCP
    # with the template's password next); the sandbox's has none (its clients use TCP).
    hosts = f"/var/run/postgresql {LOOPBACK}" if socket else LOOPBACK
    script = "\n".join([
        _until_up(f'for h in {hosts}; do pg_isready -q -h "$h" -p {port} && up=1 && break; done'),
        "set=; for h in " + hosts + "; do if " + _PIPE + f'PGOPTIONS= PGPASSWORD="${TEMPLATE_PASSWORD_VAR}" psql -X -q'
        f' -v ON_ERROR_STOP=1 -h "$h" -p {port} -U "${USER_VAR}" -d postgres; then set=1; break; fi; done',
        f'[ -n "$set" ] || exit {REKEY_REFUSED}',
    ])
    return Rekey(script, {SQL_VAR: sql, USER_VAR: credentials["user"]}, frozenset({sql, verifier}))


def _mysql(credentials: Mapping[str, str], port: int, socket: bool) -> Rekey:
    user, password = sql_string(credentials["user"]), sql_string(credentials["password"])
    # The literals are quoted for backslash escapes: on, whatever the server's configured sql_mode.
    sql = ("SET SESSION sql_mode = REPLACE(@@SESSION.sql_mode, 'NO_BACKSLASH_ESCAPES', '');\n"
           f"ALTER USER IF EXISTS {user}@'localhost' IDENTIFIED BY {password};\n"
           f"ALTER USER IF EXISTS {user}@'%' IDENTIFIED BY {password};")
    where = "--protocol=SOCKET" if socket else f"--protocol=TCP -h {LOOPBACK} -P {port}"
    script = "\n".join([
        # `ping` succeeds once the server answers, whatever it says to the password it was given.
        _until_up(f'mysqladmin {where} -u "${USER_VAR}" --connect-timeout=2 ping >/dev/null 2>&1 && up=1'),
        _PIPE + f'MYSQL_PWD="${TEMPLATE_PASSWORD_VAR}" mysql {where} -u "${USER_VAR}" -N -B || exit {REKEY_REFUSED}',
    ])
    return Rekey(script, {SQL_VAR: sql, USER_VAR: credentials["user"]}, frozenset({sql}))


RECIPES: dict[str, Callable[[Mapping[str, str], int, bool], Rekey]] = {"postgres": _postgres, "mysql": _mysql}


def why_cold(service: Service, container_env: Mapping[str, str], credentials: Mapping[str, str]) -> str | None:
    """Why this service starts afresh although its catalog entry could start warm; None: it can."""
    password_env = _password_env(service)
    if password_env is None:
        return "the catalog names no password variable for it"
    others = sorted(k for k, v in container_env.items()
                    if v and is_credential_name(k) and k != password_env and k not in NOT_SECRETS)
    if others:
        # The template would hold them, in a file that outlives the run.
        return f"its environment holds other credentials ({', '.join(others)})"
    if not credentials.get("password", "").isascii():
        return "its password is not ASCII"
    root_host = container_env.get("MYSQL_ROOT_HOST", "%")
    if service.warm is not None and service.warm.recipe == "mysql" and root_host not in ("%", ""):
        return f"MYSQL_ROOT_HOST is {root_host!r} (a warm start sets root@'%' and root@localhost)"
    return None


# Named like credentials, holding none: how clients authenticate (part of the template's settings).
NOT_SECRETS = frozenset({"POSTGRES_HOST_AUTH_METHOD"})


def _password_env(service: Service) -> str | None:
    credential = service.credentials.get("password")
    return credential.env if credential is not None else None


def plan_warm(service: Service, name: str, container_name: str, run_container: ContainerSpec,
              credentials: Mapping[str, str], user_env: Mapping[str, str], labels: Mapping[str, str],
              sandbox: bool = False) -> WarmSpec:
    """The template's container and the run's rekey (``why_cold`` said it may start warm). ``sandbox``:
    the service runs from the host's programs (runtime/sandbox), not from its image."""
    assert service.warm is not None
    password_env = _password_env(service)
    assert password_env is not None
    template_password = generate_password()  # never the run's generator: nothing a run is given
    # The template's contract: the user's settings, its own password.
    terms = contract(service, name, service.port,
                     {k: v for k, v in user_env.items() if k != password_env}, lambda: template_password)
    settings_env = {k: v for k, v in terms.container_env.items() if k != password_env}
    data_paths = (SANDBOX_DATA,) if sandbox else service.data_paths
    # The image's reference: each version (or override) has templates of its own, and the image's
    # digest (in the key beside these) tells a rebuilt image of the same reference.
    settings = json.dumps({"format": FORMAT, "recipe": service.warm.recipe, "env": settings_env,
                           "image": run_container.image,
                           "command": list(terms.command) if terms.command else None,
                           "data_paths": list(data_paths), "runtime": "sandbox" if sandbox else "image"},
                          sort_keys=True)
    # Loopback only: the template is nobody's to reach (the sandbox's network is one, of its own).
    network = container_name if sandbox else "none"
    template = ContainerSpec(
        role="service",
        name=container_name,
        image=run_container.image,
        labels={**labels, LABEL_ROLE: ROLE_WARM, LABEL_SERVICE: name},
        network=network,
        command=terms.command,
        env=terms.container_env,
        service=name,
        hostname=name,
        extra_hosts=((name, LOOPBACK),),  # the readiness check connects to the service's name
        memory_mb=run_container.memory_mb,
    )
    return WarmSpec(
        recipe=service.warm.recipe,
        service=name,
        settings=settings,
        data_paths=data_paths,
        template=template,
        template_network=network if sandbox else None,
        template_probe=(terms.probe_command, terms.probe_env, service.readiness.expect),
        template_password=template_password,
        rekey=RECIPES[service.warm.recipe](credentials, service.port, not sandbox),
    )
