#!/usr/bin/env bash
# The two images the kind cluster needs from us, built from this machine's files with `docker import`
# (no registry, no base image, no Dockerfile builder):
#
#   images.sh agent TAG [BUNDLE_DIR] [REVISION]
#       the pycni DaemonSet image: the self-contained bundle (`make bundle` -> build/bundle: pycni,
#       pycni-host-local, pycni.d/ with its own CPython and glibc) in /bundle, entrypoint.sh, nft (the
#       agent's masquerade; with the shared libraries `ldd` lists) and busybox-static for a shell.
#       REVISION, when given, is written to /bundle/pycni.d/REVISION: a bundle with another content
#       digest, which the agent installs over the old one (the e2e rolling update uses it).
#   images.sh e2e TAG
#       the test pods' image: busybox-static only (httpd, nc, nslookup, ping).
#
# DOCKER_HOST selects the engine. Needs: docker, busybox-static, nftables (integration/deps.sh).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUSYBOX=/bin/busybox

die() { echo "images.sh: $*" >&2; exit 1; }

busybox_root() {  # busybox_root DIR: a root filesystem with busybox and every applet in /bin
  local r=$1 a
  mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,var/run,root}
  chmod 1777 "$r/tmp"
  cp "$BUSYBOX" "$r/bin/busybox"
  for a in $("$BUSYBOX" --list); do
    [ "$a" = busybox ] || [ -e "$r/bin/$a" ] || ln -s busybox "$r/bin/$a"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
}

add_binary() {  # add_binary ROOT PATH: the binary and its ldd closure at the same paths
  local r=$1 bin=$2 lib
  install -D -m 0755 "$(readlink -f "$bin")" "$r$bin"
  for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    [ -e "$r$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$r$lib"
  done
}

import() {  # import ROOT TAG CHANGE...
  local r=$1 tag=$2
  shift 2
  local args=() c
  for c in "$@"; do args+=(-c "$c"); done
  tar -C "$r" --numeric-owner -c . | docker import "${args[@]}" - "$tag" >/dev/null
  echo "images.sh: built $tag"
}

[ -x "$BUSYBOX" ] || die "$BUSYBOX missing (apt-get install busybox-static)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
case ${1:-} in
  agent)
    tag=${2:?tag}; bundle=${3:-$ROOT/build/bundle}; revision=${4:-}
    [ -x "$bundle/pycni" ] && [ -d "$bundle/pycni.d" ] || die "no bundle in $bundle (make bundle)"
    command -v nft >/dev/null || die "nft missing (apt-get install nftables)"
    r=$tmp/root
    busybox_root "$r"
    add_binary "$r" "$(command -v nft)"
    cp -a "$bundle" "$r/bundle"
    [ -z "$revision" ] || echo "$revision" >"$r/bundle/pycni.d/REVISION"
    install -m 0755 "$HERE/entrypoint.sh" "$r/entrypoint.sh"
    import "$r" "$tag" 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      'ENTRYPOINT ["/entrypoint.sh"]'
    ;;
  e2e)
    tag=${2:?tag}
    busybox_root "$tmp/root"
    import "$tmp/root" "$tag" 'ENV PATH=/bin' 'CMD ["sh"]'
    ;;
  *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
