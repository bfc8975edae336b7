// Command tslab is tcpshadow's developer tool for the sealed namespace lab
// (internal/lab): `tslab demo` shows the copier at work between two real
// nginx servers.
//
// What it owns: the lab it builds, the processes it starts there (nginx,
// tcpshadow intercept, tcpshadow copy) and their temporary directories; all
// are torn down before it exits, Ctrl-C included. What it must not do:
// touch the root namespace, system services or any process it did not
// start, or send traffic outside the lab ranges.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// Signals cancel the root context; every command tears its lab down on
	// the way out, so a second signal is caught too rather than leave
	// namespaces behind (teardown is bounded).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "tslab:", err)
		os.Exit(1)
	}
}
