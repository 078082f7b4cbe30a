"""One harness for every test that drives real runtimes and clusters (integration/runtimes: containerd and
podman; integration/kindlab: docker node containers; integration/kind: a real kind cluster; integration/k8s).

Stdlib only, so the kind scripts can use it with any python3. The modules, by what they do:

- `cleanup`   - a LIFO list of undo actions that always runs (finalizers, atexit), and `log`;
- `processes` - commands run with a timeout (`run`), PIDs (alive, killed by PID), network namespace identity
                and the processes inside one;
- `netns`     - a node network namespace (`Node`: `ip netns add`, commands through `nsenter --net`), a client
                namespace wired to it by a veth, an HTTP GET from inside a namespace;
- `daemon`    - a long-running process started inside a node namespace, known and stopped by its PID;
- `scratch`   - the run's scratch directory and its ledger of what exists outside it; the sweep that removes
                it all (processes, mounts, namespaces, cgroups), also for an earlier run that was SIGKILLed;
- `dockerd`   - a dockerd confined to its own network namespace (dockerd.sh, also used by integration/k8s and
                integration/kind), and its Python handle;
- `images`    - busybox-static root filesystems, OCI image archives (`ctr import`) and `docker import`,
                built offline from this machine's files (also a command line, for the shell scripts);
- `wait`      - polling: retry until a check passes or a condition holds, with a deadline.
"""
