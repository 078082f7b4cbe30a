#!/usr/bin/env bash
# The main job, end to end, on this machine and nowhere else:
#   a node network namespace, two pod namespaces, pycni installed into a CNI bin dir, ADD through a
#   real libcni client (build/bin/pycni-cnitool), the results, pod<->pod and pod<->gateway pings,
#   CHECK, DEL, and a cleanup that leaves no namespace, link or lease behind.
# Every packet stays inside namespaces this script creates.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/build/demo
NODE=pycni-demo-node
PODS=(pycni-demo-pod1 pycni-demo-pod2)
CNITOOL=$ROOT/build/bin/pycni-cnitool
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

cleanup() {
  for ns in "${PODS[@]}" "$NODE"; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT
cleanup

step "install pycni into $DEMO/bin (a private venv in $DEMO/pycni, launchers that need no checkout)"
make -s install CNI_BIN_DIR="$DEMO/bin" PYCNI_HOME="$DEMO/pycni" >/dev/null
ls -l "$DEMO/bin"

step "write the network configuration $DEMO/net.d/10-demo.conflist"
rm -rf "$DEMO/net.d" "$DEMO/ipam" "$DEMO/cache"
mkdir -p "$DEMO/net.d"
cat > "$DEMO/net.d/10-demo.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "demo",
  "plugins": [
    {
      "type": "pycni",
      "bridge": "demo0",
      "isGateway": true,
      "mtu": 1400,
      "ipam": {
        "type": "pycni-host-local",
        "ranges": [[{"subnet": "10.250.0.0/24"}]],
        "dataDir": "$DEMO/ipam"
      }
    }
  ]
}
JSON
cat "$DEMO/net.d/10-demo.conflist"

step "create the node namespace $NODE and the pod namespaces ${PODS[*]}"
ip netns add "$NODE"
ip -n "$NODE" link set lo up
for pod in "${PODS[@]}"; do ip netns add "$pod"; done

export NETCONFPATH=$DEMO/net.d CNI_PATH=$DEMO/bin:/usr/lib/cni CNI_CACHE_DIR=$DEMO/cache
innode() { nsenter --net=/var/run/netns/$NODE -- "$@"; }

declare -A IP
for pod in "${PODS[@]}"; do
  step "ADD $pod through libcni (pycni-cnitool add demo /var/run/netns/$pod)"
  out=$(innode "$CNITOOL" add demo "/var/run/netns/$pod")
  echo "$out"
  IP[$pod]=$(printf '%s' "$out" | "$ROOT/.venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])')
done

step "what the node sees"
innode ip -br addr show demo0
innode ip -br link show master demo0
step "what ${PODS[0]} sees"
ip -n "${PODS[0]}" -br addr show eth0
ip -n "${PODS[0]}" route

step "ping ${PODS[0]} (${IP[${PODS[0]}]}) -> ${PODS[1]} (${IP[${PODS[1]}]})"
ip netns exec "${PODS[0]}" ping -c 2 -W 2 "${IP[${PODS[1]}]}"
step "ping ${PODS[1]} -> its gateway 10.250.0.1 (the bridge)"
ip netns exec "${PODS[1]}" ping -c 2 -W 2 10.250.0.1

for pod in "${PODS[@]}"; do
  step "CHECK $pod"
  innode "$CNITOOL" check demo "/var/run/netns/$pod" && echo "CHECK ok (empty output, exit 0)"
done

step "leases held: $(ls "$DEMO/ipam/demo" | grep -v -e lock -e last_reserved | tr '\n' ' ')"

for pod in "${PODS[@]}"; do
  step "DEL $pod"
  innode "$CNITOOL" del demo "/var/run/netns/$pod" && echo "DEL ok"
done

left=$(ls "$DEMO/ipam/demo" | grep -v -e lock -e last_reserved || true)
links=$(innode ip -o link show type veth | wc -l)
step "after DEL: leases left: ${left:-none}; veths left in the node: $links"
[ -z "$left" ] && [ "$links" = 0 ]
step "cleanup: deleting namespaces"
cleanup
trap - EXIT
echo "demo finished: ADD, connectivity, CHECK and DEL all worked"
