// Command pycni-cnitool is a minimal, cnitool-compatible driver for CNI
// plugins, built against the system libcni (Debian's golang-github-appc-cni-dev).
// It exists so that pycni's integration tests can exercise the plugin through
// the same code path a real container runtime uses (libcni), rather than only
// through hand-crafted stdin/env invocations.
//
// Usage:
//
//	pycni-cnitool add|check|del <network-name> <netns-path>
//	pycni-cnitool status|gc     <network-name> [<netns-path>]
//	pycni-cnitool version       <plugin-type>   (libcni's GetVersionInfo: the plugin's VERSION)
//
// Environment:
//
//	NETCONFPATH      directory of .conf/.conflist/.json files (default /etc/cni/net.d)
//	CNI_PATH         ":"-separated plugin directories (default /opt/cni/bin)
//	CNI_ARGS         "K=V;K=V" pairs passed to plugins as CNI_ARGS
//	CAP_ARGS         JSON object passed as capability args (runtimeConfig)
//	CNI_IFNAME       interface name inside the netns (default eth0)
//	CNI_CONTAINERID  container id (default derived from the netns path)
//	CNI_CACHE_DIR    libcni result cache directory (default /var/lib/cni)
//
// Exit codes: 0 success, 1 error, 2 usage error or unsupported subcommand.
package main

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

const usage = `usage: pycni-cnitool add|check|del <network-name> <netns-path>
       pycni-cnitool status|gc <network-name> [<netns-path>]
       pycni-cnitool version <plugin-type>`

// getenv returns the value of the environment variable key, or def if unset/empty.
func getenv(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// parseArgs turns CNI_ARGS-style "K=V;K=V" into libcni's [][2]string form.
func parseArgs(s string) ([][2]string, error) {
	var out [][2]string
	if s == "" {
		return out, nil
	}
	for _, pair := range strings.Split(s, ";") {
		kv := strings.SplitN(pair, "=", 2)
		if len(kv) != 2 || kv[0] == "" {
			return nil, fmt.Errorf("invalid CNI_ARGS pair %q (want K=V)", pair)
		}
		out = append(out, [2]string{kv[0], kv[1]})
	}
	return out, nil
}

// fail reports err on stderr and exits 1. Plugin errors (*types.Error, usually
// wrapped by libcni with fmt.Errorf("...: %w")) are printed as their CNI JSON
// form so callers can assert on the error code.
func fail(err error) {
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		if b, jerr := json.Marshal(cniErr); jerr == nil {
			fmt.Fprintln(os.Stderr, string(b))
			os.Exit(1)
		}
	}
	fmt.Fprintln(os.Stderr, "error:", err)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, netName := os.Args[1], os.Args[2]
	netns := ""
	if len(os.Args) > 3 {
		netns = os.Args[3]
	}

	if cmd == "version" {
		// VERSION as a runtime asks for it (podman does before ADD and DEL): exec the plugin
		// found in CNI_PATH with CNI_COMMAND=VERSION and parse its answer.
		cninet := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(getenv("CNI_PATH", "/opt/cni/bin")), "", nil)
		info, err := cninet.GetVersionInfo(context.Background(), netName)
		if err != nil {
			fail(err)
		}
		fmt.Println(strings.Join(info.SupportedVersions(), " "))
		return
	}

	switch cmd {
	case "add", "check", "del":
		if netns == "" {
			fmt.Fprintln(os.Stderr, usage)
			os.Exit(2)
		}
	case "status", "gc":
		// libcni 1.1.x (Debian 12) predates the CNI 1.1 STATUS and GC verbs:
		// there is no GetStatusNetworkList / GCNetworkList to call.
		fmt.Fprintf(os.Stderr, "%s: not supported by this libcni\n", cmd)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}

	// Load the network by name. LoadConfList searches .conflist files first and
	// falls back to single-plugin .conf/.json files, upconverting them with
	// ConfListFromConf, so both formats are accepted.
	netconf, err := libcni.LoadConfList(getenv("NETCONFPATH", "/etc/cni/net.d"), netName)
	if err != nil {
		fail(err)
	}

	// Runtime-side parameters.
	netns, err = filepath.Abs(netns)
	if err != nil {
		fail(err)
	}
	args, err := parseArgs(os.Getenv("CNI_ARGS"))
	if err != nil {
		fail(err)
	}
	var capArgs map[string]interface{}
	if s := os.Getenv("CAP_ARGS"); s != "" {
		if err := json.Unmarshal([]byte(s), &capArgs); err != nil {
			fail(fmt.Errorf("parsing CAP_ARGS: %w", err))
		}
	}
	containerID := os.Getenv("CNI_CONTAINERID")
	if containerID == "" {
		// Stable per-netns id, so that add/check/del of the same netns agree
		// (libcni keys its result cache on network name + container id + ifname).
		sum := sha512.Sum512([]byte(netns))
		containerID = fmt.Sprintf("cnitool-%x", sum[:10])
	}
	rt := &libcni.RuntimeConf{
		ContainerID:    containerID,
		NetNS:          netns,
		IfName:         getenv("CNI_IFNAME", "eth0"),
		Args:           args,
		CapabilityArgs: capArgs,
	}

	// An empty cache dir makes libcni use its default (/var/lib/cni).
	paths := filepath.SplitList(getenv("CNI_PATH", "/opt/cni/bin"))
	cninet := libcni.NewCNIConfigWithCacheDir(paths, os.Getenv("CNI_CACHE_DIR"), nil)
	ctx := context.Background()

	switch cmd {
	case "add":
		result, err := cninet.AddNetworkList(ctx, netconf, rt)
		if err != nil {
			fail(err)
		}
		if result != nil {
			// Print writes the result JSON (in its own CNI version) to stdout.
			if err := result.Print(); err != nil {
				fail(err)
			}
			fmt.Println() // Print does not end the JSON with a newline
		}
	case "check":
		if err := cninet.CheckNetworkList(ctx, netconf, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cninet.DelNetworkList(ctx, netconf, rt); err != nil {
			fail(err)
		}
	}
}
