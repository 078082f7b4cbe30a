#!/usr/bin/env bash
# Build the self-contained pycni bundle: both plugins runnable on an x86_64 Linux node that has no
# Python and possibly no glibc (see integration/bundle/README.md).
#
#   build/bundle/pycni               the native shim (src/pycni/daemon/shim.c, static: any node's libc,
#   build/bundle/pycni-host-local    or none, will do); NATIVE_SHIM=0: #!/bin/sh launchers
#   build/bundle/pycni.d/            the one support directory:
#       bin/python3.X                the venv's base CPython interpreter (debug info stripped)
#       bin/python3                  sh wrapper = sys.executable, so re-executing Python works too
#       lib/*.so*                    every shared library the interpreter and the extension modules need
#                                    (ldd closure: libpython when the interpreter has a shared one, glibc
#                                    and its loader)
#       lib/python3.X/               the stdlib (tests, GUI, tooling trimmed); pycni and its dependencies
#                                    in the directory that interpreter's own site.py searches under the
#                                    bundle (lib/python3.X/site-packages for upstream CPython, e.g. pyenv;
#                                    local/lib/python3.X/dist-packages for Debian's /usr/bin/python3),
#                                    precompiled (unchecked-hash .pyc)
#       install.sh                   install/upgrade into a CNI bin dir (swaps pycni.d, then launchers)
#       BUILDINFO                    versions of everything inside
#   build/pycni-bundle.tar.gz        the three entries above: `tar -C /opt/cni/bin -xzf build/pycni-bundle.tar.gz`
#
# The shim hands each request to the pycni daemon when one answers; otherwise it (and, with NATIVE_SHIM=0,
# each sh launcher) runs `<pycni.d>/lib/ld-linux-x86-64.so.2 --inhibit-cache --library-path <pycni.d>/lib
# <pycni.d>/bin/python3.X -I ...`: the bundled loader and glibc are used whatever the node has, the
# library path is an argument (not LD_LIBRARY_PATH, so processes the plugin runs - iptables, nft,
# delegated IPAM plugins - inherit nothing), and -I makes PYTHON* variables from the runtime inert.
# Python finds its prefix from the landmark <pycni.d>/lib/python3.X/os.py next to argv[0].
# Any CPython >= 3.11 on x86_64 glibc works: a shared or a static libpython, site-packages or
# dist-packages (Debian) - whatever the interpreter is, the finished bundle must import pycni, and
# the build fails otherwise.
#
# Env: VENV (default .venv, must exist: `make venv`), OUT (default build), NATIVE_SHIM (default 1; 0: sh
# launchers, no C compiler needed).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${VENV:-$ROOT/.venv}
OUT=${OUT:-$ROOT/build}
case $OUT in /*) ;; *) OUT=$ROOT/$OUT ;; esac
case $VENV in /*) ;; *) VENV=$ROOT/$VENV ;; esac
VPY=$VENV/bin/python
NAME=pycni.d
LOADER=ld-linux-x86-64.so.2

die() { echo "bundle: $*" >&2; exit 1; }
[ -x "$VPY" ] || die "no venv python at $VPY (run: make venv)"
[ "$(uname -m)" = x86_64 ] || die "only x86_64 is supported (this is $(uname -m))"
command -v ldd >/dev/null || die "ldd not found"

# The venv's base interpreter and its stdlib (a venv has no interpreter of its own).
read -r BASE_EXE STDLIB DYNLOAD SITE VER < <("$VPY" -I - <<'EOF'
import os, sys, sysconfig
base = os.path.realpath(sys._base_executable)
stdlib = sysconfig.get_path("stdlib", vars={"installed_base": sys.base_prefix, "base": sys.base_prefix})
dynload = os.path.join(sysconfig.get_path("platstdlib", vars={"platbase": sys.base_exec_prefix,
                                                              "installed_platbase": sys.base_exec_prefix}),
                       "lib-dynload")
print(base, stdlib, dynload, sysconfig.get_path("purelib"), "%d.%d" % sys.version_info[:2])
EOF
)
PYVER=$VER
"$VPY" -I -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "venv is Python $VER, pycni needs >= 3.11"
[ -f "$STDLIB/os.py" ] && [ -d "$DYNLOAD" ] || die "stdlib not found at $STDLIB"

STAGE=$OUT/bundle.tmp
rm -rf "$STAGE"
D=$STAGE/$NAME
PYLIB=$D/lib/python$PYVER
# Where this interpreter's site.py looks for packages under the bundle's prefix (not inside a venv):
# asked of the interpreter itself, since distributions patch site.py (Debian: dist-packages only).
SITEREL=$("$BASE_EXE" -I -c '
import site, sys
prefix = sys.argv[1]
dirs = [d for d in site.getsitepackages([prefix]) if d.startswith(prefix + "/")]
print(dirs[0][len(prefix) + 1:] if dirs else "")' "$D")
[ -n "$SITEREL" ] || die "$BASE_EXE has no site-packages directory under a prefix"
SITE=$D/$SITEREL
mkdir -p "$D/bin" "$PYLIB" "$SITE"

echo "bundle: interpreter $BASE_EXE"
install -m 0755 "$BASE_EXE" "$D/bin/python$PYVER"

# --- stdlib: everything except tests, GUI/terminal toolkits, build/packaging tooling, caches.
tar -C "$STDLIB" -cf - \
  --exclude=./site-packages --exclude=./dist-packages --exclude="./config-$PYVER*" --exclude=./test --exclude=./idlelib \
  --exclude=./tkinter --exclude=./turtledemo --exclude=./turtle.py --exclude=./ensurepip \
  --exclude=./lib2to3 --exclude=./distutils --exclude=./pydoc_data --exclude=./venv --exclude=./curses \
  --exclude=./__phello__ --exclude=./ctypes/test --exclude=./sqlite3/test --exclude=./unittest/test \
  --exclude=./lib-dynload --exclude=__pycache__ --exclude='*.pyc' --exclude='*.exe' . \
  | tar -C "$PYLIB" -xf -
mkdir -p "$PYLIB/lib-dynload"
for so in "$DYNLOAD"/*.so; do
  case ${so##*/} in
    _test*|_ctypes_test*|_xxtestfuzz*|_xxsubinterpreters*|xxlimited*|_tkinter*|_curses*|readline*|\
    nis.*|ossaudiodev*|_crypt.*|spwd.*) continue ;;
  esac
  install -m 0755 "$so" "$PYLIB/lib-dynload/"
