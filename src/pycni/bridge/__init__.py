"""pycni's bridge plugin (type "pycni"): the reference bridge's behaviour, split by concept.

config (keys, defaults, validation) -> verbs (orchestration + rollback) -> links (links, addresses,
routes), netns (namespace switching), sysctl, probes (cheap STATUS/DEL checks), masquerade (nftables /
iptables, MAC spoof check), ipam_delegate (SPEC.md "Plugin Delegation"); netlink is the rtnetlink
plumbing under links, netns and probes.
"""
