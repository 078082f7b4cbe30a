"""The CNI execution protocol (SPEC.md), pure Python: nothing here needs root, netlink or the environment."""
