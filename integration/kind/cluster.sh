#!/usr/bin/env bash
# A kind cluster whose pod network is pycni, installed the way a user installs it (kubectl apply).
#
#   cluster.sh up      create the cluster (1 control plane + 2 workers, kindnet off: kind-config.yaml), build the
#                      pycni image from build/bundle (`make bundle`) and the test image, `kind load` both, apply
#                      pycni-daemonset.yaml, wait until every node and CoreDNS are Ready; write build/kubeconfig
#                      and build/cluster.env
#   cluster.sh down    delete the cluster and everything `up` started (also after a failed or killed `up`)
#   cluster.sh status  exit 0 when the cluster answers
#
# Two modes (PYCNI_KIND_MODE):
#   offline  (default; our machines: no registry, no --privileged) - the docker daemon of
#            integration/harness/dockerd.sh (its own network namespace, instance PYCNI_DOCKER_NAME=kind), kind, kubectl
#            and the node image PYCNI_NODE_IMAGE built by integration/k8s (from source, offline), and
#            integration/kind/docker first on PATH: kind's `docker run --privileged` rewritten into what runs here.
#            The API server's port exists only in that namespace: a socat on the host's 127.0.0.1 (same port)
#            forwards into it, so build/kubeconfig works from the host.
#   registry (a normal machine with docker, kind and kubectl on PATH) - kind's own node image (or KIND_IMAGE),
#            the host's docker; nothing else differs.
# Env: CLUSTER_NAME (pycni), BUILD (build), PYCNI_AGENT_IMAGE (pycni/agent:dev), PYCNI_E2E_IMAGE (pycni/e2e:1),
#      KIND_CONFIG (kind-config.yaml), WAIT (seconds for each readiness wait, default 600).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../harness/cluster-paths.sh
. "$HERE/../harness/cluster-paths.sh"  # ROOT, BUILD (absolute), CLUSTER_NAME
MODE=${PYCNI_KIND_MODE:-offline}
AGENT_IMAGE=${PYCNI_AGENT_IMAGE:-pycni/agent:dev}
E2E_IMAGE=${PYCNI_E2E_IMAGE:-pycni/e2e:1}
KIND_CONFIG=${KIND_CONFIG:-$HERE/kind-config.yaml}
WAIT=${WAIT:-600}
K8S_DIR=${PYCNI_K8S_DIR:-$ROOT/integration/k8s}  # integration/k8s: versions, build.sh
STATE=$BUILD/cluster-$CLUSTER_NAME       # what `up` started (pids), for `down`
KUBECONFIG_OUT=$BUILD/kubeconfig
ENV_OUT=$BUILD/cluster.env
T0=$(date +%s)

say() { echo "[cluster $(($(date +%s) - T0))s] $*" >&2; }
die() { echo "cluster.sh: $*" >&2; exit 1; }

setup_tools() {
  if [ "$MODE" = offline ]; then
    # versions.env: K8S_VERSION, KIND_VERSION, NODE_IMAGE (integration/k8s owns them)
    # shellcheck source=../k8s/versions.env
    . "$K8S_DIR/versions.env"
    CACHE=${PYCNI_CACHE:-/var/cache/pycni}
    export PYCNI_DOCKER_NAME=${PYCNI_DOCKER_NAME:-kind}
    NODE_IMAGE=${PYCNI_NODE_IMAGE:-$NODE_IMAGE}
    export PATH="$HERE:$CACHE/kind/$KIND_VERSION/bin:$CACHE/k8s/$K8S_VERSION/bin:$PATH"
    DOCKERD="$ROOT/integration/harness/dockerd.sh"
  elif [ "$MODE" = registry ]; then
    NODE_IMAGE=${KIND_IMAGE:-}
  else
    die "PYCNI_KIND_MODE must be offline or registry, not $MODE"
  fi
}

need_tools() {
  local tool
  for tool in docker kind kubectl python3; do command -v "$tool" >/dev/null || die "$tool not found (PATH=$PATH)"; done
}

start_docker() {
  [ "$MODE" = offline ] || return 0
  bash "$ROOT/integration/deps.sh" >&2  # dockerd (docker.io), socat, busybox-static, nftables: quick when present
  eval "$(bash "$DOCKERD" start)"
  echo "$PYCNI_DOCKER_NAME" >"$STATE/dockerd"
}

ensure_node_image() {  # integration/k8s builds (once, cached) and docker-imports the node image; quick when done
  [ "$MODE" = offline ] || return 0
  say "integration/k8s/build.sh node-image (binaries, images and the node image $NODE_IMAGE; cached)"
  bash "$K8S_DIR/build.sh" node-image >&2
  docker image inspect "$NODE_IMAGE" >/dev/null 2>&1 || die "no node image $NODE_IMAGE after integration/k8s/build.sh"
}

