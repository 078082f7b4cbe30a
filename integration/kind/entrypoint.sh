#!/bin/sh
# The pycni DaemonSet image's entrypoint (integration/kind/images.sh builds the image).
#
#   entrypoint.sh             the agent (hostNetwork, privileged): installs the bundle into the node's CNI bin dir
#                             (hostPath /host/opt/cni/bin), routes the other nodes' pod CIDRs, masquerades cluster
#                             egress and writes /host/etc/cni/net.d/10-pycni.conflist - from the Kubernetes API
#                             read with the pod's service account. /tmp/pycni-agent-ready exists while its last
#                             round succeeded (the agent container's readiness probe).
#   entrypoint.sh daemon [ARGS]  the warm-path daemon on /run/pycni/pycni.sock (docs/performance.md), ARGS added
#                             (--metrics-address ...); on SIGTERM it drains for DAEMON_GRACE seconds (default 20:
#                             keep terminationGracePeriodSeconds above it). It serves only callers in its own
#                             namespaces (docs/security.md), so it waits for the agent's install and runs the
#                             node's /opt/cni/bin/pycni in the node's mount namespace (that of /proc/1, hostPID);
#                             that is the bundle's static native shim, which execs the bundled interpreter for
#                             a subcommand.
#
# Env: NODE_NAME (downward API), CLUSTER_CIDR, AGENT_INTERVAL (seconds, default 30), CNI_VERSION (default 1.0.0),
# EXTRA_ARGS (more agent arguments), DAEMON_GRACE.
set -eu
B=${BUNDLE_DIR:-/bundle}
case ${1:-agent} in
  daemon)
    shift
    until [ -x /opt/cni/bin/pycni ]; do sleep 1; done
    exec nsenter --mount=/proc/1/ns/mnt -- /opt/cni/bin/pycni daemon --socket /run/pycni/pycni.sock \
      --cni-path /opt/cni/bin --grace "${DAEMON_GRACE:-20}" "$@" ;;
  agent) ;;
  *) echo "usage: entrypoint.sh [agent|daemon]" >&2; exit 2 ;;
esac
# `pycni agent` once pycni's CLI dispatches it; until then the same code through the bundled python3.
if "$B/pycni" agent --help </dev/null >/dev/null 2>&1; then
  set -- "$B/pycni" agent
else
  set -- "$B/pycni.d/bin/python3" -I -m pycni.agent
fi
# shellcheck disable=SC2086 # EXTRA_ARGS is a list of words on purpose
exec "$@" --kube --node-name "${NODE_NAME:?NODE_NAME must be set (downward API spec.nodeName)}" \
  --bundle-dir "$B" --cni-bin-dir /host/opt/cni/bin --cni-conf-dir /host/etc/cni/net.d \
  --cluster-cidr "${CLUSTER_CIDR:?CLUSTER_CIDR must be set}" --interval "${AGENT_INTERVAL:-30}" \
  --cni-version "${CNI_VERSION:-1.0.0}" --ready-file /tmp/pycni-agent-ready ${EXTRA_ARGS:-}
