#!/usr/bin/env bash
# The main job, end to end, on this machine and nowhere else:
#   a node network namespace, two pod namespaces, pycni installed into a CNI bin dir, and the upstream
#   cnitool (build/bin/cnitool, containernetworking/cni v1.3, libcni) driving it exactly as cnitool's
#   README documents: `cnitool add|check|status|gc|del <network> <netns>` with NETCONFPATH, CNI_PATH,
#   CNI_IFNAME (and CNI_ARGS, CAP_ARGS). The results, pod<->pod and pod<->gateway pings, CHECK,
#   STATUS (ready, then code 51 while the bridge is down), DEL, a leak that only GC can find, GC,
#   and a cleanup that leaves no namespace, link or lease behind.
# Every packet stays inside namespaces this script creates. libcni keeps its result cache in
# /var/lib/cni (cnitool has no option for it); the network name is unique per run, so a GC here
# never touches another network's cached attachments.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/build/demo
RUN=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
NET=demo-$RUN
NODE=pycni-demo-node-$RUN
PODS=(pycni-demo-pod1-$RUN pycni-demo-pod2-$RUN)
CNITOOL=$ROOT/build/bin/cnitool
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

cleanup() {
  for ns in "${PODS[@]}" "$NODE"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -f /var/lib/cni/results/"$NET"-* 2>/dev/null || true
}
trap cleanup EXIT

step "install pycni into $DEMO/bin (a private venv in $DEMO/pycni, launchers that need no checkout)"
make -s install CNI_BIN_DIR="$DEMO/bin" PYCNI_HOME="$DEMO/pycni" >/dev/null
ls -l "$DEMO/bin"

step "write the network configuration $DEMO/net.d/10-demo.conflist (network $NET)"
rm -rf "$DEMO/net.d" "$DEMO/ipam"
mkdir -p "$DEMO/net.d"
cat > "$DEMO/net.d/10-demo.conflist" <<JSON
{
  "cniVersion": "1.1.0",
  "name": "$NET",
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

# cnitool's environment, as its README documents it
export NETCONFPATH=$DEMO/net.d CNI_PATH=$DEMO/bin:/usr/lib/cni CNI_IFNAME=eth0
echo "NETCONFPATH=$NETCONFPATH CNI_PATH=$CNI_PATH CNI_IFNAME=$CNI_IFNAME"
innode() { nsenter --net=/var/run/netns/"$NODE" -- "$@"; }
leases() { { ls "$DEMO/ipam/$NET" 2>/dev/null | grep -v -e lock -e last_reserved || true; } | tr '\n' ' '; }

step "STATUS before anything exists (libcni GetStatusNetworkList): ready = exit 0, no output"
innode "$CNITOOL" status "$NET" "/var/run/netns/${PODS[0]}" && echo "STATUS ok"

declare -A IP
for pod in "${PODS[@]}"; do
  step "ADD $pod: cnitool add $NET /var/run/netns/$pod"
  out=$(innode "$CNITOOL" add "$NET" "/var/run/netns/$pod")
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
nsenter --net=/var/run/netns/"${PODS[0]}" -- ping -c 2 -W 2 "${IP[${PODS[1]}]}"
step "ping ${PODS[1]} -> its gateway 10.250.0.1 (the bridge)"
nsenter --net=/var/run/netns/"${PODS[1]}" -- ping -c 2 -W 2 10.250.0.1

for pod in "${PODS[@]}"; do
  step "CHECK $pod: cnitool check $NET /var/run/netns/$pod (libcni passes the cached result as prevResult)"
  innode "$CNITOOL" check "$NET" "/var/run/netns/$pod" && echo "CHECK ok (empty output, exit 0)"
done

step "STATUS with two pods attached"
innode "$CNITOOL" status "$NET" "/var/run/netns/${PODS[0]}" && echo "STATUS ok"
step "take the bridge down: STATUS must say the pods are cut off (CNI code 51)"
show innode ip link set demo0 down
if innode "$CNITOOL" status "$NET" "/var/run/netns/${PODS[0]}" 2>"$DEMO/status.err"; then
  echo "STATUS should have failed" >&2; exit 1
fi
grep '^Error:' "$DEMO/status.err"  # cnitool prints the plugin's message (then its usage)
show innode ip link set demo0 up
innode "$CNITOOL" status "$NET" "/var/run/netns/${PODS[0]}" && echo "STATUS ok again"

step "DEL ${PODS[0]}: cnitool del $NET /var/run/netns/${PODS[0]}"
innode "$CNITOOL" del "$NET" "/var/run/netns/${PODS[0]}" && echo "DEL ok"
echo "leases held: $(leases)"

step "a runtime loses track of ${PODS[1]}: its namespace is deleted without DEL and libcni's cache entry is lost"
show ip netns del "${PODS[1]}"
show rm -f /var/lib/cni/results/"$NET"-*
echo "leases held: $(leases)  <- leaked: nobody will ever DEL it"

step "GC: cnitool gc $NET /var/run/netns/${PODS[0]} (libcni DELs what it has cached, then sends GC"
echo "    without cni.dev/valid-attachments: no attachment of $NET is valid - docs/gc.md)"
innode "$CNITOOL" gc "$NET" "/var/run/netns/${PODS[0]}" && echo "GC ok"

left=$(leases)
links=$(innode ip -o link show type veth | wc -l)
step "after GC: leases left: ${left:-none}; veths left in the node: $links"
[ -z "$left" ] && [ "$links" = 0 ]
step "cleanup: deleting namespaces"
cleanup
trap - EXIT
echo "demo finished: STATUS, ADD, connectivity, CHECK, STATUS 51, DEL and GC all worked through the upstream cnitool"
