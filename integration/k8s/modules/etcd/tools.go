//go:build tools

// Package tools pins etcd (server and etcdctl) for integration/k8s/build.sh: its go.sum is the checksum record.
// A module of its own: etcd's dependency versions need not agree with Kubernetes'.
package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
