"""host-local IPAM (CONVENTIONS.md / the reference plugins' `host-local`): config, a pure allocator,
an on-disk store compatible with the reference plugin's, and the verbs."""
