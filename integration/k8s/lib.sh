# Helpers shared by integration/k8s/build.sh and integration/e2e/build.sh (sourced; the caller defines `log` and
# CACHE, the build cache outside the clone).

# hash_of WORDS... @FILES...: a stable key over strings and file contents (files given as @path: their contents
# only, not their paths, so every clone shares the cache)
hash_of() {
  local a
  for a in "$@"; do
    if [[ $a == @* ]]; then sha256sum <"${a#@}"; else echo "$a"; fi
  done | sha256sum | cut -c1-16
}

# timed NAME CMD...: run CMD, report its wall time and append it to $CACHE/build-times.log
timed() {
  local name=$1 t0; shift
  t0=$(date +%s)
  "$@"
  log "$name: built in $(($(date +%s) - t0)) s"
  mkdir -p "$CACHE"; echo "$(date -u +%FT%TZ) $name $(($(date +%s) - t0))s" >>"$CACHE/build-times.log"
}

# k8s_ldflags VERSION: the linker flags of every Kubernetes binary we build (the cluster's and e2e.test alike):
# stripped, and stamped with VERSION - unstamped binaries call themselves v0.0.0, and kubeadm's and the e2e
# suite's version checks read these variables.
k8s_ldflags() {
  local minor=${1#v1.} v flags="-s -w"
  minor=${minor%%.*}
  for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $v.gitVersion=$1 -X $v.gitMajor=1 -X $v.gitMinor=$minor"
  done
  echo "$flags -X k8s.io/component-base/version.gitTreeState=clean"
}
