#!/bin/sh
# PID 1 of a kind node container started by integration/kind/docker (the wrapper that replaces kind's
# `--privileged`): does what --privileged would have done for the node, then execs the image's own
# entrypoint (kind's /usr/local/bin/entrypoint /sbin/init), which carries on exactly as under kind.
#
# * cgroup mounts read-write (docker mounts them read-only without --privileged): systemd and the kubelet
#   create cgroups below them (with --cgroupns=private they are the node container's own subtree);
# * /dev/kmsg (the kubelet's OOM watcher refuses to start without it);
# * /proc/sys/net read-write: per network namespace, so the node's kube-proxy, pycni agent and plugin set
#   their sysctls in the node only. The rest of /proc/sys stays read-only because it is the *host's*
#   kernel: the kubelet's own tunables (vm.overcommit_memory, kernel.panic, ...) are answered with files
#   holding the values it wants, so it neither fails nor changes the shared machine;
# * containerd's restrict_oom_score_adj when CAP_SYS_RESOURCE is missing (below).
set -eu
say() { echo "INFO: pycni-node-preinit: $*" >&2; }

mount -o remount,rw /sys/fs/cgroup 2>/dev/null || true
awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/self/mounts | while read -r mp; do
  mount -o remount,rw "$mp" 2>/dev/null || mount -o remount,bind,rw "$mp"
done
say "cgroup mounts read-write"

[ -e /dev/kmsg ] || mknod -m 0600 /dev/kmsg c 1 11

if ! cat /proc/sys/net/ipv4/ip_forward 2>/dev/null >/proc/sys/net/ipv4/ip_forward; then
  mount --bind /proc/sys/net /proc/sys/net
  mount -o remount,bind,rw /proc/sys/net
  say "/proc/sys/net read-write"
fi
mkdir -p /kind/sysctl
for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
          kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
  key=${kv%%=*}
  [ -e "/proc/sys/$key" ] || continue
  f=/kind/sysctl/$(echo "$key" | tr / .)
  echo "${kv#*=}" >"$f"
  mount --bind "$f" "/proc/sys/$key"
done
say "host kernel tunables answered from /kind/sysctl"

# Lowering a process's oom_score_adj needs CAP_SYS_RESOURCE, the capability we lack: runc would fail every pod
# ("can't get final child's PID from pipe") on the kubelet's negative scores. containerd clamps them to its own
# score with restrict_oom_score_adj, the setting kind's entrypoint uses in a user namespace for the same reason.
capbnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
if [ $(( 0x$capbnd >> 24 & 1 )) = 0 ] && [ -f /etc/containerd/config.toml ]; then
  sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' /etc/containerd/config.toml
  say "no CAP_SYS_RESOURCE: containerd restrict_oom_score_adj = true"
fi
exec "$@"
