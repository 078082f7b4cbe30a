"""One plugin invocation: the validated environment plus the decoded configuration.

Verbs receive a Request and never read os.environ or stdin themselves, so the same verb
functions serve an exec'd plugin and an in-process caller (the bridge running host-local,
or a long-lived daemon).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .env import CniArgs, Environment

C = TypeVar("C")


@dataclass(frozen=True)
class Request(Generic[C]):
    env: Environment
    conf: C  # the plugin's NetConf subclass
    raw: dict  # the configuration as decoded, forwarded unchanged to delegated plugins
    stdin: bytes  # the exact bytes received (what a delegate gets on its stdin)
    version: str  # the configuration's cniVersion: results and errors are printed in it
    cni_args: CniArgs
    # The caller's whole environment (the runtime's, also when the daemon serves the request):
    # what an exec'd delegate inherits. None: this process's os.environ.
    environ: dict[str, str] | None = None
    # What a long-lived process keeps between requests (pycni.context.Context: the lease cache, the
    # netlink handles); None in an exec'd plugin, which starts from nothing every time.
    context: Any = None

    @property
    def container_id(self) -> str:
        return self.env.container_id

    @property
    def ifname(self) -> str:
        return self.env.ifname

    @property
    def netns(self) -> str:
        return self.env.netns