done

# --- site-packages: pycni (from this checkout) + the distributions it requires, copied from the venv
# (exactly the versions the test suite ran against; no network). Console scripts are not copied.
"$VPY" -I - "$ROOT" "$SITE" "$STAGE/deps.txt" <<'EOF'
import re, shutil, sys
from importlib import metadata
from pathlib import Path

root, dest, deps_file = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
try:
    from packaging.requirements import Requirement
except ImportError:  # pragma: no cover - packaging is in every venv with pytest
    Requirement = None

def requires(dist):
    out = []
    for spec in dist.requires or []:
        if Requirement is not None:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            out.append(req.name)
        elif "extra ==" not in spec:
            out.append(re.split(r"[ ;<>=!~\[(]", spec, 1)[0])
    return out

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

seen, todo, versions = set(), requires(metadata.distribution("pycni")), []
while todo:
    name = norm(todo.pop())
    if name in seen:
        continue
    seen.add(name)
    dist = metadata.distribution(name)
    versions.append(f"{dist.metadata['Name']}=={dist.version}")
    base = Path(dist.locate_file(""))
    for f in dist.files or []:
        parts = Path(f).parts
        if parts[0] == ".." or "__pycache__" in parts or f.suffix == ".pyc":
            continue
        src, dst = base / f, dest / f
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    todo.extend(requires(dist))

