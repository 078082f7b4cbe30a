"""pycni's node agent: what kindnet's daemon does for ptp, done for the pycni bridge.

One process per node (a DaemonSet pod on Kubernetes, hostNetwork) that keeps the node ready for the
plugin, in this order:

1. `install`  - copies the self-contained bundle (pycni, pycni-host-local, pycni.d/) into the node's CNI
                bin dir, atomically and only when it changed;
2. `routes`   - host-gw routing: a route to every other node's pod CIDR via that node's address,
                tagged with our own routing protocol number so no one else's route is ever touched;
3. `masq`     - masquerades pod traffic leaving the cluster (one nft table, replaced atomically);
4. `conflist` - writes /etc/cni/net.d/10-pycni.conflist for this node's pod CIDR(s), last, so the
                runtime (and kubelet's NetworkReady) only sees the network once the rest is in place.

The list of nodes comes from `nodes` (a JSON file, or the Kubernetes API with the pod's service
account). `main` is the loop. Everything here except `nodes.KubeClient`, `routes.apply` and `masq`'s
backends is pure and tested without root (tests/unit/test_agent_unit.py).
"""
