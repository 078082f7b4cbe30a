"""The valid list for GC from the container runtime: every pod sandbox its CRI `ListPodSandbox`
returns (ready or not - a stopped sandbox keeps its network until it is removed, and the runtime
DELs it then). A sandbox ID is the CNI_CONTAINERID the runtime gave pycni (containerd, CRI-O).

Needs grpcio and container-runtime-interface-api (`pip install 'pycni[cri]'`; the dev venv has them),
imported only here."""

from __future__ import annotations

LIST_TIMEOUT = 30.0


class CRIError(Exception):
    pass


def sandbox_ids(socket_path: str, timeout: float = LIST_TIMEOUT) -> set[str]:
    try:
        import grpc
        from cri_api.v1 import api_pb2
        from cri_api.v1.api_pb2_grpc import RuntimeServiceStub
    except ImportError as exc:
        raise CRIError(f"--valid-from-cri needs grpcio and container-runtime-interface-api "
                       f"(pip install 'pycni[cri]'): {exc}") from None
    target = socket_path if "://" in socket_path else f"unix://{socket_path}"
    channel = grpc.insecure_channel(target)
    try:
        items = RuntimeServiceStub(channel).ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=timeout).items
    except grpc.RpcError as exc:
        raise CRIError(f"ListPodSandbox on {socket_path}: {exc.code().name}: {exc.details()}") from None
    finally:
        channel.close()
    return {sb.id for sb in items}
