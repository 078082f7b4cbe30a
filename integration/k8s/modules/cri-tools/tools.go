//go:build tools

// Package tools pins crictl (sigs.k8s.io/cri-tools, the minor of the Kubernetes it talks to) for
// integration/k8s/build.sh: its go.sum is the checksum record.
package tools

import _ "sigs.k8s.io/cri-tools/cmd/crictl"
