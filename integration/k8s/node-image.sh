# Sourced by build.sh: the kind node image, assembled offline the way kind's own images are made.
#
#  1. kind's base image (kind v0.30.0 images/base/Dockerfile): the Debian root filesystem from images.sh, kind's
#     files (images/base/files, read from the Go module cache, not copied into this repository) with the
#     Dockerfile's modes, its systemd unit pruning and enabling, /etc/containerd/cri-base.json from `ctr oci spec`,
#     crictl, and the reference CNI plugins host-local, loopback, ptp and portmap in /opt/cni/bin. containerd and
#     runc are Debian's (1.6.20, 1.1.5) instead of kind's builds; /usr/local/bin/containerd points at Debian's so
#     that kind's containerd.service runs unchanged.
#  2. What `kind build node-image` adds (pkg/build/nodeimage/buildcontext.go): kubeadm, kubelet, kubectl in
#     /usr/bin, /kind/version, /kind/manifests/default-storage.yaml (kind's manifest, extracted from the module's
#     const_storage.go: its two images are built here by images.sh), and every image the control plane needs in
#     containerd's k8s.io namespace, imported the way kind imports them (`ctr images import --no-unpack`, pinned).
#     The sandbox image in containerd's config is kubeadm v1.34's (pause:3.10.1; kind's base says 3.10).
#     No /kind/manifests/default-cni.yaml: kindnet's image cannot be built here, so clusters from this image need
#     `networking.disableDefaultCNI: true` (pycni is the CNI).
#  3. `docker import` of the result, then kind's ENTRYPOINT, `container=docker` and systemd's stop signal.
# The root filesystem tarball is cached in $CACHE/kind-node/<k8s version>/<key>/node-rootfs.tar.

kind_module_dir() {
  (cd "$HERE/modules/kind" && go mod download sigs.k8s.io/kind && go list -m -f '{{.Dir}}' sigs.k8s.io/kind)
}

# kind_storage_manifest KIND_DIR: kind's default storage manifest with its image constants substituted
kind_storage_manifest() {
  python3 - "$1/pkg/build/nodeimage/const_storage.go" <<'EOF'
import re, sys
src = open(sys.argv[1]).read()
consts = dict(re.findall(r'^const (\w+) = "([^"]*)"', src, re.M))
rest = src.split("const defaultStorageManifest = ", 1)[1]
out, pos = [], 0
while True:  # a Go concatenation of raw strings and string constants
    m = re.compile(r'\s*(?:`([^`]*)`|(\w+))').match(rest, pos)
    out.append(m.group(1) if m.group(1) is not None else consts[m.group(2)])
    pos = m.end()
    plus = re.compile(r'\s*\+').match(rest, pos)
    if not plus:
        break
    pos = plus.end()
sys.stdout.write("".join(out).lstrip("\n"))
EOF
}

