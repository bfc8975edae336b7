package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// globalOptions are the flags every subcommand shares.
type globalOptions struct {
	logFormat string
	logLevel  string
}

func newRootCmd() *cobra.Command {
	g := &globalOptions{}
	root := &cobra.Command{
		Use:   "tcpshadow",
		Short: "Copy live TCP traffic from production to a shadow server, at the packet level",
		Long: `tcpshadow copies the requests production receives to a shadow copy of the
service, at real load and timing, without sitting in the request path.

  prod host:   tcpshadow copy       captures clients' packets, plays their side of TCP to the shadow
  assist host: tcpshadow intercept  captures the shadow's replies and relays their headers
  shadow host: tcpshadow route      routes replies for the client addresses to the assist host`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	g.addFlags(root.PersistentFlags())
	root.AddCommand(newCopyCmd(g), newInterceptCmd(g), newRouteCmd(g), newVersionCmd(), newDoctorCmd(g))
	root.AddCommand(newConfigCmd(), newStatsCmd(), newReportCmd(), newReplayCmd(g))
	return root
}

// addFlags adds the shared logging flags to f.
func (g *globalOptions) addFlags(f *pflag.FlagSet) {
	f.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
}

// logger builds the logger the flags ask for, writing to standard error
// w. Under systemd (JOURNAL_STREAM set) timestamps are left to the journal.
func (g *globalOptions) logger(w io.Writer) (*slog.Logger, error) {
	return g.loggerTo(w, os.Getenv("JOURNAL_STREAM") != "")
}

// loggerTo builds the logger the flags ask for, writing to w; journal says
// w is the journal, which timestamps lines itself (a --log-file is not).
func (g *globalOptions) loggerTo(w io.Writer, journal bool) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	if journal {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	switch strings.ToLower(g.logFormat) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", g.logFormat)
}
