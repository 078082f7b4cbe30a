"""Native executables in the tests: the C shim built with a given wire.h (tests/unit/test_daemon_wire.py,
tests/netns/test_daemon.py), and whether an executable is static (the installed shim, the bundle's)."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

from conftest import REPO

from pycni.daemon import wire


def compile_shim(out: Path, python: str, header: str | None = None) -> Path:
    """shim.c built as integration/shim/build.sh does, but with a given header (e.g. another version)."""
    (out / "wire.h").write_text(header if header is not None else wire.c_header())
    subprocess.run(["cc", "-static", "-O2", "-Wall", "-Werror", f"-I{out}", f'-DPYCNI_PYTHON="{python}"', "-o",
                    str(out / "pycni"), str(REPO / "src" / "pycni" / "daemon" / "shim.c")], check=True)
    return out / "pycni"


def is_static_elf(path: Path) -> bool:
    """An ELF executable without a PT_INTERP program header (needs no loader, no libc)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit only
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != 3 for i in range(phnum))
