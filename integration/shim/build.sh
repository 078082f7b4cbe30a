#!/usr/bin/env bash
# Build the native shim (src/pycni/daemon/shim.c) - the exec'd `pycni` / `pycni-host-local` that `make
# install`, the bundle and the kind DaemonSet install - statically linked, so it runs on any x86_64 Linux
# node whatever its libc (the bundle test's busybox node has none).
#
#   build.sh OUT PYTHON               for an installation: the shim's standalone fallback execs PYTHON
#                                     (an absolute path, e.g. $(PYCNI_HOME)/bin/python)
#   build.sh OUT PYTHON BUNDLE_EXE    for the bundle: it execs pycni.d/bin/BUNDLE_EXE (e.g. python3.11) next
#                                     to itself through pycni.d/lib's loader (BUNDLE_DIR, BUNDLE_LOADER: env)
#
# PYTHON's pycni writes the protocol header (python -m pycni.daemon.wire --c-header: the one definition
# of the daemon's wire protocol, pycni.__version__ included), so the shim always matches the Python it
# falls back to. Needs gcc, libc6-dev (libc.a) and binutils (integration/deps.sh). The build fails if the
# result is not static (it has a PT_INTERP program header).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: build.sh OUT PYTHON [BUNDLE_EXE]" >&2; exit 2; }
OUT=$1 PY=$2 BUNDLE_EXE=${3:-}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CC=${CC:-cc}
die() { echo "shim: $*" >&2; exit 1; }
command -v "$CC" >/dev/null || die "no C compiler ($CC): install gcc and libc6-dev (make deps)"
GEN=$(mktemp -d)
trap 'rm -rf "$GEN"' EXIT
"$PY" -I -m pycni.daemon.wire --c-header > "$GEN/wire.h" || die "$PY cannot write the protocol header"
if [ -n "$BUNDLE_EXE" ]; then
  where=(-DPYCNI_BUNDLE_PYTHON="\"$BUNDLE_EXE\"" -DPYCNI_BUNDLE_DIR="\"${BUNDLE_DIR:-pycni.d}\""
         -DPYCNI_BUNDLE_LOADER="\"${BUNDLE_LOADER:-ld-linux-x86-64.so.2}\"")
else
  case $PY in /*) ;; *) die "PYTHON must be an absolute path (the shim execs it): $PY" ;; esac
  where=(-DPYCNI_PYTHON="\"$PY\"")
fi
mkdir -p "$(dirname "$OUT")"
"$CC" -static -O2 -Wall -Wextra -Werror -I"$GEN" "${where[@]}" -o "$OUT.tmp" "$ROOT/src/pycni/daemon/shim.c" \
  || die "compiling shim.c failed (static linking needs libc6-dev)"
if LC_ALL=C readelf -lW "$OUT.tmp" | grep -q 'INTERP'; then die "$OUT is not statically linked"; fi
strip "$OUT.tmp" 2>/dev/null || true
mv "$OUT.tmp" "$OUT"
