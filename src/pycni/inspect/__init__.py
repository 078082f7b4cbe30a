"""Operator commands: `pycni leases`, `pycni status`, `pycni gc [--dry-run]` (README "Operating pycni").

They read the real store (the host-local lease files) and the kernel (links, the firewall) of the
network namespace they run in, and change nothing - except `pycni gc` without --dry-run, which runs
the plugin's own GC verb. Plain text by default, `--json` for scripts. Modules:
  netconfs  - the pycni networks of a CNI conf dir (the conflist the runtime reads);
  pools     - ranges, capacity and leases of a network's host-local store;
  leases    - `pycni leases`;  status - `pycni status`;  gc_preview - `pycni gc`;
  cri       - the valid attachments from a container runtime's CRI ListPodSandbox;
  output    - plain tables and --json.
"""
