#!/usr/bin/env bash
# Install the Debian packages pycni's build, tests and demo need (idempotent; quick when present).
#   containernetworking-plugins  the reference Go plugins (differential and interop tests, loopback/portmap)
#   (Go is not a Debian package here: cnitool, our libcni driver and the current reference plugins are
#    built by `make build` from integration/cni/go.mod with the Go in /usr/local/go)
#   iproute2, util-linux          network namespaces, nsenter
#   nftables, iptables            masquerade backends
#   iputils-ping                  connectivity checks
#   containerd, runc, podman, conmon
#                                 integration/runtimes: real runtimes drive pycni (containerd's CRI plugin,
#                                 podman's CNI backend); busybox-static is also their sandbox image / rootfs
#   busybox-static                the python-less, glibc-less node rootfs of the bundle test
#   docker.io                     integration/kindlab: dockerd (started by the harness inside a node
#                                 namespace, never as a service) runs the kind-style node containers
#   python3, python3-venv         Debian's own interpreter: `make venv/install/bundle PYTHON=/usr/bin/python3`
#                                 (CI builds and tests a bundle from it: make test-portable)
#   gcc, libc6-dev, binutils      the native shim that make install and make bundle install (gcc -static:
#                                 libc6-dev's libc.a; readelf checks it is static), `strip` for the bundle;
#                                 libc-bin (ldd) is essential already
#   openssl                       the node agent tests' fake API server certificate
#   git                           version stamps (bundle BUILDINFO)
#   socat                         make cluster-up: the kind API server's port, from the host's loopback into
#                                 that namespace
set -euo pipefail
PKGS=(make ca-certificates python3 python3-venv containernetworking-plugins
      iproute2 util-linux nftables iptables iputils-ping procps gcc libc6-dev binutils openssl git
      busybox-static containerd runc podman conmon docker.io socat)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${missing[*]} (run as root to install them)" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null || echo "apt-get update failed; using the cached package lists" >&2
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
