//go:build tools

// Package tools pins kind (sigs.k8s.io/kind) for integration/k8s/build.sh: its go.sum is the checksum record.
package tools

import _ "sigs.k8s.io/kind"
