"""pycni's bridge plugin (type "pycni"): the reference bridge's behaviour, split by concept.

config (keys, defaults, validation) -> verbs (orchestration + rollback) -> links (netlink, sysctls),
masquerade (nftables / iptables, MAC spoof check), ipam_delegate (SPEC.md "Plugin Delegation").
"""