start_forwarder() {  # the host's 127.0.0.1:<kubeconfig port> -> the API server, inside dockerd's namespace
  [ "$MODE" = offline ] || return 0
  local server port ns cp_ip
  server=$(kubectl --kubeconfig "$KUBECONFIG_OUT" config view --minify -o jsonpath='{.clusters[0].cluster.server}')
  port=${server##*:}
  [[ $server == https://127.0.0.1:* && $port =~ ^[0-9]+$ ]] || die "unexpected API server address $server"
  # straight to the control plane's address on the kind network (not docker's published port: nothing depends
  # on how this dockerd publishes ports); the certificate names 127.0.0.1, which is what kubectl dials
  cp_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$CLUSTER_NAME-control-plane")
  [[ $cp_ip =~ ^[0-9.]+$ ]] || die "no address for $CLUSTER_NAME-control-plane: $cp_ip"
  ns=/var/run/netns/pycni-docker-$PYCNI_DOCKER_NAME
  command -v socat >/dev/null || die "socat not found (integration/deps.sh installs it)"
  setsid socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" \
    "SYSTEM:exec nsenter --net=$ns socat STDIO TCP\\:$cp_ip\\:6443" </dev/null >"$STATE/forwarder.log" 2>&1 &
  echo $! >"$STATE/forwarder.pid"
  local i
  for ((i = 0; i < 150; i++)); do
    kubectl --kubeconfig "$KUBECONFIG_OUT" get --raw /readyz >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "the API server does not answer through the forwarder 127.0.0.1:$port -> $cp_ip:6443"
}

load_images() {
  say "building $AGENT_IMAGE (from $BUILD/bundle) and $E2E_IMAGE"
  bash "$HERE/images.sh" agent "$AGENT_IMAGE" "$BUILD/bundle"
  bash "$HERE/images.sh" e2e "$E2E_IMAGE"
  kind load docker-image --name "$CLUSTER_NAME" "$AGENT_IMAGE" "$E2E_IMAGE" >&2
}

install_pycni() {
  local subnet
  subnet=$(awk '$1 == "podSubnet:" {print $2}' "$KIND_CONFIG")
  say "kubectl apply -f pycni-daemonset.yaml (image $AGENT_IMAGE, CLUSTER_CIDR $subnet)"
  sed -e "s#image: pycni/agent:dev#image: $AGENT_IMAGE#" -e "s#value: \"10.244.0.0/16\"#value: \"$subnet\"#" \
    "$HERE/pycni-daemonset.yaml" | kubectl apply -f - >&2
}

wait_ready() {
  say "waiting for the pycni DaemonSet, every node and CoreDNS (up to ${WAIT}s each)"
  kubectl -n kube-system rollout status daemonset/pycni-agent --timeout="${WAIT}s" >&2
  kubectl wait --for=condition=Ready nodes --all --timeout="${WAIT}s" >&2
  kubectl -n kube-system rollout status deployment/coredns --timeout="${WAIT}s" >&2
  kubectl get nodes -o wide >&2
}

write_env() {
  {
    echo "# pycni kind cluster $CLUSTER_NAME ($MODE): . $ENV_OUT"
    echo "export KUBECONFIG=$KUBECONFIG_OUT"
    if [ "$MODE" = offline ]; then
      echo "export DOCKER_HOST=$DOCKER_HOST"
      echo "export PATH=$HERE:$CACHE/kind/$KIND_VERSION/bin:$CACHE/k8s/$K8S_VERSION/bin:\$PATH"
    fi
  } >"$ENV_OUT"
}

up() {
  setup_tools
  [ -f "$BUILD/bundle/pycni" ] || die "no bundle in $BUILD/bundle (make bundle)"
  if [ -d "$STATE" ]; then say "a previous cluster $CLUSTER_NAME is recorded: removing it first"; down; fi
  mkdir -p "$STATE"
  start_docker
  ensure_node_image
  need_tools
  kind delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
  say "kind create cluster --name $CLUSTER_NAME ${NODE_IMAGE:+--image $NODE_IMAGE}"
  kind create cluster --name "$CLUSTER_NAME" ${NODE_IMAGE:+--image "$NODE_IMAGE"} --config "$KIND_CONFIG" \
    --kubeconfig "$KUBECONFIG_OUT" --wait 0s --retain >&2
  export KUBECONFIG=$KUBECONFIG_OUT
  start_forwarder
  load_images
  install_pycni
  wait_ready
  write_env
  say "cluster $CLUSTER_NAME is up; its nodes are the docker containers $(kind get nodes --name "$CLUSTER_NAME" | tr '\n' ' ')"
  cat >&2 <<EOF

  . $ENV_OUT          # KUBECONFIG${DOCKER_HOST:+, DOCKER_HOST} and PATH (kubectl, kind, docker wrapper)
  kubectl get nodes -o wide
  docker exec -it $CLUSTER_NAME-worker bash     # a node
  make cluster-down                               # delete it
EOF
}

down() {
  setup_tools
  if [ "$MODE" = offline ]; then
    if bash "$DOCKERD" status && command -v kind >/dev/null; then
      eval "$(bash "$DOCKERD" env)"
      kind delete cluster --name "$CLUSTER_NAME" >&2 || true
    fi
    if [ -f "$STATE/forwarder.pid" ]; then
      pid=$(cat "$STATE/forwarder.pid")
      # ours only: the recorded PID, if it is still a socat
      if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = socat ]; then kill -TERM "$pid" 2>/dev/null || true; fi
    fi
    if [ -f "$STATE/dockerd" ]; then bash "$DOCKERD" stop; fi
  else
    kind delete cluster --name "$CLUSTER_NAME" >&2 || true
  fi
  rm -rf "$STATE" "$ENV_OUT" "$KUBECONFIG_OUT"
  say "cluster $CLUSTER_NAME deleted"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) setup_tools; need_tools; KUBECONFIG=$KUBECONFIG_OUT kubectl get --raw /readyz >/dev/null ;;
  *) sed -n '2,22p' "$0" >&2; exit 2 ;;
esac
