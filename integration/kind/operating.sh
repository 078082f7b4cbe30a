#!/usr/bin/env bash
# README "Operating pycni" on a real node: one test pod, then the operator's two questions answered on the node
# it landed on - the daemon's Prometheus metrics (scraped once through the API server's node proxy, port 9472)
# count its ADD and its lease, and `pycni leases` on that node names the pod's address and a live host veth.
# Needs the cluster of cluster.sh (build/cluster.env sourced: kubectl, docker and KUBECONFIG).
set -euo pipefail
IMAGE=${PYCNI_E2E_IMAGE:-pycni/e2e:1}
NS=pycni-ops-$$
OUT=$(mktemp -d)
die() { echo "[operating] error: $*" >&2; exit 1; }
cleanup() { kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true; rm -rf "$OUT"; }
trap cleanup EXIT
kubectl create namespace "$NS" >/dev/null
kubectl -n "$NS" run ops --image="$IMAGE" --image-pull-policy=Never --restart=Never --command -- sleep 600 >/dev/null
kubectl -n "$NS" wait --for=condition=Ready pod/ops --timeout=180s >/dev/null
node=$(kubectl -n "$NS" get pod ops -o jsonpath='{.spec.nodeName}')
ip=$(kubectl -n "$NS" get pod ops -o jsonpath='{.status.podIP}')
kubectl get --raw "/api/v1/nodes/$node:9472/proxy/metrics" >"$OUT/metrics.txt" || die "$node: no metrics on :9472"
grep -Eq '^pycni_requests_total\{code="0",plugin="pycni",verb="ADD"\} [1-9]' "$OUT/metrics.txt" \
  || die "$node: no ADD counted"
grep -Eq '^pycni_ipam_leases\{[^}]*\} [1-9]' "$OUT/metrics.txt" || die "$node: no lease in the pool metrics"
grep -q '^pycni_request_duration_seconds_count{plugin="pycni",verb="ADD"}' "$OUT/metrics.txt" \
  || die "$node: no ADD latency"
docker exec "$node" /opt/cni/bin/pycni leases --address "$ip" --json >"$OUT/leases.json" \
  || die "$node: pycni leases does not know $ip"
python3 - "$OUT/leases.json" "$ip" <<'PY' || die "$node: pycni leases does not show $ip with a live veth"
import json, sys
(lease,) = json.load(open(sys.argv[1]))["leases"]
assert lease["vethExists"] and lease["containerID"], lease
print(f"[operating] pycni leases on the node: {sys.argv[2]} held by {lease['containerID'][:12]}, veth present")
PY
echo "[operating] $node: metrics count the ADD and the lease; pycni leases names $ip - PASS"