# install_kind_base KIND_DIR ROOT: step 1 above
install_kind_base() {
  local f=$1/images/base/files r=$2
  install -d -m 0755 "$r/usr/local/bin" "$r/kind" "$r/kind/bin" "$r/LICENSES" "$r/etc/containerd" "$r/etc/default" \
    "$r/etc/sysctl.d" "$r/etc/systemd/system/kubelet.service.d" "$r/etc/kubernetes/manifests" "$r/opt/cni/bin"
  install -m 0755 "$f"/usr/local/bin/* "$r/usr/local/bin/"
  install -m 0644 "$f"/kind/README.txt "$r/kind/"
  install -m 0755 "$f"/kind/bin/* "$r/kind/bin/"
  install -m 0644 "$f"/LICENSES/* "$r/LICENSES/"
  install -m 0644 "$f"/etc/crictl.yaml "$r/etc/"
  install -m 0644 "$f"/etc/containerd/* "$r/etc/containerd/"
  install -m 0644 "$f"/etc/default/* "$r/etc/default/"
  install -m 0644 "$f"/etc/sysctl.d/* "$r/etc/sysctl.d/"
  local u; for u in "$f"/etc/systemd/system/*; do [ -f "$u" ] && install -m 0644 "$u" "$r/etc/systemd/system/"; done
  install -m 0644 "$f"/etc/systemd/system/kubelet.service.d/* "$r/etc/systemd/system/kubelet.service.d/"
  # the Dockerfile's unit pruning
  find "$r/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
  rm -f "$r"/lib/systemd/system/multi-user.target.wants/* "$r"/etc/systemd/system/*.wants/* \
    "$r"/lib/systemd/system/local-fs.target.wants/* "$r"/lib/systemd/system/sockets.target.wants/*udev* \
    "$r"/lib/systemd/system/sockets.target.wants/*initctl* "$r"/lib/systemd/system/basic.target.wants/*
  echo "ReadKMsg=no" >>"$r/etc/systemd/journald.conf"
  [ -e "$r/sbin/init" ] || ln -s /lib/systemd/systemd "$r/sbin/init"
  chroot "$r" systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
  chroot "$r" systemctl mask systemd-binfmt.service >/dev/null 2>&1
  # Debian's containerd and runc where kind's units and PATH expect kind's
  ln -sf /usr/bin/containerd "$r/usr/local/bin/containerd"
  chroot "$r" sh -c "ctr oci spec | jq '.hooks.createContainer[.hooks.createContainer| length] |= . + {\"path\": \"/kind/bin/mount-product-files.sh\"}' | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json"
  install -m 0755 "$CRICTL_BIN/crictl" "$r/usr/local/bin/"
  local p; for p in host-local loopback ptp portmap; do install -m 0755 "$r/usr/lib/cni/$p" "$r/opt/cni/bin/"; done
  # the build host's identity must not leak into nodes (docker mounts its own over these)
  : >"$r/etc/resolv.conf"; : >"$r/etc/hostname"; rm -f "$r/etc/machine-id"
}

# preload ROOT IMAGE_TARS...: import images into ROOT's containerd store as kind does, with ROOT's own containerd
# and ctr run from the host (same Debian) against ROOT/var/lib/containerd, CRI off, in a network namespace of its
# own (it only listens on a unix socket)
preload() {
  local r=$1; shift
  local st; st=$(mktemp -d "$CACHE/tmp.ctrd.XXXXXX")
  printf 'version = 2\nroot = "%s"\nstate = "%s"\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "%s"\n' \
    "$r/var/lib/containerd" "$st/state" "$st/c.sock" >"$st/config.toml"
  unshare --net "$r/usr/bin/containerd" --config "$st/config.toml" >"$st/containerd.log" 2>&1 &
  local pid=$! i
  for ((i = 0; i < 200; i++)); do
    "$r/usr/bin/ctr" -a "$st/c.sock" version >/dev/null 2>&1 && break
    kill -0 $pid 2>/dev/null || { cat "$st/containerd.log" >&2; die "containerd for preloading exited"; }
    sleep 0.1
  done
  local t rc=0
  for t in "$@"; do
    "$r/usr/bin/ctr" -a "$st/c.sock" -n k8s.io images import --label=io.cri-containerd.pinned=pinned \
      --all-platforms --no-unpack - <"$t" >/dev/null || { rc=1; log "import of $t failed"; break; }
  done
  "$r/usr/bin/ctr" -a "$st/c.sock" -n k8s.io images ls -q | sort >"$st/images.txt" || rc=1
  kill -TERM $pid; wait $pid 2>/dev/null || true
  [ $rc = 0 ] || { cat "$st/containerd.log" >&2; die "preloading images failed"; }
  cp "$st/images.txt" "$r/kind/preloaded-images.txt"
  rm -rf --one-file-system "$st"
}

build_node_image() {
  require_docker
  local rootfs_tar; rootfs_tar=$(debian_rootfs)
  local kind_dir; kind_dir=$(kind_module_dir)
  local tars=() ref keys=()
  while read -r ref; do
    tars+=("$(image_tar "${ref%:*}" "${ref##*:}")"); keys+=("@${tars[-1]}.key")
  done < <(node_images)
  local key; key=$(hash_of "@$HERE/node-image.sh" "@$HERE/images.sh" "$rootfs_tar" "$kind_dir" \
    "@$K8S_BIN/.stamp" "@$CRICTL_BIN/.stamp" "${keys[@]}" "$NODE_IMAGE")
  local dir=$CACHE/kind-node/$K8S_VERSION/$key
  if [ -f "$dir/node-rootfs.tar" ]; then
    log "node image: rootfs cached in $dir"
  else
    local t0; t0=$(date +%s)
    local tmp="$dir.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp"
    extract_rootfs "$rootfs_tar" "$tmp/rootfs"
    install_kind_base "$kind_dir" "$tmp/rootfs"
    local b; for b in kubeadm kubelet kubectl; do install -m 0755 "$K8S_BIN/$b" "$tmp/rootfs/usr/bin/"; done
    printf '%s' "$K8S_VERSION" >"$tmp/rootfs/kind/version"
    sed -i "s|sandbox_image = \"registry.k8s.io/pause:[^\"]*\"|sandbox_image = \"registry.k8s.io/pause:$PAUSE_VERSION\"|" \
      "$tmp/rootfs/etc/containerd/config.toml"
    grep -q "pause:$PAUSE_VERSION" "$tmp/rootfs/etc/containerd/config.toml" || die "sandbox_image not set"
    mkdir -p "$tmp/rootfs/kind/manifests"
    kind_storage_manifest "$kind_dir" >"$tmp/rootfs/kind/manifests/default-storage.yaml"
    grep -q "image: $LPP_IMAGE" "$tmp/rootfs/kind/manifests/default-storage.yaml" || die "storage manifest images"
    preload "$tmp/rootfs" "${tars[@]}"
    tar -C "$tmp/rootfs" --numeric-owner -cf "$tmp/node-rootfs.tar" .
    rm -rf --one-file-system "$tmp/rootfs"
    rm -rf "$dir"; mv "$tmp" "$dir"
    local old; for old in "$CACHE/kind-node/$K8S_VERSION"/*; do  # older node roots: about 1 GB each
      [ "$old" = "$dir" ] || [[ $old == *.tmp.* ]] || rm -rf --one-file-system "$old"
    done
    log "node image: built in $(( $(date +%s) - t0 )) s"
    echo "$(date -u +%FT%TZ) node-rootfs $(( $(date +%s) - t0 ))s" >>"$CACHE/build-times.log"
  fi
  if [ "$(docker image inspect -f '{{index .Config.Labels "pycni.key"}}' "$NODE_IMAGE" 2>/dev/null)" != "$key" ]; then
    local t1; t1=$(date +%s)
    # docker import cannot set STOPSIGNAL (systemd stops on SIGRTMIN+3; SIGTERM makes it re-execute): a
    # Dockerfile FROM the imported root filesystem adds it (no registry: the base image is local)
    local base="pycni/kind-node-rootfs:$key"
    docker import "$dir/node-rootfs.tar" "$base" >/dev/null
    printf 'FROM %s\nENV container=docker\nSTOPSIGNAL SIGRTMIN+3\nLABEL pycni.key=%s\nENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]\n' \
      "$base" "$key" | DOCKER_BUILDKIT=0 docker build -q -t "$NODE_IMAGE" - >/dev/null 2>"$dir/docker-build.log" \
      || { cat "$dir/docker-build.log" >&2; die "docker build of $NODE_IMAGE failed"; }
    docker rmi "$base" >/dev/null  # the tag only: the layer stays under $NODE_IMAGE
    log "node image: docker import + build $NODE_IMAGE in $(( $(date +%s) - t1 )) s"
  else
    log "node image: $NODE_IMAGE already in docker"
  fi
  echo "$NODE_IMAGE"
}
