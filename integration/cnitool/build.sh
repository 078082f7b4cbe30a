#!/usr/bin/env bash
# Build pycni-cnitool (integration/cnitool/main.go) against Debian's libcni.
#
# Requires only the Debian packages golang-go and golang-github-appc-cni-dev
# (libcni source in /usr/share/gocode); no network access, no Go modules.
# Output: ${OUT:-build/bin}/pycni-cnitool, relative to the repository root.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
cd "${root}"

out="${OUT:-build/bin}"
mkdir -p "${out}" build/gopath build/gocache
out="$(cd "${out}" && pwd)"

# GOPATH mode: a scratch workspace first (anything Go would write goes there),
# then Debian's gocode tree, which provides github.com/containernetworking/cni.
export GO111MODULE=off
export GOPATH="${root}/build/gopath:/usr/share/gocode"
export GOCACHE="${root}/build/gocache"
export CGO_ENABLED=0

cd "${here}"
go build -o "${out}/pycni-cnitool" .
echo "built ${out}/pycni-cnitool"
