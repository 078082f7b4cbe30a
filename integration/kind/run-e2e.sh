#!/usr/bin/env bash
# pycni on a real kind cluster, end to end (`make kind-e2e`):
#   cluster.sh up   (kind cluster, kindnet off; pycni installed with kubectl apply; nodes and CoreDNS Ready)
#   -> a second pycni image with another bundle, loaded for the rolling update
#   -> e2e.py       (pod<->pod without NAT on one node and across nodes, hostPort, ClusterIP and NodePort from every
#                    node, DNS, rolling update of the DaemonSet, a node reboot, cleanup of leases/veths/rules)
#   -> operating.sh (metrics scraped once, `pycni leases` on a node), integration/e2e/run.sh ci (Kubernetes' own
#                    e2e tests, the CI subset; PYCNI_E2E_SUBSET=0 skips it)
#   -> diagnostics on failure -> cluster.sh down (always, even on failure or Ctrl-C; KEEP_CLUSTER=1 keeps it)
#
# Needs the bundle (`make bundle`). PYCNI_KIND_MODE=offline (default: our machines, everything built here) or
# registry (docker, kind, kubectl on PATH and kind's own node image); see integration/kind/README.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../harness/cluster-paths.sh
. "$HERE/../harness/cluster-paths.sh"  # ROOT, BUILD (absolute), CLUSTER_NAME
UPDATE_IMAGE=${PYCNI_UPDATE_IMAGE:-pycni/agent:dev-update}
PY=${PYTHON:-python3}
T0=$(date +%s)
export BUILD CLUSTER_NAME

say() { echo "[run-e2e $(($(date +%s) - T0))s] $*"; }

diagnose() {
  echo "===== diagnostics"
  kubectl get nodes -o wide || true
  kubectl get pods -A -o wide || true
  kubectl -n kube-system describe daemonset pycni-agent | tail -30 || true
  kubectl -n kube-system logs -l app=pycni-agent --all-containers --tail=60 --prefix || true
  for node in $(kind get nodes --name "$CLUSTER_NAME" 2>/dev/null); do
    echo "----- $node"
    docker exec "$node" bash -c 'ls -la /opt/cni/bin /etc/cni/net.d; cat /etc/cni/net.d/10-pycni.conflist; ip -br addr;
      ip route; nft list table inet pycni-agent; ls -la /var/lib/cni/networks/pycni; crictl pods;
      journalctl -u kubelet --no-pager | tail -40; journalctl -u containerd --no-pager | tail -20' 2>&1 || true
  done
}

finish() {
  local rc=$?
  trap - EXIT INT TERM
  if [ $rc -ne 0 ] && [ -f "$BUILD/cluster.env" ]; then diagnose; fi
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    say "keeping the cluster: . $BUILD/cluster.env; make cluster-down when done"
  else
    bash "$HERE/cluster.sh" down || rc=1
  fi
  say "exit $rc"
  exit $rc
}
trap finish EXIT
trap 'exit 130' INT TERM

bash "$HERE/cluster.sh" up
# shellcheck source=/dev/null
. "$BUILD/cluster.env"
say "building $UPDATE_IMAGE (the same bundle plus pycni.d/REVISION: another digest, so the agent reinstalls)"
bash "$HERE/images.sh" agent "$UPDATE_IMAGE" "$BUILD/bundle" "e2e-$(date +%s)"
kind load docker-image --name "$CLUSTER_NAME" "$UPDATE_IMAGE"
say "running the checks"
"$PY" "$HERE/e2e.py" --update-image "$UPDATE_IMAGE"
say "operating pycni: metrics scraped once, pycni leases on a node"
bash "$HERE/operating.sh"
if [ "${PYCNI_E2E_SUBSET:-1}" = 1 ]; then
  say "Kubernetes' own e2e tests: the CI subset (integration/e2e/run.sh ci; docs/e2e-results.md)"
  bash "$ROOT/integration/e2e/run.sh" ci
fi
say "all checks passed"
