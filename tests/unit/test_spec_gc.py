"""GC: one meaning of the valid-attachments list (pycni.spec.gc, docs/gc.md), shared by the bridge and
its IPAM, for every form of the request (tests/support/gc_cases.py) - key missing, null, [], a list, only
the legacy key, both keys (agreeing / disagreeing), malformed entries. No root:

* the parser itself, case by case;
* pycni-host-local by exec, next to the current reference host-local (v1.10, the first with GC):
  the same store, the same request, the same leases left - or the documented difference.

The bridge and libcni on a node: tests/netns/test_bridge_gc.py.
"""

from __future__ import annotations

import pytest
import reliability as rel
from conftest import Reference, exec_plugin
from gc_cases import ACCEPTED, REFUSED, A, B

from pycni.spec.errors import CNIError
from pycni.spec.gc import valid_attachments

# -- the parser ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_parser_accepts(case):
    keys, kept = ACCEPTED[case]
    valid = valid_attachments({"cniVersion": "1.1.0", **keys})
    assert {cid for cid, _ in valid} & {"ctrA", "ctrB"} == kept
    assert all(isinstance(c, str) and isinstance(i, str) for c, i in valid)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_parser_refuses(case):
    with pytest.raises(CNIError) as err:
        valid_attachments({"cniVersion": "1.1.0", **REFUSED[case]})
    assert err.value.code == 7


# -- pycni-host-local by exec, next to the current reference ---------------------------------------------------

NET = "gcnet"


def _hl_conf(data_dir, keys: dict, version: str = "1.1.0") -> dict:
    return {"cniVersion": version, "name": NET, "type": "host-local",
            "ipam": {"type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": "10.66.0.0/24"}]]},
            **keys}


def _hl_store(plugin: str, data_dir) -> None:
    for att in (A, B):
        res = exec_plugin(plugin, "ADD", _hl_conf(data_dir, {}, "1.0.0"), container_id=att["containerID"],
                          netns="/var/run/netns/none", ifname=att["ifname"])
        assert res.returncode == 0, res.stdout + res.stderr


def _owners(data_dir) -> set[str]:
    return {lease[0] for lease in rel.leases(data_dir / NET).values()}


# Where the current reference host-local (v1.10) differs, and why pycni does not follow it:
#   legacy-only: it reads only cni.dev/valid-attachments, so a runtime written to SPEC.md 1.1.0's first text
#     (cni.dev/attachments) loses every lease, valid ones included - wrong;
#   both-disagree / null-with-legacy-list: it takes cni.dev/valid-attachments and ignores the other - an
#     ambiguous request deletes on a guess; pycni refuses it;
#   entry-without-ifname / entry-empty-ifname / legacy-malformed: it accepts them (an entry then keeps
#     nothing, the legacy key is never read); pycni refuses malformed requests before releasing anything.
REFERENCE_KEEPS = {"legacy-only": set(), "both-disagree": {"ctrA"}, "null-with-legacy-list": set(),
                   "entry-without-ifname": {"ctrA"}, "entry-empty-ifname": {"ctrA"}, "legacy-malformed": {"ctrA"}}


@pytest.mark.reference
@pytest.mark.parametrize("case", sorted(ACCEPTED) + sorted(REFUSED))
def test_host_local_gc_against_the_reference(tmp_path, reference: Reference, case):
    keys, kept = ACCEPTED[case] if case in ACCEPTED else (REFUSED[case], {"ctrA", "ctrB"})
    ours_dir, ref_dir = tmp_path / "ours", tmp_path / "ref"
    _hl_store("pycni-host-local", ours_dir)
    _hl_store(reference.exe("host-local"), ref_dir)
    before = rel.store_state(ours_dir / NET)
    ours = exec_plugin("pycni-host-local", "GC", _hl_conf(ours_dir, keys), container_id=None, ifname=None)
    ref = exec_plugin(reference.exe("host-local"), "GC", _hl_conf(ref_dir, keys), container_id=None, ifname=None)
    assert "Traceback" not in ours.stderr
    if case in ACCEPTED:
        assert ours.returncode == 0 and ours.stdout == "", ours.stdout + ours.stderr
    else:
        assert ours.returncode != 0 and ours.json["code"] == 7, ours.stdout
        assert rel.store_state(ours_dir / NET) == before  # refused: not a byte changed
    assert _owners(ours_dir) == kept
    if not reference.cni_1_1:
        # Debian's 1.1.1 predates GC (and cniVersion 1.1.0): it refuses every GC and releases nothing
        assert ref.returncode != 0 and _owners(ref_dir) == {"ctrA", "ctrB"}
        return
    expected_ref = REFERENCE_KEEPS.get(case, kept)
    assert _owners(ref_dir) == expected_ref, ref.stdout
    if case in REFUSED and case not in REFERENCE_KEEPS:
        assert ref.returncode != 0  # it refuses these too (its code: 999)
