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
# The root filesystems, the ldd closures and the import are integration/harness/images.py's (shared with the
# runtime and docker-node suites).
#
# DOCKER_HOST selects the engine. Needs: docker, busybox-static, nftables (integration/deps.sh).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUSYBOX=/bin/busybox

die() { echo "images.sh: $*" >&2; exit 1; }

IMAGES=(python3 -I "$ROOT/integration/harness/images.py")  # the harness's image builder (stdlib only)

import() {  # import ROOT TAG CHANGE...: tar -C ROOT -c . | docker import -c CHANGE... - TAG
  "${IMAGES[@]}" docker-import "$@"
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
    "${IMAGES[@]}" rootfs "$r"
    "${IMAGES[@]}" add-binary "$r" "$(command -v nft)"
    cp -a "$bundle" "$r/bundle"
    [ -z "$revision" ] || echo "$revision" >"$r/bundle/pycni.d/REVISION"
    install -m 0755 "$HERE/entrypoint.sh" "$r/entrypoint.sh"
    import "$r" "$tag" 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      'ENTRYPOINT ["/entrypoint.sh"]'
    ;;
  e2e)
    tag=${2:?tag}
    "${IMAGES[@]}" rootfs "$tmp/root"
    import "$tmp/root" "$tag" 'ENV PATH=/bin' 'CMD ["sh"]'
    ;;
  *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
