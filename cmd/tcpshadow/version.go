package main

import (
	"fmt"
	"runtime"

	"github.com/google/gopacket/pcap"
	"github.com/spf13/cobra"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, the control protocol version and the libpcap in use",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "tcpshadow %s (control protocol v%d, %s, %s/%s)\n%s\n",
				version, wire.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH, pcap.Version())
			return err
		},
	}
}
