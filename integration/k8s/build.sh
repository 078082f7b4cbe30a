#!/usr/bin/env bash
# Build Kubernetes v1.34, etcd, CoreDNS, pause, kind, crictl and local-path-provisioner from their pinned Go
# modules, then (with `images` / `node-image`) the control-plane images and the kind node image, offline.
#
#   build.sh bins         the static binaries (no docker needed)
#   build.sh images       + the component images (docker-archive tarballs; needs DOCKER_HOST, see integration/harness/dockerd.sh)
#   build.sh node-image   + the kind node image (debootstrap rootfs + binaries + preloaded images)
#   build.sh all          = node-image (default)
#
# Every output lives outside the clone under $PYCNI_CACHE (default /var/cache/pycni)/<component>/<version>/, next
# to a stamp holding the hash of its inputs: a second run with the same inputs rebuilds nothing. Each step prints
# how long it took (and appends it to $PYCNI_CACHE/build-times.log).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$HERE/versions.env"
export PATH=/usr/local/go/bin:$PATH GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly
CACHE=${PYCNI_CACHE:-/var/cache/pycni}
mkdir -p "$CACHE"

log() { echo "[k8s/build] $*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=lib.sh
source "$HERE/lib.sh"   # hash_of, timed, k8s_ldflags

# fresh DIR KEY: true when DIR holds a complete output for KEY
fresh() { [ "$(cat "$1/.stamp" 2>/dev/null)" = "$2" ]; }

# go_build MODDIR OUTDIR KEY "LDFLAGS" NAME=PKG...: build each package to OUTDIR/NAME (atomically, stamped)
go_build() {
  local mod=$1 out=$2 key=$3 ldflags=$4; shift 4
  local tmp="$out.tmp.$$" spec
  rm -rf "$tmp"; mkdir -p "$tmp"
  local pkgs=() same=1
  for spec in "$@"; do
    pkgs+=("${spec#*=}")
    [ "${spec%%=*}" = "$(basename "${spec#*=}")" ] || same=0
  done
  if [ $same = 1 ]; then  # one go build links them in parallel
    (cd "$mod" && go build -trimpath -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}")
  else
    for spec in "$@"; do
      (cd "$mod" && go build -trimpath -ldflags "$ldflags" -o "$tmp/${spec%%=*}" "${spec#*=}")
    done
  fi
  echo "$key" >"$tmp/.stamp"
  rm -rf "$out"; mkdir -p "$(dirname "$out")"; mv "$tmp" "$out"
}

# module_version MODDIR MODULE: the version MODDIR's go.mod pins for MODULE
module_version() { (cd "$1" && go list -m -f '{{.Version}}' "$2"); }

check_pins() {
  local want got
  while read -r dir mod want; do
    got=$(module_version "$HERE/$dir" "$mod") || die "cannot read $mod from $dir/go.mod"
    [ "$got" = "$want" ] || die "$dir/go.mod pins $mod $got but versions.env says $want"
  done <<EOF
. k8s.io/kubernetes $K8S_VERSION
modules/etcd go.etcd.io/etcd/server/v3 $ETCD_VERSION
modules/coredns github.com/coredns/coredns $COREDNS_VERSION
modules/kind sigs.k8s.io/kind $KIND_VERSION
modules/cri-tools sigs.k8s.io/cri-tools $CRICTL_VERSION
modules/local-path-provisioner github.com/rancher/local-path-provisioner $LPP_VERSION
EOF
}

# ---- binaries --------------------------------------------------------------------------------------------------
K8S_BIN=$CACHE/k8s/$K8S_VERSION/bin
ETCD_BIN=$CACHE/etcd/$ETCD_VERSION/bin
COREDNS_BIN=$CACHE/coredns/$COREDNS_VERSION/bin
PAUSE_BIN=$CACHE/pause/$PAUSE_VERSION/bin
KIND_BIN=$CACHE/kind/$KIND_VERSION/bin
CRICTL_BIN=$CACHE/cri-tools/$CRICTL_VERSION/bin
LPP_BIN=$CACHE/local-path-provisioner/$LPP_VERSION/bin
K8S_CMDS=(kubelet kubeadm kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy)

# one_bin NAME MODDIR OUTDIR "LDFLAGS" "OUR SOURCES" NAME=PKG...: build unless the stamp says these inputs (Go
# version, flags, packages, go.mod, go.sum, our own source files) were built already
one_bin() {
  local name=$1 mod=$2 out=$3 ldflags=$4 srcs=$5; shift 5
  local key f keyfiles=("@$mod/go.mod" "@$mod/go.sum")
  for f in $srcs; do keyfiles+=("@$f"); done
  key=$(hash_of "$(go version)" "$ldflags" "$@" "${keyfiles[@]}")
  if fresh "$out" "$key"; then log "$name: cached in $out"; return 0; fi
  log "$name: building into $out"
  timed "$name" go_build "$mod" "$out" "$key" "$ldflags" "$@"
}

build_bins() {
  check_pins
  local specs=() c
  for c in "${K8S_CMDS[@]}"; do specs+=("$c=k8s.io/kubernetes/cmd/$c"); done
  one_bin kubernetes "$HERE" "$K8S_BIN" "$(k8s_ldflags "$K8S_VERSION")" "" "${specs[@]}"
  one_bin etcd "$HERE/modules/etcd" "$ETCD_BIN" "-s -w" "" etcd=go.etcd.io/etcd/server/v3 etcdctl=go.etcd.io/etcd/etcdctl/v3
  one_bin coredns "$HERE/modules/coredns" "$COREDNS_BIN" "-s -w" "" coredns=github.com/coredns/coredns
  one_bin pause "$HERE" "$PAUSE_BIN" "-s -w -X main.version=$PAUSE_VERSION" "$HERE/pause/main.go" pause=./pause
  one_bin kind "$HERE/modules/kind" "$KIND_BIN" "-s -w" "" kind=sigs.k8s.io/kind
  one_bin crictl "$HERE/modules/cri-tools" "$CRICTL_BIN" "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" "" \
    crictl=sigs.k8s.io/cri-tools/cmd/crictl
  one_bin local-path-provisioner "$HERE/modules/local-path-provisioner" "$LPP_BIN" "-s -w -X main.VERSION=$LPP_VERSION" "" \
    local-path-provisioner=github.com/rancher/local-path-provisioner
  "$K8S_BIN/kubelet" --version | grep -qx "Kubernetes $K8S_VERSION" || die "kubelet is not stamped $K8S_VERSION"
}

case ${1:-all} in
  bins) build_bins ;;
  images) build_bins; source "$HERE/images.sh"; build_images ;;
  node-image|all) build_bins; source "$HERE/images.sh"; build_images; source "$HERE/node-image.sh"; build_node_image ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
