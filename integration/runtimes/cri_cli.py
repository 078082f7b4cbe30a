"""A tiny crictl stand-in (Debian 12 has no cri-tools) over the CRI v1 API, for the README's walk-through.

    python cri_cli.py [--socket PATH] version
    python cri_cli.py [--socket PATH] runp NAME [--port HOST:CONTAINER] [--image REF] [--run 'httpd -f -p 80 -h /www']
    python cri_cli.py [--socket PATH] pods
    python cri_cli.py [--socket PATH] inspectp POD_ID
    python cri_cli.py [--socket PATH] rmp POD_ID|--all

Needs grpcio and container-runtime-interface-api (`.venv/bin/python` after `make venv`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from rt_containerd import CRI, Pod, netns_path_of


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", default="/run/containerd/containerd.sock")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("version")
    run = sub.add_parser("runp", help="RunPodSandbox (+ one container running --cmd, if given)")
    run.add_argument("name")
    run.add_argument("--port", action="append", default=[], help="HOST:CONTAINER (TCP hostPort)")
    run.add_argument("--image", default="localhost/pycni/sandbox:test", help="image of the --run container")
    run.add_argument("--run", dest="command", help="start a container in the pod running this command")
    run.add_argument("--logs", default="/var/log/pods", help="pod log directory root")
    sub.add_parser("pods")
    insp = sub.add_parser("inspectp")
    insp.add_argument("pod_id")
    rm = sub.add_parser("rmp")
    rm.add_argument("pod_id", nargs="?")
    rm.add_argument("--all", action="store_true")
    a = ap.parse_args(argv)
    cri = CRI(Path(a.socket))
    if a.cmd == "version":
        print(cri.version())
    elif a.cmd == "runp":
        ports = [tuple(int(x) for x in p.split(":"))[::-1] for p in a.port]  # (container, host)
        pod = cri.run_pod(a.name, Path(a.logs), port_mappings=ports)
        out = {"id": pod.id, "ip": pod.ip, "netns": pod.netns}
        if a.command:
            out["container"] = cri.create_container(pod, "c0", a.image, shlex.split(a.command))
        print(json.dumps(out, indent=2))
    elif a.cmd == "pods":
        for sb in cri.sandboxes():
            status, _ = cri.status(sb.id)
            print(sb.id[:13], sb.metadata.name, status.network.ip, "READY" if status.state == 0 else "NOTREADY")
    elif a.cmd == "inspectp":
        status, info = cri.status(a.pod_id)
        print(json.dumps({"id": status.id, "ip": status.network.ip, "state": status.state,
                          "netns": netns_path_of(info), "cniResult": info.get("cniResult")}, indent=2))
    elif a.cmd == "rmp":
        if a.all:
            print("\n".join(cri.remove_all()))
        elif not a.pod_id:
            ap.error("rmp needs a POD_ID or --all")
        else:
            cri.stop_and_remove(Pod(name="", id=a.pod_id, config=None))
            print(a.pod_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
