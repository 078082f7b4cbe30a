# Sourced by build.sh: the Debian root filesystem (debootstrap) and the control-plane images, built offline with
# `docker import` of root filesystems we assemble (no base image, no registry), saved as docker-archive tarballs
# that both `docker load` and `ctr -n k8s.io images import` read.
#
# Image layouts follow what the manifests that run them invoke:
#   kube-apiserver, kube-controller-manager, kube-scheduler  /usr/local/bin/<name>  (kubeadm's static pods: `command: [<name>, ...]`)
#   kube-proxy      /usr/local/bin/kube-proxy + iptables/ip6tables (nft and legacy), nft, conntrack, ipset, and an
#                   iptables wrapper that picks the mode the node uses (kubeadm's DaemonSet: `/usr/local/bin/kube-proxy`)
#   etcd            /usr/local/bin/{etcd,etcdctl}  (kubeadm's static pod: `command: [etcd, ...]`)
#   coredns         /coredns, ENTRYPOINT ["/coredns"]  (kubeadm's Deployment passes only args)
#   pause           /pause, ENTRYPOINT ["/pause"]  (the CRI sandbox image)
#   local-path-provisioner + helper: what kind's default storage manifest runs (names and tags are kind's)

IMAGES_DIR=$CACHE/images
DEBIAN_DIR=$CACHE/debian/$DEBIAN_SUITE
# The node's packages: what kind's base image installs (images/base/Dockerfile) from Debian, except nfs-common,
# open-iscsi (network storage) and fuse-overlayfs (rootless): not needed here; plus dbus (systemd's bus for the
# kubelet's and runc's systemd cgroup driver), containerd + runc (Debian 12's 1.6.20 / 1.1.5 instead of kind's
# own builds), ipset, socat, the reference CNI plugins (host-local, loopback, ptp, portmap are copied to
# /opt/cni/bin as kind does; bridge is not), and ping for debugging.
DEBIAN_PKGS=systemd,systemd-sysv,dbus,containerd,runc,conntrack,iptables,nftables,ipset,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,bash,ca-certificates,curl,jq,procps,socat,containernetworking-plugins,iputils-ping

ensure_debootstrap() {
  command -v debootstrap >/dev/null && return 0
  log "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null \
    || { apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null; }
}

run_debootstrap() {
  debootstrap --variant=minbase --include="$DEBIAN_PKGS" --cache-dir="$DEBIAN_DIR/debs" \
    "$DEBIAN_SUITE" "$1/rootfs" "$DEBIAN_MIRROR" >"$1/debootstrap.log" 2>&1
}

# debian_rootfs: prints the path of the cached rootfs tarball (debootstrap'd once per package list)
debian_rootfs() {
  local key dir
  key=$(hash_of "$DEBIAN_SUITE" "$DEBIAN_MIRROR" "$DEBIAN_PKGS" minbase)
  dir=$DEBIAN_DIR/$key
  if [ -f "$dir/rootfs.tar" ] && [ -f "$dir/ca-certificates.crt" ]; then
    log "debian rootfs: cached in $dir"; echo "$dir/rootfs.tar"; return 0
  fi
  ensure_debootstrap
  local tmp="$dir.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp/rootfs" "$DEBIAN_DIR/debs"
  log "debian rootfs: debootstrap $DEBIAN_SUITE into $tmp"
  timed debootstrap run_debootstrap "$tmp" \
    || { tail -30 "$tmp/debootstrap.log" >&2; die "debootstrap failed (log $tmp/debootstrap.log)"; }
  chroot "$tmp/rootfs" apt-get clean
  rm -rf "$tmp/rootfs/var/lib/apt/lists/"* "$tmp/rootfs/var/log/"*.log
  chroot "$tmp/rootfs" dpkg-query -W -f '${Package} ${Version}\n' >"$tmp/packages.txt"
  cp "$tmp/rootfs/etc/ssl/certs/ca-certificates.crt" "$tmp/"  # for the images' base_files
  tar -C "$tmp/rootfs" --numeric-owner -cf "$tmp/rootfs.tar" .
  rm -rf --one-file-system "$tmp/rootfs"
  rm -rf "$dir"; mv "$tmp" "$dir"
  echo "$dir/rootfs.tar"
}

# extract_rootfs TAR DIR
extract_rootfs() { mkdir -p "$2"; tar -C "$2" --numeric-owner -xf "$1"; }

# base_files DIR: what every image needs besides its binaries (users, /tmp, nsswitch, CA bundle)
base_files() {
  local d=$1
  mkdir -p "$d/etc/ssl/certs" "$d/tmp" "$d/var/run" "$d/root" "$d/usr/local/bin"
  chmod 1777 "$d/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$d/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$d/etc/group"
  echo 'hosts: files dns' >"$d/etc/nsswitch.conf"
  cp "$(dirname "$ROOTFS_TAR")/ca-certificates.crt" "$d/etc/ssl/certs/"
}

