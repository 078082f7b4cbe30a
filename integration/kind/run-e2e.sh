#!/usr/bin/env bash
# pycni on a real kind cluster, end to end:
#   kind cluster (kindnet off, 10.244.0.0/16, 1 control plane + 2 workers)
#   -> agent image (bundle + entrypoint) built and `kind load`ed -> DaemonSet applied
#   -> nodes Ready, CoreDNS Ready
#   -> checks (integration/kindlab/kl_checks.py via kl_kube.py): pod<->pod on one node and across nodes
#      (no NAT), a hostPort (egress masqueraded), a ClusterIP Service, DNS, and no lease left on any
#      node after the pods are deleted.
#
# Needs: docker, kind, kubectl, python3, and the bundle (`make bundle` -> build/pycni-bundle.tar.gz).
# Env: CLUSTER_NAME (pycni), KEEP_CLUSTER=1 (do not delete the cluster at the end), KIND_IMAGE (node
# image, default: kind's), E2E_IMAGE (test pods, busybox:1.36), AGENT_IMAGE (pycni/agent:e2e).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CLUSTER_NAME=${CLUSTER_NAME:-pycni}
CONTEXT=kind-$CLUSTER_NAME
AGENT_IMAGE=${AGENT_IMAGE:-pycni/agent:e2e}
E2E_IMAGE=${E2E_IMAGE:-busybox:1.36}
BUNDLE_TGZ=${BUNDLE_TGZ:-$ROOT/build/pycni-bundle.tar.gz}
KC=(kubectl --context "$CONTEXT")
T0=$(date +%s)

say() { echo "[run-e2e $(($(date +%s) - T0))s] $*"; }
die() { echo "run-e2e: $*" >&2; exit 1; }

for tool in docker kind kubectl python3; do command -v "$tool" >/dev/null || die "$tool not found"; done
[ -f "$BUNDLE_TGZ" ] || die "no bundle at $BUNDLE_TGZ (run: make bundle)"

diagnose() {
  echo "===== diagnostics"
  "${KC[@]}" get nodes -o wide || true
  "${KC[@]}" get pods -A -o wide || true
  "${KC[@]}" -n kube-system logs -l app=pycni-agent --tail=100 --prefix || true
  for node in $(kind get nodes --name "$CLUSTER_NAME" 2>/dev/null); do
    echo "----- $node"
    docker exec "$node" sh -c 'ls -la /opt/cni/bin /etc/cni/net.d; cat /etc/cni/net.d/10-pycni.conflist;
      ip route; ip route show proto 156; nft list table inet pycni-agent 2>/dev/null;
      ls -la /var/lib/cni/networks/pycni 2>/dev/null; tail -50 /var/log/pycni.log 2>/dev/null' || true
  done
}

finish() {
  rc=$?
  [ $rc -ne 0 ] && diagnose
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    say "keeping cluster $CLUSTER_NAME (kind delete cluster --name $CLUSTER_NAME)"
  else
    kind delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
  fi
  rm -rf "${CTX:-}"
  say "exit $rc"
  exit $rc
}
trap finish EXIT

say "creating kind cluster $CLUSTER_NAME"
kind delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
kind create cluster --name "$CLUSTER_NAME" --config "$HERE/kind-config.yaml" ${KIND_IMAGE:+--image "$KIND_IMAGE"} \
  --wait 0s

say "building $AGENT_IMAGE"
CTX=$(mktemp -d)
cp "$HERE/Dockerfile" "$HERE/entrypoint.sh" "$CTX/"
mkdir "$CTX/bundle"
tar -C "$CTX/bundle" -xzf "$BUNDLE_TGZ"
docker build -q -t "$AGENT_IMAGE" "$CTX"
kind load docker-image "$AGENT_IMAGE" --name "$CLUSTER_NAME"
docker pull -q "$E2E_IMAGE" >/dev/null
kind load docker-image "$E2E_IMAGE" --name "$CLUSTER_NAME"

say "applying the DaemonSet"
POD_SUBNET=$(python3 -c 'import re,sys; print(re.search(r"podSubnet:\s*(\S+)", open(sys.argv[1]).read()).group(1))' \
  "$HERE/kind-config.yaml")
sed -e "s#image: pycni/agent:dev#image: $AGENT_IMAGE#" -e "s#value: \"10.244.0.0/16\"#value: \"$POD_SUBNET\"#" \
  "$HERE/pycni-daemonset.yaml" | "${KC[@]}" apply -f -
"${KC[@]}" -n kube-system rollout status daemonset/pycni-agent --timeout=180s

say "waiting for nodes and CoreDNS"
"${KC[@]}" wait --for=condition=Ready nodes --all --timeout=300s
"${KC[@]}" -n kube-system rollout status deployment/coredns --timeout=300s
"${KC[@]}" get nodes -o wide

# Every node: the plugin installed, the conflist written, a proto-156 route per other node.
n_nodes=$(kind get nodes --name "$CLUSTER_NAME" | wc -l)
for node in $(kind get nodes --name "$CLUSTER_NAME"); do
  docker exec "$node" test -x /opt/cni/bin/pycni || die "$node: /opt/cni/bin/pycni missing"
  docker exec "$node" test -f /etc/cni/net.d/10-pycni.conflist || die "$node: conflist missing"
  routes=$(docker exec "$node" ip route show proto 156 | wc -l)
  [ "$routes" -eq $((n_nodes - 1)) ] || die "$node: $routes pycni routes, expected $((n_nodes - 1))"
done
say "agent state OK on $n_nodes nodes"

say "running the checks"
E2E_IMAGE=$E2E_IMAGE python3 "$ROOT/integration/kindlab/kl_kube.py" --context "$CONTEXT"
say "all checks passed"
