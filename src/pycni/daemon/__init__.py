"""The warm path: a long-lived pycni daemon serving the CNI verbs in-process (server), and what the
exec'd `pycni` / `pycni-host-local` use to hand a request over to it - the C shim (shim.c, installed by
default) or the Python client (client.py, behind the Python launchers).

The protocol between them - framing, fields, encoding, limits, the try-again answer - is defined once,
in wire.py. Who may call and in whose view (peer.py: uid 0, the daemon's capabilities, the same user,
mount, network, PID and time namespaces - all read from the kernel, nothing the request says about
itself), which executables it runs (cni_path.py), and the deadlines (deadline.py): docs/security.md. A
request of another protocol or pycni version is refused (an upgrade never mixes an old daemon with a
new plugin). This package's __init__, wire and client import nothing heavy: they run in every exec'd
plugin.
"""
