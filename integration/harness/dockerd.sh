#!/usr/bin/env bash
# A dockerd of our own, confined to its own network namespace: the engine that builds the Kubernetes images
# (integration/k8s/build.sh), runs the kind node containers (make cluster-up) and the docker-node suite's nodes
# (integration/kindlab, through harness/dockerd.py: instance kl-<id>, data-root in its scratch dir).
#
#   dockerd.sh start [dockerd args...]   start it (idempotent), print `export DOCKER_HOST=...`
#   dockerd.sh env                       print `export DOCKER_HOST=...` (exit 1 when not running)
#   dockerd.sh status                    exit 0 when it answers
#   dockerd.sh stop                      stop it by its PID, remove its namespace, mounts, cgroups, run dir
#   dockerd.sh purge                     stop, then also delete its data-root (images, volumes)
#
# Instances are named by PYCNI_DOCKER_NAME (default "pycni"): two sessions on one machine use two names.
#   socket     /run/pycni-docker/<name>/docker.sock   (DOCKER_HOST=unix://...)
#   run dir    /run/pycni-docker/<name>/              (pidfile, exec-root, daemon.json, dockerd.log)
#   data-root  /var/lib/pycni-docker/<name>/          (PYCNI_DOCKER_DATA; kept across stop/start: `purge` drops it)
#   netns      pycni-docker-<name>                    (only lo + what docker creates in it)
#   cgroup     /pycni-docker-<name> under each controller (--cgroup-parent)
# Extra daemon.json keys (for example a runtime for privileged containers) come from PYCNI_DOCKERD_CONFIG, a JSON
# file merged over ours; extra dockerd flags follow `start`.
#
# Network safety: dockerd, its containerd, every container and every bridge/iptables rule it makes live in the
# namespace created here, which has no link to the outside: nothing it runs can reach eth0. The root namespace is
# never touched. Nothing is pulled from a registry: images come from `docker import`/`docker load` only.
set -euo pipefail

NAME=${PYCNI_DOCKER_NAME:-pycni}
[[ $NAME =~ ^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,30}$ ]] || { echo "bad PYCNI_DOCKER_NAME: $NAME" >&2; exit 2; }
RUN=/run/pycni-docker/$NAME
DATA=${PYCNI_DOCKER_DATA:-/var/lib/pycni-docker/$NAME}
NETNS=pycni-docker-$NAME
NSPATH=/var/run/netns/$NETNS
SOCK=$RUN/docker.sock
PIDFILE=$RUN/dockerd.pid
CGROUP=/pycni-docker-$NAME
# dockerd 20.10 writes these host paths whatever its roots: removed at stop if this instance created them, they
# are empty and no other dockerd runs.
HOST_LEFTOVERS=(/etc/docker/key.json /run/docker/plugins /run/docker /run/containerd/s /run/containerd)

log() { echo "[dockerd.sh $NAME] $*" >&2; }

dockerd_pid() {  # the PID from our pidfile, if that process is a dockerd
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = dockerd ] && echo "$pid"
}

