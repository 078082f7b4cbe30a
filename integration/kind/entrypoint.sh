#!/bin/sh
# pycni agent in a DaemonSet pod (hostNetwork, privileged): installs the bundle into the node's CNI bin
# dir (hostPath /host/opt/cni/bin), routes the other nodes' pod CIDRs, masquerades cluster egress and
# writes /host/etc/cni/net.d/10-pycni.conflist - from the Kubernetes API read with the pod's service
# account. Env: NODE_NAME (downward API), CLUSTER_CIDR, AGENT_INTERVAL (seconds, default 30),
# CNI_VERSION (default 1.0.0), EXTRA_ARGS.
set -eu
B=${BUNDLE_DIR:-/bundle}
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
  --cni-version "${CNI_VERSION:-1.0.0}" ${EXTRA_ARGS:-}
