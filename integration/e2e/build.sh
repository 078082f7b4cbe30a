#!/usr/bin/env bash
# Kubernetes' own e2e suite for pycni, built here: the `e2e.test` binary and every image the selected tests run.
#
#   build.sh [all|bins|rootfs|images]   (all = images, which needs bins and rootfs)
#
# bins    e2e.test = `go test -c k8s.io/kubernetes/test/e2e` and agnhost = k8s.io/kubernetes/test/images/agnhost, from
#         the Kubernetes version integration/k8s/go.mod pins (same module, same -trimpath/CGO_ENABLED=0 and the same
#         version stamping as the cluster's binaries: the suite checks the server's version against its own)
# images  one docker-archive tarball with the test images under the exact names and tags the suite asks for
#         (test/utils/image/manifest.go of that version; tags are read from it, not typed here):
#           registry.k8s.io/e2e-test-images/agnhost:<tag>          /agnhost (ours) on the Debian test root
#           registry.k8s.io/e2e-test-images/jessie-dnsutils:<tag>  the Debian test root (dig, sh)
#           registry.k8s.io/e2e-test-images/nginx:<tag>            Debian's nginx on the Debian test root
#           registry.k8s.io/e2e-test-images/busybox:<tag>          Debian's busybox-static
#         The Debian test root (debootstrap, bookworm minbase + what the tests exec in their containers: sh, bash,
#         curl, nc, dig, ip/ss, ping, ps, nginx) is one layer shared by three images: stored once per node.
#
# Outputs, outside the clone, keyed by version and by the hash of their inputs (a rerun with the same inputs
# builds nothing): $PYCNI_CACHE (default /var/cache/pycni)/e2e/<k8s version>/
#   bin/e2e.test bin/agnhost bin/.stamp      images/e2e-images.tar images/IMAGES images/.stamp
# Build times are appended to $PYCNI_CACHE/build-times.log.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MOD=$ROOT/integration/k8s
export PATH=/usr/local/go/bin:$PATH GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly
CACHE=${PYCNI_CACHE:-/var/cache/pycni}
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TEST_PKGS=bash,curl,netcat-openbsd,bind9-dnsutils,iproute2,iputils-ping,procps,ca-certificates,nginx-light

