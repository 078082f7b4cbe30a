// Command pause is the pod sandbox's process (the registry.k8s.io/pause image built here): it holds the pod's
// namespaces open, reaps the zombies of a shared PID namespace, and exits 0 on SIGINT or SIGTERM. The kubelet
// needs nothing else from it. Built static (CGO_ENABLED=0) by integration/k8s/build.sh.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

var version = "dev" // set with -ldflags -X main.version=<tag>

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-v" || os.Args[1] == "--version") {
		fmt.Printf("pause %s (pycni)\n", version)
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "Warning: pause should be the first process")
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			fmt.Fprintf(os.Stderr, "Shutting down, got signal: %v\n", sig)
			os.Exit(0)
		}
		for { // reap every child that exited
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
