// Command pycni-cnitool drives CNI plugins through libcni (the module pinned in ../go.mod), for the
// few things the upstream cnitool (build/bin/cnitool, same libcni) cannot do. Use cnitool for
// everything else; the README and the demo do.
//
// What upstream cnitool cannot do, and this driver does:
//
//   - choose the container ID (CNI_CONTAINERID; cnitool always derives it from the netns path), so one
//     netns can hold several attachments and tests can name them;
//   - keep libcni's result cache in a directory of the caller's (CNI_CACHE_DIR; cnitool always uses
//     /var/lib/cni, shared by everything on the machine);
//   - GC with a list of valid attachments: `gc <net> --valid [<containerID>/<ifname> ...]` calls
//     libcni's GCNetworkList with GCArgs (cnitool always passes none, which makes libcni DEL every
//     cached attachment of the network and then send GC without cni.dev/valid-attachments);
//   - ask a plugin for its VERSION (libcni's GetVersionInfo), as podman does before ADD and DEL;
//   - report a plugin's error as its CNI error object (JSON on stderr), so callers can read the code.
//
// Usage:
//
//	pycni-cnitool add|check|del <network-name> <netns-path>
//	pycni-cnitool status <network-name>                       (libcni GetStatusNetworkList)
//	pycni-cnitool gc <network-name>                           (GCNetworkList, no GCArgs: as cnitool gc)
//	pycni-cnitool gc <network-name> --valid [<cid>/<ifname> ...]   (GCNetworkList with that list;
//	                                                              none: a nil list, sent as null)
//	pycni-cnitool version <plugin-type>
//
// Environment: NETCONFPATH, CNI_PATH, CNI_ARGS, CAP_ARGS, CNI_IFNAME as cnitool, plus CNI_CONTAINERID
// and CNI_CACHE_DIR. Exit codes: 0 success, 1 error, 2 usage error.
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
       pycni-cnitool status <network-name>
       pycni-cnitool gc <network-name> [--valid [<containerID>/<ifname> ...]]
       pycni-cnitool version <plugin-type>`

func getenv(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func usageError() {
	fmt.Fprintln(os.Stderr, usage)
	os.Exit(2)
}

// parseArgs turns CNI_ARGS "K=V;K=V" into libcni's form (values may be empty, unlike cnitool's parser).
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

// gcArgs reads `--valid [<cid>/<ifname> ...]`: nil without --valid (libcni then sends no list), else
// the list - built the way a Go runtime builds one, by appending to a nil slice, so that `--valid`
// alone is a nil list, which libcni sends as null under both keys.
func gcArgs(words []string) (*libcni.GCArgs, error) {
	if len(words) == 0 {
		return nil, nil
	}
	if words[0] != "--valid" {
		return nil, fmt.Errorf("unexpected argument %q", words[0])
	}
	var valid []types.GCAttachment
	for _, w := range words[1:] {
		cid, ifname, ok := strings.Cut(w, "/")
		if !ok || cid == "" || ifname == "" {
			return nil, fmt.Errorf("invalid attachment %q (want <containerID>/<ifname>)", w)
		}
		valid = append(valid, types.GCAttachment{ContainerID: cid, IfName: ifname})
	}
	return &libcni.GCArgs{ValidAttachments: valid}, nil
}

// fail reports err on stderr and exits 1; a plugin's error object (wrapped by libcni) is printed as
// its CNI JSON so that callers can assert on the code.
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

func runtimeConf(netns string) *libcni.RuntimeConf {
	netns, err := filepath.Abs(netns)
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
	if containerID == "" { // as cnitool: a stable ID per netns path
		sum := sha512.Sum512([]byte(netns))
		containerID = fmt.Sprintf("cnitool-%x", sum[:10])
	}
	return &libcni.RuntimeConf{
		ContainerID:    containerID,
		NetNS:          netns,
		IfName:         getenv("CNI_IFNAME", "eth0"),
		Args:           args,
		CapabilityArgs: capArgs,
	}
}

func main() {
	if len(os.Args) < 3 {
		usageError()
	}
	cmd, name, rest := os.Args[1], os.Args[2], os.Args[3:]
	paths := filepath.SplitList(getenv("CNI_PATH", "/opt/cni/bin"))
	// An empty cache dir makes libcni use its default (/var/lib/cni), as cnitool does.
	cninet := libcni.NewCNIConfigWithCacheDir(paths, os.Getenv("CNI_CACHE_DIR"), nil)
	ctx := context.Background()

	if cmd == "version" {
		info, err := cninet.GetVersionInfo(ctx, name)
		if err != nil {
			fail(err)
		}
		fmt.Println(strings.Join(info.SupportedVersions(), " "))
		return
	}
	switch cmd {
	case "add", "check", "del":
		if len(rest) != 1 {
			usageError()
		}
	case "status":
		if len(rest) != 0 {
			usageError()
		}
	case "gc":
	default:
		usageError()
	}

	netconf, err := libcni.LoadNetworkConf(getenv("NETCONFPATH", "/etc/cni/net.d"), name)
	if err != nil {
		fail(err)
	}
	switch cmd {
	case "add":
		result, err := cninet.AddNetworkList(ctx, netconf, runtimeConf(rest[0]))
		if err != nil {
			fail(err)
		}
		if result != nil {
			if err := result.Print(); err != nil {
				fail(err)
			}
			fmt.Println()
		}
	case "check":
		err = cninet.CheckNetworkList(ctx, netconf, runtimeConf(rest[0]))
	case "del":
		err = cninet.DelNetworkList(ctx, netconf, runtimeConf(rest[0]))
	case "status":
		err = cninet.GetStatusNetworkList(ctx, netconf)
	case "gc":
		var args *libcni.GCArgs
		if args, err = gcArgs(rest); err != nil {
			fmt.Fprintln(os.Stderr, err)
			usageError()
		}
		err = cninet.GCNetworkList(ctx, netconf, args)
	}
	if err != nil {
		fail(err)
	}
}
