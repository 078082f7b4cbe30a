"""pycni: a CNI 1.1.0 bridge plugin and host-local IPAM, written to be read next to the spec.

Layout (data flows one way):
  cli      reads the environment and stdin, dispatches one verb, prints one JSON document
  spec     the protocol (pure): environment, CNI_ARGS, versions, config, results, errors
  ipam     host-local: config, pure allocator, on-disk store, verbs
  bridge   the bridge plugin: config, kernel work (pyroute2), masquerade, verbs
"""

__version__ = "0.1.0"