answers() { DOCKER_HOST=unix://$SOCK timeout 20 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

print_env() { echo "export DOCKER_HOST=unix://$SOCK"; }

netns_pids() {  # every process in our namespace (all of them are ours)
  local want p
  want=$(stat -L -c %i "$NSPATH" 2>/dev/null) || return 0
  for p in /proc/[0-9]*; do
    [ "$(stat -L -c %i "$p/ns/net" 2>/dev/null)" = "$want" ] && echo "${p#/proc/}"
  done
  return 0
}

kill_wait() {  # kill_wait PID SECONDS: TERM, then KILL after SECONDS
  local pid=$1 t=$2 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < t * 10; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  log "pid $pid ignored SIGTERM for ${t}s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

umount_under() {  # lazily unmount everything mounted below $1, deepest first
  local mp
  awk -v p="$1/" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r mp; do
    umount -l "$mp" 2>/dev/null || true
  done
}

start() {
  if dockerd_pid >/dev/null && answers; then print_env; return 0; fi
  command -v dockerd >/dev/null || { log "dockerd not found: apt-get install docker.io (integration/deps.sh)"; exit 1; }
  if pid=$(dockerd_pid); then log "dockerd $pid is not answering: restarting it"; stop_daemon; fi
  mkdir -p "$RUN" "$DATA"
  : >"$RUN/created-host-paths"
  for p in "${HOST_LEFTOVERS[@]}"; do [ -e "$p" ] || echo "$p" >>"$RUN/created-host-paths"; done
  [ -e "$NSPATH" ] || ip netns add "$NETNS"
  nsenter --net="$NSPATH" ip link set lo up
  python3 - "$RUN/daemon.json" "${PYCNI_DOCKERD_CONFIG:-}" <<'EOF'
import json, sys
cfg = {"features": {"buildkit": False}, "registry-mirrors": [], "storage-driver": "overlay2"}
if sys.argv[2]:
    cfg.update(json.load(open(sys.argv[2])))
json.dump(cfg, open(sys.argv[1], "w"), indent=1)
EOF
  rm -f "$SOCK"
  # setsid: the daemon outlives this script and the make/CI step that called it; stopped by `stop` (PID).
  nsenter --net="$NSPATH" setsid dockerd --config-file "$RUN/daemon.json" \
    --data-root "$DATA" --exec-root "$RUN/exec" --pidfile "$PIDFILE" -H "unix://$SOCK" \
    --bip 10.250.0.1/24 --userland-proxy=false --cgroup-parent "$CGROUP" --log-level warn "$@" \
    </dev/null >>"$RUN/dockerd.log" 2>&1 &
  local i
  for ((i = 0; i < 600; i++)); do
    if answers; then print_env; log "up (pid $(dockerd_pid || echo ?), log $RUN/dockerd.log)"; return 0; fi
    kill -0 $! 2>/dev/null || { log "dockerd exited:"; tail -20 "$RUN/dockerd.log" >&2; exit 1; }
    sleep 0.1
  done
  log "dockerd not answering after 60s:"; tail -20 "$RUN/dockerd.log" >&2; exit 1
}

stop_daemon() {
  local pid
  if pid=$(dockerd_pid); then kill_wait "$pid" 60; fi
}

stop() {
  stop_daemon
  local p
  for p in $(netns_pids); do log "killing leftover pid $p ($(cat /proc/"$p"/comm 2>/dev/null))"; kill_wait "$p" 5; done
  [ -e "$NSPATH" ] && ip netns del "$NETNS"
  umount_under "$RUN"; umount_under "$DATA"
  # cgroups docker made for our containers (depth first; a busy one stays and is reported)
  for c in /sys/fs/cgroup/*"$CGROUP" /sys/fs/cgroup"$CGROUP"; do
    [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
    [ -d "$c" ] && log "cgroup $c still busy"
  done
  if [ -f "$RUN/created-host-paths" ] && ! pgrep -x dockerd >/dev/null; then
    while read -r p; do
      if [ -d "$p" ]; then rmdir "$p" 2>/dev/null || true; else rm -f "$p"; fi
    done <"$RUN/created-host-paths"
  fi
  [ -f "$RUN/dockerd.log" ] && mkdir -p "$DATA" && cp "$RUN/dockerd.log" "$DATA/last-dockerd.log"
  rm -rf --one-file-system "$RUN"
  log "stopped"
}

case ${1:-} in
  start) shift; start "$@" ;;
  env) dockerd_pid >/dev/null && print_env ;;
  status) dockerd_pid >/dev/null && answers ;;
  stop) stop ;;
  purge) stop; umount_under "$DATA"; rm -rf --one-file-system "$DATA"; log "data-root $DATA deleted" ;;
  *) sed -n '2,23p' "$0" >&2; exit 2 ;;
esac
