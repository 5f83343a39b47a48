"""Run identities: ``run_`` + 12 hex digits, and a friendly adjective-animal name."""

from __future__ import annotations

import secrets

from moat.constants import RUN_ID_PREFIX

_ADJECTIVES = (
    "amber", "bold", "brave", "bright", "calm", "clever", "cosmic", "crisp", "daring", "eager",
    "fancy", "fierce", "gentle", "glad", "golden", "happy", "hidden", "jolly", "keen", "kind",
    "lively", "lucky", "merry", "mighty", "misty", "nimble", "noble", "polite", "proud", "quick",
    "quiet", "rapid", "rustic", "shiny", "silent", "smooth", "snowy", "solid", "sunny", "swift",
    "tidy", "tiny", "vivid", "warm", "wise", "witty", "young", "zesty",
)
_ANIMALS = (
    "badger", "beaver", "bison", "crane", "dingo", "dolphin", "eagle", "falcon", "ferret", "finch",
    "fox", "gecko", "heron", "ibex", "jackal", "koala", "lemur", "lynx", "marmot", "mole", "moose",
    "newt", "ocelot", "otter", "owl", "panda", "puffin", "quail", "rabbit", "raven", "seal",
    "shrew", "sloth", "stoat", "swan", "tapir", "tiger", "toucan", "turtle", "viper", "walrus",
    "weasel", "whale", "wolf", "wombat", "yak", "zebra",
)


def new_run_id() -> str:
    return f"{RUN_ID_PREFIX}{secrets.token_hex(6)}"


def random_name() -> str:
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_ANIMALS)}"


def kube_pod_name(run_id: str) -> str:
    """A run's Pod (and the prefix of its other objects) in a cluster: a DNS-1123 name."""
    return f"moat-{run_id.replace('_', '-')}"