# pycni itself: the package from src/ (the venv has it editable) and a minimal dist-info.
shutil.copytree(root / "src" / "pycni", dest / "pycni", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
ver = metadata.version("pycni")
info = dest / f"pycni-{ver}.dist-info"
info.mkdir()
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: pycni\nVersion: {ver}\n")
(info / "INSTALLER").write_text("pycni-bundle\n")
deps_file.write_text("\n".join(sorted(versions, key=str.lower)) + "\n")
EOF

# --- shared libraries: libpython and the ldd closure of every ELF object in the bundle.
elfs=("$D/bin/python$PYVER")
while IFS= read -r -d '' so; do elfs+=("$so"); done < <(find "$PYLIB" "$SITE" -name '*.so' -print0 | sort -zu)
declare -A libs=()
loader=
for elf in "${elfs[@]}"; do
  out=$(ldd "$elf" 2>&1) || die "ldd failed on $elf: $out"
  if grep -q 'not found' <<<"$out"; then die "missing library for $elf: $(grep 'not found' <<<"$out")"; fi
  while read -r a b c _; do
    if [ "$b" = "=>" ] && [ -n "$c" ] && [ "${c:0:1}" = / ]; then
      libs[$a]=$c
    elif [ "${a:0:1}" = / ] && [ "${a##*/}" = "$LOADER" ]; then
      loader=$a
    fi
  done <<<"$out"
done
[ -n "$loader" ] || die "no $LOADER in the interpreter's dependencies (not a glibc x86_64 build?)"
install -m 0755 "$(readlink -f "$loader")" "$D/lib/$LOADER"
for soname in "${!libs[@]}"; do
  [ "$soname" = "$LOADER" ] && continue
  install -m 0755 "$(readlink -f "${libs[$soname]}")" "$D/lib/$soname"
done

# Debug info is most of libpython's size; the stripped copies behave the same.
if command -v strip >/dev/null; then
  strip --strip-debug "$D/bin/python$PYVER" "$D"/lib/libpython* "$PYLIB"/lib-dynload/*.so 2>/dev/null || true
  find "$SITE" -name '*.so' -exec strip --strip-debug {} + 2>/dev/null || true
fi

# --- launchers. $0 may be relative or a symlink (possibly to a symlink); only POSIX sh and plain
# `readlink` (busybox and coreutils both have it) are used, and only when $0 is a symlink.
launcher() { # name, python statement
  cat <<EOF
#!/bin/sh
# pycni bundle launcher: runs the bundled CPython (with its own glibc) from ./$NAME next to this file.
p=\$0
while [ -h "\$p" ]; do
  l=\$(readlink "\$p") || break
  case \$l in /*) p=\$l ;; *) case \$p in */*) p=\${p%/*}/\$l ;; *) p=\$l ;; esac ;; esac
done
case \$p in */*) d=\${p%/*} ;; *) d=. ;; esac
case \$d in /*) ;; *) d=\$(cd "\$d" && pwd) || exit 1 ;; esac
D=\$d/$NAME
exec "\$D/lib/$LOADER" --inhibit-cache --library-path "\$D/lib" --argv0 "\$D/bin/python3" \\
  "\$D/bin/python$PYVER" -I -c '$2' "\$@"
EOF
}
if [ "${NATIVE_SHIM:-1}" = 1 ]; then
  BUNDLE_DIR=$NAME BUNDLE_LOADER=$LOADER bash "$ROOT/integration/shim/build.sh" "$STAGE/pycni" "$VPY" "python$PYVER" \
    || die "building the native shim failed (NATIVE_SHIM=0 builds sh launchers instead)"
  cp "$STAGE/pycni" "$STAGE/pycni-host-local"
  LAUNCHERS="native shim (static)"
else
  launcher pycni "from pycni.cli import main_bridge; main_bridge()" > "$STAGE/pycni"
  launcher pycni-host-local "from pycni.cli import main_host_local; main_host_local()" > "$STAGE/pycni-host-local"
  LAUNCHERS="sh"
fi
# sys.executable: a wrapper in the support dir itself, so anything that re-executes Python works.
cat > "$D/bin/python3" <<EOF
#!/bin/sh
# The bundled CPython, runnable directly (this path is sys.executable inside the bundle).
case \$0 in */*) d=\${0%/*} ;; *) d=. ;; esac
case \$d in /*) ;; *) d=\$(cd "\$d" && pwd) || exit 1 ;; esac
D=\${d%/bin}
exec "\$D/lib/$LOADER" --inhibit-cache --library-path "\$D/lib" --argv0 "\$D/bin/python3" \\
  "\$D/bin/python$PYVER" "\$@"
EOF
chmod 0755 "$STAGE/pycni" "$STAGE/pycni-host-local" "$D/bin/python3"

cat > "$D/install.sh" <<'EOF'
#!/bin/sh
# Install or upgrade the pycni bundle into a CNI bin dir:  pycni.d/install.sh [DEST]  (default /opt/cni/bin)
# Run it from an extracted bundle (e.g. in a DaemonSet init container, DEST = the hostPath mount). The new
# pycni.d is copied beside the old one first, then the directories are swapped with two renames and the
# launchers replaced by rename, so a plugin starting meanwhile sees either the old or the new bundle.
set -eu
case $0 in */*) here=${0%/*} ;; *) here=. ;; esac
src=$(cd "$here/.." && pwd)
dest=${1:-/opt/cni/bin}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
if [ "$src" = "$dest" ]; then echo "pycni bundle: already in $dest"; exit 0; fi
new=$dest/.pycni.d.new.$$ old=$dest/.pycni.d.old.$$
rm -rf "$new"
cp -a "$src/pycni.d" "$new"
[ -e "$dest/pycni.d" ] && mv "$dest/pycni.d" "$old"
mv "$new" "$dest/pycni.d"
for exe in pycni pycni-host-local; do
  cp "$src/$exe" "$dest/.$exe.new.$$"
  chmod 0755 "$dest/.$exe.new.$$"
  mv -f "$dest/.$exe.new.$$" "$dest/$exe"
done
rm -rf "$old"
echo "pycni bundle: installed $dest/pycni $dest/pycni-host-local $dest/pycni.d"
EOF
chmod 0755 "$D/install.sh"

# --- precompile with the bundled interpreter itself (this also proves it starts from the bundle).
# unchecked-hash .pyc: valid whatever the files' mtimes become, never rewritten, so a read-only node
# pays no compile cost. (Not bit-reproducible: marshal's reference flags depend on refcounts.)
# Recorded source paths are those of a /opt/cni/bin install (imports fix them up wherever the bundle
# really is), which also keeps the build directory out of the bytes.
"$D/bin/python3" -I -m compileall -q -j0 --invalidation-mode unchecked-hash -s "$STAGE" -p /opt/cni/bin \
  "$PYLIB" "$SITE" >/dev/null \
  || die "compileall failed"
"$D/bin/python3" -I -c 'import sys; assert sys.prefix == sys.argv[1], (sys.prefix, sys.argv[1])' "$D" \
  || die "the bundled interpreter does not take its prefix from the bundle"
# The bundle is only good if its interpreter imports pycni and its dependencies from the bundle itself
# (isolated: no PYTHON* variable, no user site), and both launchers answer VERSION.
"$D/bin/python3" -I -c '
import sys
import pycni.cli, pycni.bridge.verbs, pycni.ipam.verbs, pydantic, pyroute2
for mod in (pycni, pydantic, pyroute2):
    assert mod.__file__.startswith(sys.prefix + "/"), (mod.__name__, mod.__file__, sys.prefix)
' || die "the bundled interpreter cannot import pycni from the bundle"
for exe in pycni pycni-host-local; do  # with no daemon: the bundled interpreter answers
  out=$(echo '{"cniVersion":"1.1.0"}' | env -i CNI_COMMAND=VERSION PYCNI_SOCKET="$STAGE/no-daemon.sock" "$STAGE/$exe") \
    || die "$exe VERSION failed: $out"
  case $out in *'"supportedVersions"'*) ;; *) die "$exe VERSION answered: $out" ;; esac
done

{
  echo "pycni $("$D/bin/python3" -I -c 'import pycni; print(pycni.__version__)')" \
       "($(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown))"
  echo "python $("$D/bin/python3" -I -c 'import sys; print(sys.version.split()[0])') from $BASE_EXE"
  echo "site $SITEREL"
  echo "launchers $LAUNCHERS"
  echo "glibc $("$D/lib/$LOADER" --version 2>/dev/null | head -1 | sed 's/.*release version //; s/\.$//')"
  echo "arch x86_64"
  cat "$STAGE/deps.txt"
  echo "libs $(cd "$D/lib" && ls -- *.so* | tr '\n' ' ')"
} > "$D/BUILDINFO"
rm "$STAGE/deps.txt"

rm -rf "$OUT/bundle"
mv "$STAGE" "$OUT/bundle"
stamp=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)
tar -C "$OUT/bundle" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$stamp" \
  -cf - pycni pycni-host-local "$NAME" | gzip -9n > "$OUT/pycni-bundle.tar.gz.tmp"
mv "$OUT/pycni-bundle.tar.gz.tmp" "$OUT/pycni-bundle.tar.gz"
echo "bundle: $OUT/bundle ($(du -sh "$OUT/bundle" | cut -f1)), $OUT/pycni-bundle.tar.gz ($(du -h "$OUT/pycni-bundle.tar.gz" | cut -f1))"
