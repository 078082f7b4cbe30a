"""Spec error object (SPEC.md "Error" section) and the well-known error codes.

Every failure pycni reports is a CNIError carrying the spec code; the CLI turns it into
{"cniVersion", "code", "msg", "details"} on stdout and a non-zero exit status.
"""

from __future__ import annotations

# SPEC.md "Error": codes 0-99 are reserved for the spec.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
# Not in SPEC.md's table but libcni's (pkg/types: ErrInvalidNetNS = 8), returned by the Go skel when
# CNI_NETNS is the plugin's own network namespace (pkg/skel/skel.go, ns.CheckNetNS).
INVALID_NETNS = 8
TRY_AGAIN_LATER = 11
# SPEC.md "STATUS": 50 = the plugin is not available, 51 = existing containers may be degraded.
STATUS_NOT_AVAILABLE = 50
STATUS_DEGRADED = 51

# pycni's own codes (100+ are plugin-specific per the spec).
INTERNAL = 100  # a bug: an unexpected exception
KERNEL = 101  # a netlink / sysctl / firewall operation failed
ADDRESS_EXHAUSTED = 102  # no free address left in a range set
ADDRESS_UNAVAILABLE = 103  # a requested address is taken or not in any range
DELEGATE_FAILED = 104  # a delegated (IPAM) plugin could not be run or answered garbage
CHECK_FAILED = 105  # CHECK found reality different from prevResult


class CNIError(Exception):
    """An error with a spec code; `details` is the longer, optional explanation."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> dict:
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_dict(cls, data: object, fallback_msg: str = "") -> CNIError:
        """Rebuild an error printed by another (delegated) plugin."""
        if isinstance(data, dict) and isinstance(data.get("code"), int):
            return cls(data["code"], str(data.get("msg", "")) or fallback_msg, str(data.get("details", "")))
        return cls(DELEGATE_FAILED, fallback_msg or "delegated plugin failed", str(data)[:500])

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"CNIError({self.code}, {self.msg!r}, {self.details!r})"
