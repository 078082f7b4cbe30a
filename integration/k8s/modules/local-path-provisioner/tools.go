//go:build tools

// Package tools pins local-path-provisioner (the version kind v0.30.0's default storage image is built from)
// for integration/k8s/build.sh: its go.sum is the checksum record.
package tools

import _ "github.com/rancher/local-path-provisioner"