# slice ROOT DEST PATH...: copy PATHs (files, symlinks, directories) and the shared libraries they need from the
# Debian root ROOT into DEST, keeping Debian's merged-/usr layout
slice() {
  local root=$1 dest=$2 p lib; shift 2
  local l; for l in bin sbin lib lib64; do mkdir -p "$dest/usr/$l"; [ -e "$dest/$l" ] || ln -s "usr/$l" "$dest/$l"; done
  for p in "$@"; do
    mkdir -p "$dest/$(dirname "$p")"
    cp -a "$root$p" "$dest/$(dirname "$p")/"
    # the shared libraries of the file, or of every regular file in the directory (xtables' match modules
    # dlopen()ed by iptables-restore need libm: kube-proxy's `statistic` match)
    local f files=()
    if [ -f "$root$p" ] && [ ! -L "$root$p" ]; then files=("$p")
    elif [ -d "$root$p" ] && [ ! -L "$root$p" ]; then mapfile -t files < <(cd "$root" && find ".$p" -type f | sed 's/^\.//'); fi
    for f in "${files[@]}"; do
      for lib in $(chroot "$root" ldd "$f" 2>/dev/null | grep -oE '/[^ ]+\.so[^ ]*' | sort -u); do
        [ -e "$dest$lib" ] && continue
        mkdir -p "$dest/$(dirname "$lib")"
        cp -L "$root$lib" "$dest$lib"
      done
    done
  done
}

# image_tar NAME TAG: the cached tarball path of an image
image_tar() { echo "$IMAGES_DIR/$(echo "$1" | tr '/:' '__')_$2.tar"; }

# make_image REF KEY "BUILDER {} ARGS" CHANGES...: unless the tarball for KEY exists, run BUILDER with {} replaced
# by a fresh directory, docker import that as REF (labelled with KEY) and save the tarball; then make sure the
# current docker daemon has REF with KEY
make_image() {
  local ref=$1 key=$2 builder=$3; shift 3
  local tar; tar=$(image_tar "${ref%:*}" "${ref##*:}")
  local chg=(-c "LABEL pycni.key=$key") c; for c in "$@"; do chg+=(-c "$c"); done
  if [ "$(cat "$tar.key" 2>/dev/null)" = "$key" ] && [ -f "$tar" ]; then
    log "image $ref: cached in $tar"
    [ "$(docker image inspect -f '{{index .Config.Labels "pycni.key"}}' "$ref" 2>/dev/null)" = "$key" ] \
      || docker load -i "$tar" >/dev/null
    return 0
  fi
  local root; root=$(mktemp -d "$CACHE"/tmp.image.XXXXXX)
  ${builder//\{\}/$root}
  mkdir -p "$IMAGES_DIR"
  tar -C "$root" --numeric-owner -c . | docker import "${chg[@]}" - "$ref" >/dev/null
  rm -rf --one-file-system "$root"
  docker save -o "$tar.tmp" "$ref"
  mv "$tar.tmp" "$tar"; echo "$key" >"$tar.key"
  log "image $ref: built, $(du -h "$tar" | cut -f1) in $tar"
}

require_docker() {
  [ -n "${DOCKER_HOST:-}" ] || die 'DOCKER_HOST is not set: eval "$(integration/harness/dockerd.sh start)" first'
  docker version >/dev/null 2>&1 || die "no docker daemon answers at $DOCKER_HOST"
}

# The iptables mode selection of kube-proxy's image (the job of kubernetes-sigs/iptables-wrappers upstream),
# written here: the first call picks the backend whose rules the node already uses (the kubelet's
# KUBE-IPTABLES-HINT chain first, else whichever has more rules), points the iptables/ip6tables commands at it
# and re-executes itself.
IPTABLES_WRAPPER='#!/bin/sh
# pycni kube-proxy image: choose iptables-legacy or iptables-nft like the node does, once.
count() { n=0; while read -r line; do case $line in -*) n=$((n + 1));; esac; done; echo $n; }
hint() { "$1" -t mangle -S KUBE-IPTABLES-HINT >/dev/null 2>&1; }
if hint iptables-nft; then mode=nft
elif hint iptables-legacy; then mode=legacy
else
  legacy=$( (iptables-legacy-save; ip6tables-legacy-save) 2>/dev/null | count)
  nft=$( (iptables-nft-save; ip6tables-nft-save) 2>/dev/null | count)
  if [ "$legacy" -gt "$nft" ]; then mode=legacy; else mode=nft; fi
fi
for cmd in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  ln -sf "xtables-$mode-multi" "/usr/sbin/$cmd"
done
exec "/usr/sbin/${0##*/}" "$@"
'

# Root filesystem builders: root_<kind> DIR [ARG]. Called only for an image whose tarball is missing or stale.
root_binary() {  # root_binary DIR BINARY...: the binaries in /usr/local/bin
  local d=$1; shift
  base_files "$d"; cp "$@" "$d/usr/local/bin/"
}

