//go:build tools

// Package tools pins CoreDNS (the version kubeadm v1.34 deploys, constants.CoreDNSVersion) for
// integration/k8s/build.sh: its go.sum is the checksum record. A module of its own: CoreDNS pulls in cloud SDKs
// whose versions need not agree with Kubernetes'.
package tools

import _ "github.com/coredns/coredns"
