"""Version negotiation (SPEC.md "Version considerations", "VERSION").

pycni implements spec 1.1.0 and speaks every result format from 0.3.0 on. CHECK exists from 0.4.0
and STATUS / GC from 1.1.0: a configuration of an older version asking for them gets code 1.
"""

from __future__ import annotations

from .errors import INCOMPATIBLE_VERSION, CNIError

SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]

# The first spec version in which each verb exists.
VERB_MIN_VERSION = {"ADD": "0.1.0", "DEL": "0.1.0", "CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}


def declared(stdin: bytes) -> str | None:
    """The configuration's cniVersion when stdin is a JSON object that has one (a best effort: any
    problem with it means None, and the verb itself reports the problem)."""
    import json

    from .env import MAX_CONFIG_BYTES

    if len(stdin) > MAX_CONFIG_BYTES:
        return None
    try:
        value = json.loads(stdin).get("cniVersion")
    except Exception:  # noqa: BLE001 - a guess only: anything unreadable means "no version"
        return None
    return value if isinstance(value, str) else None


def for_error(declared_version: str | None) -> str:
    """SPEC.md "Error": an error's cniVersion is "the protocol version in use" - the configuration's
    when it is one we speak, else the latest. Every error document pycni prints uses this (runner.run for
    the verbs' errors, daemon.wire.try_again for a daemon that failed mid-request)."""
    return declared_version if declared_version in SUPPORTED_VERSIONS else LATEST


def parse(version: str) -> tuple[int, int, int]:
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() and len(p) < 6 for p in parts):
        raise CNIError(INCOMPATIBLE_VERSION, f"invalid cniVersion {version!r}", "expected MAJOR.MINOR.PATCH")
    return int(parts[0]), int(parts[1]), int(parts[2])


def at_least(version: str, minimum: str) -> bool:
    return parse(version) >= parse(minimum)


def require_supported(version: str, verb: str) -> None:
    """Refuse a configuration version this plugin cannot speak, or a verb its version does not have."""
    parse(version)
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI versions: config is {version!r}, plugin supports {list(SUPPORTED_VERSIONS)}",
        )
    minimum = VERB_MIN_VERSION.get(verb)
    if minimum and not at_least(version, minimum):
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"configuration version {version} does not support the {verb} command (needs >= {minimum})",
        )


def version_info(request_version: str | None) -> dict:
    """The VERSION answer: echo the caller's version when we speak it, else our newest."""
    version = request_version if request_version in SUPPORTED_VERSIONS else LATEST
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}