root_kube_proxy() {
  local r=$1 v
  base_files "$r"
  need_debian_root
  slice "$ROOTFS_DIR" "$r" /bin/sh /usr/bin/dash /usr/bin/ln \
    /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi /usr/lib/x86_64-linux-gnu/xtables \
    /usr/sbin/nft /usr/sbin/conntrack /usr/sbin/ipset
  for v in iptables-nft iptables-nft-save iptables-nft-restore ip6tables-nft ip6tables-nft-save ip6tables-nft-restore; do
    ln -sf xtables-nft-multi "$r/usr/sbin/$v"; done
  for v in iptables-legacy iptables-legacy-save iptables-legacy-restore ip6tables-legacy ip6tables-legacy-save \
    ip6tables-legacy-restore; do ln -sf xtables-legacy-multi "$r/usr/sbin/$v"; done
  printf '%s' "$IPTABLES_WRAPPER" >"$r/usr/sbin/iptables-wrapper"; chmod 0755 "$r/usr/sbin/iptables-wrapper"
  for v in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf iptables-wrapper "$r/usr/sbin/$v"; done
  cp "$K8S_BIN/kube-proxy" "$r/usr/local/bin/"
}

root_coredns() { base_files "$1"; cp "$COREDNS_BIN/coredns" "$1/coredns"; }
root_pause() { mkdir -p "$1"; cp "$PAUSE_BIN/pause" "$1/pause"; }
root_lpp_helper() { base_files "$1"; need_debian_root; slice "$ROOTFS_DIR" "$1" /bin/sh /usr/bin/dash /usr/bin/mkdir /usr/bin/rm; }

# need_debian_root: extract the Debian root filesystem into $ROOTFS_DIR, once per run and only when an image needs
# a slice of it
need_debian_root() {
  [ -n "${ROOTFS_DIR:-}" ] && return 0
  ROOTFS_DIR=$(mktemp -d "$CACHE"/tmp.rootfs.XXXXXX)
  extract_rootfs "$ROOTFS_TAR" "$ROOTFS_DIR"
}

build_images() {
  require_docker
  local t0; t0=$(date +%s)
  ROOTFS_TAR=$(debian_rootfs) ROOTFS_DIR=
  trap 'rm -rf --one-file-system "${ROOTFS_DIR:-}"' EXIT
  local self; self=$(hash_of "@$HERE/images.sh" "$ROOTFS_TAR")
  local path_env="ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" c
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    make_image "registry.k8s.io/$c:$K8S_VERSION" "$(hash_of "$self" "@$K8S_BIN/.stamp" "$c")" \
      "root_binary {} $K8S_BIN/$c" "$path_env" "ENTRYPOINT [\"/usr/local/bin/$c\"]"
  done
  make_image "registry.k8s.io/kube-proxy:$K8S_VERSION" "$(hash_of "$self" "@$K8S_BIN/.stamp" kube-proxy)" \
    "root_kube_proxy {}" "$path_env" 'ENTRYPOINT ["/usr/local/bin/kube-proxy"]'
  make_image "registry.k8s.io/etcd:$ETCD_IMAGE_TAG" "$(hash_of "$self" "@$ETCD_BIN/.stamp")" \
    "root_binary {} $ETCD_BIN/etcd $ETCD_BIN/etcdctl" "$path_env" 'ENTRYPOINT ["/usr/local/bin/etcd"]'
  make_image "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" "$(hash_of "$self" "@$COREDNS_BIN/.stamp")" \
    "root_coredns {}" "$path_env" 'ENTRYPOINT ["/coredns"]' 'EXPOSE 53 53/udp'
  make_image "registry.k8s.io/pause:$PAUSE_VERSION" "$(hash_of "$self" "@$PAUSE_BIN/.stamp")" \
    "root_pause {}" 'ENTRYPOINT ["/pause"]' 'USER 65535:65535'
  # kind's default storage (kind v0.30.0 pkg/build/nodeimage/const_storage.go names these two images)
  make_image "$LPP_IMAGE" "$(hash_of "$self" "@$LPP_BIN/.stamp")" \
    "root_binary {} $LPP_BIN/local-path-provisioner" "$path_env" 'ENTRYPOINT ["/usr/local/bin/local-path-provisioner"]'
  make_image "$LPP_HELPER_IMAGE" "$(hash_of "$self" helper)" "root_lpp_helper {}" "$path_env"
  rm -rf --one-file-system "$ROOTFS_DIR"; ROOTFS_DIR=
  log "images: done in $(( $(date +%s) - t0 )) s"
}

LPP_IMAGE=docker.io/kindest/local-path-provisioner:v20250214-acbabc1a
LPP_HELPER_IMAGE=docker.io/kindest/local-path-helper:v20241212-8ac705d0
# every image the node preloads (kubeadm config images list for v1.34.4, plus kind's storage images)
node_images() {
  local i
  for i in "kube-apiserver:$K8S_VERSION" "kube-controller-manager:$K8S_VERSION" "kube-scheduler:$K8S_VERSION" \
    "kube-proxy:$K8S_VERSION" "etcd:$ETCD_IMAGE_TAG" "coredns/coredns:$COREDNS_VERSION" "pause:$PAUSE_VERSION"; do
    echo "registry.k8s.io/$i"
  done
  echo "$LPP_IMAGE"; echo "$LPP_HELPER_IMAGE"
}
