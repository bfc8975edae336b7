package main

import (
	"github.com/spf13/cobra"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "tslab",
		Short: "Run tcpshadow in a sealed namespace lab",
		Long: `tslab builds a sealed lab of network namespaces (client, prod, shadow, assist,
switch; addresses in 198.18.0.0/15 and 2001:2::/48 only), runs tcpshadow in it
and tears everything down on exit. Needs root.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// One constructor per subcommand, each in its own file.
	root.AddCommand(newDemoCmd())
	root.AddCommand(newBenchCmd())
	return root
}