log() { echo "[e2e/build] $*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=../k8s/lib.sh
source "$MOD/lib.sh"   # hash_of, timed, k8s_ldflags

command -v go >/dev/null || die "no go on PATH"
K8S_VERSION=$(cd "$MOD" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
KDIR=$(cd "$MOD" && go mod download -json k8s.io/kubernetes | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
[ -d "$KDIR/test/e2e" ] || die "k8s.io/kubernetes $K8S_VERSION is not in the module cache ($KDIR)"
OUT=$CACHE/e2e/$K8S_VERSION
BIN=$OUT/bin
IMG=$OUT/images

# image_tag NAME: the tag test/utils/image/manifest.go gives registry.k8s.io/e2e-test-images/NAME
image_tag() {
  local t
  t=$(sed -n "s/.*Config{list.PromoterE2eRegistry, \"$1\", \"\([^\"]*\)\"}.*/\1/p" "$KDIR/test/utils/image/manifest.go" | head -1)
  [ -n "$t" ] || die "no image $1 in $KDIR/test/utils/image/manifest.go"
  echo "$t"
}
E2E_REGISTRY=registry.k8s.io/e2e-test-images

build_bins() {
  local ld; ld=$(k8s_ldflags "$K8S_VERSION")
  local key; key=$(hash_of "$(go version)" "$ld" "@$MOD/go.mod" "@$MOD/go.sum" e2e.test agnhost)
  if [ "$(cat "$BIN/.stamp" 2>/dev/null)" = "$key" ]; then log "e2e.test, agnhost: cached in $BIN"; return 0; fi
  local tmp=$BIN.tmp.$$
  rm -rf "$tmp"; mkdir -p "$tmp"
  log "e2e.test: go test -c k8s.io/kubernetes/test/e2e ($K8S_VERSION) into $BIN"
  (cd "$MOD" && timed e2e.test go test -c -trimpath -ldflags "$ld" -o "$tmp/e2e.test" k8s.io/kubernetes/test/e2e)
  (cd "$MOD" && timed agnhost go build -trimpath -ldflags "-s -w" -o "$tmp/agnhost" k8s.io/kubernetes/test/images/agnhost)
  "$tmp/e2e.test" --help 2>&1 | grep -q -- "-kubeconfig" || die "e2e.test does not run"
  echo "$key" >"$tmp/.stamp"
  rm -rf "$BIN"; mv "$tmp" "$BIN"
}

# The Debian test root, debootstrap'd once per package list (the .debs are cached too)
test_rootfs() {
  local key dir; key=$(hash_of "$DEBIAN_SUITE" "$DEBIAN_MIRROR" "$TEST_PKGS" minbase)
  dir=$CACHE/e2e/debian/$key
  if [ -f "$dir/rootfs.tar" ]; then echo "$dir/rootfs.tar"; return 0; fi
  command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    debootstrap >/dev/null || die "cannot install debootstrap"
  local tmp=$dir.tmp.$$
  rm -rf "$tmp"; mkdir -p "$tmp/rootfs" "$CACHE/e2e/debian/debs"
  log "test root: debootstrap $DEBIAN_SUITE + $TEST_PKGS"
  timed e2e-test-rootfs debootstrap --variant=minbase --include="$TEST_PKGS" --cache-dir="$CACHE/e2e/debian/debs" \
    "$DEBIAN_SUITE" "$tmp/rootfs" "$DEBIAN_MIRROR" >"$tmp/debootstrap.log" 2>&1 \
    || { tail -20 "$tmp/debootstrap.log" >&2; die "debootstrap failed ($tmp/debootstrap.log)"; }
  chroot "$tmp/rootfs" apt-get clean
  rm -rf "$tmp/rootfs/var/lib/apt/lists/"* "$tmp/rootfs/var/cache/debconf/"*-old "$tmp/rootfs/var/log/"*.log
  chroot "$tmp/rootfs" dpkg-query -W -f '${Package} ${Version}\n' >"$tmp/packages.txt"
  tar -C "$tmp/rootfs" --numeric-owner -cf "$tmp/rootfs.tar" .
  rm -rf --one-file-system "$tmp/rootfs"
  rm -rf "$dir"; mv "$tmp" "$dir"
  echo "$dir/rootfs.tar"
}

build_images() {
  build_bins
  command -v busybox >/dev/null || die "busybox not found (integration/deps.sh installs busybox-static)"
  local rootfs; rootfs=$(test_rootfs)
  local agn_tag dns_tag ngx_tag bb_tag
  agn_tag=$(image_tag agnhost); dns_tag=$(image_tag jessie-dnsutils); ngx_tag=$(image_tag nginx); bb_tag=$(image_tag busybox)
  local coredns; coredns=$(ls "$CACHE"/coredns/*/bin/coredns 2>/dev/null | head -1 || true)
  local key; key=$(hash_of "@$HERE/build.sh" "@$HERE/mkimages.py" "@$BIN/.stamp" "$rootfs" "$(busybox | head -1)" \
    "$agn_tag $dns_tag $ngx_tag $bb_tag" "${coredns:+@$coredns}")
  if [ "$(cat "$IMG/.stamp" 2>/dev/null)" = "$key" ]; then log "images: cached in $IMG"; return 0; fi
  local t0; t0=$(date +%s)
  local tmp=$IMG.tmp.$$
  rm -rf "$tmp"; mkdir -p "$tmp/agnhost/uploads" "$tmp/agnhost/etc" "$tmp/busybox/bin" "$tmp/busybox/etc" "$tmp/busybox/tmp"
  # agnhost: what test/images/agnhost/Dockerfile adds to its base (the binary, agnhost-2, /uploads, porter's
  # certificate, the user and group some tests expect to find in the image; coredns when we have built one)
  cp "$BIN/agnhost" "$tmp/agnhost/agnhost"
  ln -s agnhost "$tmp/agnhost/agnhost-2"
  cp "$KDIR/test/images/agnhost/porter/localhost.crt" "$KDIR/test/images/agnhost/porter/localhost.key" "$tmp/agnhost/"
  chmod 0644 "$tmp/agnhost/localhost.crt" "$tmp/agnhost/localhost.key"
  [ -n "$coredns" ] && cp "$coredns" "$tmp/agnhost/coredns"
  tar -xf "$rootfs" -C "$tmp/agnhost" ./etc/passwd ./etc/group
  echo "user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh" >>"$tmp/agnhost/etc/passwd"
  printf 'user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n' >>"$tmp/agnhost/etc/group"
  chmod 1777 "$tmp/agnhost/uploads"
  tar -C "$tmp/agnhost" --numeric-owner --owner=0 --group=0 -cf "$tmp/agnhost.tar" .
  # busybox: Debian's busybox-static and its applets
  cp "$(command -v busybox)" "$tmp/busybox/bin/busybox"
  local a
  for a in $(busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$tmp/busybox/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n' >"$tmp/busybox/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$tmp/busybox/etc/group"
  chmod 1777 "$tmp/busybox/tmp"
  tar -C "$tmp/busybox" --numeric-owner --owner=0 --group=0 -cf "$tmp/busybox.tar" .
  cat >"$tmp/spec.json" <<EOF
[
 {"ref": "$E2E_REGISTRY/agnhost:$agn_tag", "layers": ["$rootfs", "$tmp/agnhost.tar"],
  "entrypoint": ["/agnhost"], "cmd": ["pause"],
  "exposed": {"80/tcp": {}, "8080/tcp": {}, "8081/tcp": {}, "9376/tcp": {}, "5000/tcp": {}}},
 {"ref": "$E2E_REGISTRY/jessie-dnsutils:$dns_tag", "layers": ["$rootfs"], "cmd": ["/bin/sh"]},
 {"ref": "$E2E_REGISTRY/nginx:$ngx_tag", "layers": ["$rootfs"], "cmd": ["nginx", "-g", "daemon off;"],
  "exposed": {"80/tcp": {}}},
 {"ref": "$E2E_REGISTRY/busybox:$bb_tag", "layers": ["$tmp/busybox.tar"], "cmd": ["sh"], "env": ["PATH=/bin"]}
]
EOF
  python3 "$HERE/mkimages.py" "$tmp/e2e-images.tar" "$tmp/spec.json"
  printf '%s\n' "$E2E_REGISTRY/agnhost:$agn_tag" "$E2E_REGISTRY/jessie-dnsutils:$dns_tag" \
    "$E2E_REGISTRY/nginx:$ngx_tag" "$E2E_REGISTRY/busybox:$bb_tag" >"$tmp/IMAGES"
  rm -rf --one-file-system "$tmp/agnhost" "$tmp/busybox" "$tmp/agnhost.tar" "$tmp/busybox.tar" "$tmp/spec.json"
  echo "$key" >"$tmp/.stamp"
  rm -rf "$IMG"; mv "$tmp" "$IMG"
  log "images: $(tr '\n' ' ' <"$IMG/IMAGES")- $(du -h "$IMG/e2e-images.tar" | cut -f1) in $IMG ($(($(date +%s) - t0)) s)"
  echo "$(date -u +%FT%TZ) e2e-images $(($(date +%s) - t0))s" >>"$CACHE/build-times.log"
}

case ${1:-all} in
  bins) build_bins ;;
  rootfs) test_rootfs ;;
  images|all) build_images ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
