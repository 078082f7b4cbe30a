#!/usr/bin/env bash
# Build, from the Go modules pinned in this directory's go.mod / go.sum (nothing vendored, nothing
# from Debian):
#   build/bin/cnitool        upstream cnitool (github.com/containernetworking/cni)
#   build/bin/pycni-cnitool  our libcni driver, for what cnitool cannot do (pycni-cnitool/main.go)
#   build/ref/               the reference plugins of github.com/containernetworking/plugins: bridge,
#                            host-local, portmap, bandwidth, firewall, tuning, loopback
# The binaries are cached outside the clone in /var/cache/pycni/cni-<key> (key: this directory's
# inputs), so CI and the next clone reuse them. Without a filled module cache this downloads the
# modules once (`make build`, never during the tests). Go: /usr/local/go/bin first on PATH.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
export PATH="/usr/local/go/bin:${PATH}"
command -v go >/dev/null || { echo "build.sh: no Go toolchain (expected /usr/local/go/bin/go)" >&2; exit 1; }
export CGO_ENABLED=0 GOFLAGS=-mod=readonly
out="${root}/${BUILD:-build}"

plugins_version="$(cd "${here}" && go list -m -f '{{.Version}}' github.com/containernetworking/plugins)"
cni_version="$(cd "${here}" && go list -m -f '{{.Version}}' github.com/containernetworking/cni)"
key="$(cat "${here}/go.mod" "${here}/go.sum" "${here}/build.sh" "${here}"/pycni-cnitool/*.go | sha256sum | cut -c1-16)"
cache="${PYCNI_CACHE:-/var/cache/pycni}/cni-${cni_version}-plugins-${plugins_version}-${key}"
PLUGINS=(main/bridge ipam/host-local meta/portmap meta/bandwidth meta/firewall meta/tuning main/loopback)

if [ ! -f "${cache}/done" ]; then
  mkdir -p "$(dirname "${cache}")"
  tmp="$(mktemp -d "${cache}.tmp.XXXXXX")"
  trap 'rm -rf "${tmp}"' EXIT
  mkdir -p "${tmp}/bin" "${tmp}/ref"
  cd "${here}"
  go version
  go build -trimpath -o "${tmp}/bin/cnitool" github.com/containernetworking/cni/cnitool
  go build -trimpath -o "${tmp}/bin/pycni-cnitool" ./pycni-cnitool
  pkgs=()
  for p in "${PLUGINS[@]}"; do pkgs+=("github.com/containernetworking/plugins/plugins/${p}"); done
  go build -trimpath -o "${tmp}/ref/" \
    -ldflags "-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=${plugins_version}" "${pkgs[@]}"
  echo "${plugins_version}" > "${tmp}/ref/VERSION"
  echo "${cni_version}" > "${tmp}/bin/CNITOOL_VERSION"
  touch "${tmp}/done"
  rm -rf "${cache}" && mv "${tmp}" "${cache}"
  trap - EXIT
fi
mkdir -p "${out}/bin" "${out}/ref"
for f in cnitool pycni-cnitool; do install -m 0755 "${cache}/bin/${f}" "${out}/bin/${f}"; done
for p in "${PLUGINS[@]}"; do install -m 0755 "${cache}/ref/${p#*/}" "${out}/ref/${p#*/}"; done
install -m 0644 "${cache}/ref/VERSION" "${out}/ref/VERSION"
echo "built ${out}/bin/cnitool (cni ${cni_version}), ${out}/bin/pycni-cnitool, ${out}/ref (plugins ${plugins_version})"
