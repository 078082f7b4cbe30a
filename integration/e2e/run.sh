#!/usr/bin/env bash
# Run Kubernetes' own e2e tests (integration/e2e/build.sh builds e2e.test and the images) against the cluster of
# `make cluster-up` (build/kubeconfig, build/cluster.env).
#
#   run.sh [all|conformance|netpol|ci]     (default all)
#     conformance  --ginkgo.focus='\[sig-network\].*\[Conformance\]'          (pods, Services, DNS, ...)
#     netpol       --ginkgo.focus='\[sig-network\] Netpol|NetworkPolicy API'   (the NetworkPolicy suites)
#     all          both, one after the other
#     ci           the fixed subset CI runs (CI_FOCUS below; docs/networkpolicy.md says which and how long)
#   FOCUS=regex [NAME=dir] run.sh custom     any other selection (report in build/e2e/$NAME, default custom)
#
# Every suite skips $SKIP (tests that cannot pass on these machines, each with its reason in
# docs/e2e-results.md). Reports: build/e2e/<suite>/junit_01.xml (JUnit), e2e.log (the whole output) and
# results.md (one table row per test: name, result, seconds, failure reason). Exit status: 0 when every selected
# test passed.
#
# Env: KUBECONFIG (default build/kubeconfig), BUILD (build), CLUSTER_NAME (pycni), PYCNI_CACHE, E2E_TIMEOUT (3h),
#      E2E_LOAD_IMAGES (1: `kind load image-archive` the test images when a node lacks one; 0: never).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../harness/cluster-paths.sh
. "$HERE/../harness/cluster-paths.sh"  # ROOT, BUILD (absolute), CLUSTER_NAME
CACHE=${PYCNI_CACHE:-/var/cache/pycni}
SUITE=${1:-all}

log() { echo "[e2e/run] $*" >&2; }
die() { log "error: $*"; exit 1; }

CONFORMANCE_FOCUS='\[sig-network\].*\[Conformance\]'
NETPOL_FOCUS='\[sig-network\] Netpol|\[sig-network\] NetworkPolicy API'
# SCTP: the kernel of our machines (and so of every kind node, which shares it) has no SCTP module: no pod can
# open an SCTP socket, so the SCTP connectivity tests cannot run at all here (their policies are compiled like any
# other: tests/unit/test_agent_netpol_unit.py).
SKIP=${SKIP:-'\[Feature:SCTPConnectivity\]|\[Disruptive\]'}
# CI's subset: NetworkPolicy's core cases (ingress, egress, both selectors, ports, named ports, ipBlock except,
# updates while running) and the pod-to-pod / Service conformance checks across nodes.
CI_FOCUS='\[sig-network\] Netpol NetworkPolicy between server and client should (support a .default-deny-ingress. policy|enforce policy based on PodSelector and NamespaceSelector|enforce policy based on Ports|allow ingress access on one named port|enforce except clause while egress access to server in CIDR block|enforce updated policy|work with Ingress, Egress specified together|deny ingress access to updated pod)|\[sig-network\] Networking Granular Checks: Pods should function for intra-pod communication: (http|udp) \[NodeConformance\] \[Conformance\]|\[sig-network\] Services should serve a basic endpoint from pods \[Conformance\]|\[sig-network\] DNS should provide DNS for services \[Conformance\]'

K8S_VERSION=$(cd "$ROOT/integration/k8s" && PATH=/usr/local/go/bin:$PATH GOFLAGS=-mod=readonly go list -m -f '{{.Version}}' k8s.io/kubernetes)
E2E=$CACHE/e2e/$K8S_VERSION/bin/e2e.test
IMAGES=$CACHE/e2e/$K8S_VERSION/images
[ -x "$E2E" ] && [ -f "$IMAGES/e2e-images.tar" ] || bash "$HERE/build.sh" all
[ -f "$BUILD/cluster.env" ] && . "$BUILD/cluster.env"   # KUBECONFIG, DOCKER_HOST, PATH (kind, kubectl)
export KUBECONFIG=${KUBECONFIG:-$BUILD/kubeconfig}
[ -f "$KUBECONFIG" ] || die "no kubeconfig $KUBECONFIG (make cluster-up)"
kubectl get --raw /readyz >/dev/null || die "the cluster of $KUBECONFIG does not answer"

load_images() {  # preload the test images into every node that lacks one (no registry here)
  [ "${E2E_LOAD_IMAGES:-1}" = 1 ] && command -v kind >/dev/null || return 0
  local node missing=0 ref
  for node in $(kind get nodes --name "$CLUSTER_NAME"); do
    local have; have=$(docker exec "$node" ctr -n k8s.io images ls -q 2>/dev/null || true)
    while read -r ref; do grep -qxF "$ref" <<<"$have" || missing=1; done <"$IMAGES/IMAGES"
  done
  if [ $missing = 1 ]; then
    log "kind load image-archive $IMAGES/e2e-images.tar ($(tr '\n' ' ' <"$IMAGES/IMAGES"))"
    kind load image-archive --name "$CLUSTER_NAME" "$IMAGES/e2e-images.tar" >&2
  fi
}

run_suite() {  # NAME FOCUS
  local name=$1 focus=$2 dir=$BUILD/e2e/$1 t0 rc=0
  rm -rf "$dir"; mkdir -p "$dir"
  log "$name: e2e.test --ginkgo.focus='$focus' --ginkgo.skip='$SKIP' (report in $dir)"
  t0=$(date +%s)
  "$E2E" --kubeconfig "$KUBECONFIG" --provider=skeleton --report-dir "$dir" \
    --ginkgo.focus="$focus" --ginkgo.skip="$SKIP" --ginkgo.timeout="${E2E_TIMEOUT:-3h}" --ginkgo.no-color \
    --ginkgo.poll-progress-after=10m >"$dir/e2e.log" 2>&1 || rc=$?
  python3 "$HERE/junit_table.py" "$focus" "$SKIP" "$dir"/junit_*.xml >"$dir/results.md" || true
  log "$name: exit $rc after $(($(date +%s) - t0)) s; $(grep -c '^| ' "$dir/results.md" || true) rows in $dir/results.md"
  tail -5 "$dir/e2e.log" >&2
  return $rc
}

load_images
rc=0
case $SUITE in
  conformance) run_suite conformance "$CONFORMANCE_FOCUS" || rc=$? ;;
  netpol) run_suite netpol "$NETPOL_FOCUS" || rc=$? ;;
  all) run_suite conformance "$CONFORMANCE_FOCUS" || rc=$?; run_suite netpol "$NETPOL_FOCUS" || rc=$? ;;
  ci) run_suite ci "$CI_FOCUS" || rc=$? ;;
  custom) run_suite "${NAME:-custom}" "${FOCUS:?FOCUS=regex}" || rc=$? ;;
  *) sed -n '2,22p' "$0" >&2; exit 2 ;;
esac
exit $rc
