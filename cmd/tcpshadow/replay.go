package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/tcpshadow/tcpshadow/internal/daemon"
	"github.com/tcpshadow/tcpshadow/internal/replay"
)

// replayOptions are the replay command's flags: the copy command's that
// shape the engine and the way to the shadow (bound to copy, whose
// mapping to the daemon's configuration the replay takes whole), and its
// own.
type replayOptions struct {
	copy       copyOptions
	speed      float64
	loop       int
	settle     time.Duration
	every      time.Duration
	noProgress bool
	json       bool
}

// replayCopyFlags are the copy command's flags a replay has: all but
// those of the capture, which the files replace, and the config file.
// replayOptionalFlags are added when the copy command has them (the
// load-test controls), so that they apply to replays as to live copies.
var (
	replayCopyFlags = []string{
		"send", "map", "intercept", "tls-ca", "tls-server-name", "client-pool", "pool-seed", "pool-slot",
		"workers", "max-cpu", "max-memory", "no-pacing", "trust-inbound", "mss",
		"handshake-timeout", "response-timeout", "drain-timeout", "idle-timeout", "linger", "quiet-period",
		"max-session-bytes", "max-sessions", "compare-prefix", "protocol", "divergence-log", "no-divergence-log",
		"log-file", "dump", "dump-max-mb", "dump-files", "secret-file", "name", "metrics", "debug-pprof",
	}
	replayOptionalFlags = []string{"sample", "sample-seed", "multiply", "max-new-sessions", "ramp"}
)

func newReplayCmd(g *globalOptions) *cobra.Command { return newReplayCmdWith(g, &replayOptions{}) }

func newReplayCmdWith(g *globalOptions, o *replayOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "replay FILE... --map [LOCAL:]PORT-TARGET:PORT --intercept AGENT [--speed X] [--loop K] [flags]",
		Short: "Play the TCP sessions of capture files against the shadow",
		Long: `replay plays the TCP sessions of pcap or pcapng files (tcpdump -w, copy
--record, Wireshark; Ethernet, Linux cooked v1 and v2, raw IP) against the
shadow through the copy daemon's engine: the files' client packets are the
captured clients', the files' packets from the maps' local endpoints prod's,
which pace the client's requests and are compared with the shadow's answers
as a live copy's are. A directory stands for its .pcap and .pcapng files in
name order; the files are one timeline.

Each packet goes at its time in the files divided by --speed: at 2, every
session's think times and prod's response times in the files are halved,
so a shadow that answers as slowly as prod did holds the next request of
its connection back (the drift in the summary says by how much). Sessions
already open when the files start are joined mid-stream. --loop K plays the
files K times, each pass from other client addresses (the next-to-last byte
moved by the pass number) so that its connections are new ones on the
shadow.

A file that is not a capture, is truncated or has a link type without IP
fails the replay before anything is sent, with the file and byte offset.
Packets it cannot use are counted and shown in the summary. The progress
goes to standard error (a bar on a terminal, a line every
--progress-interval otherwise), the summary to standard output.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd, g, args) },
	}
	f := cmd.Flags()
	copyFlags := newCopyCmdWith(g, &o.copy).Flags()
	for _, name := range append(slices.Clone(replayCopyFlags), replayOptionalFlags...) {
		if fl := copyFlags.Lookup(name); fl != nil {
			f.AddFlag(fl)
		}
	}
	def := daemon.DefaultReplayConfig()
	f.Float64Var(&o.speed, "speed", def.Speed, fmt.Sprintf("play the files this many times as fast as captured (more than 0, at most %d)", replay.MaxSpeed))
	f.IntVar(&o.loop, "loop", def.Loop, "play the files this many times, each pass from other client addresses")
	f.DurationVar(&o.settle, "settle", def.Settle, "once the files are played, stop after the shadow was sent nothing this long (sessions the files leave open are then reset)")
	f.DurationVar(&o.every, "progress-interval", def.ProgressEvery, "how often the progress line is written when standard error is not a terminal")
	f.BoolVar(&o.noProgress, "no-progress", false, "write no progress, only the summary")
	f.BoolVar(&o.json, "json", false, "write the summary as one JSON object")
	return cmd
}

// fieldFlags maps the replay's config fields to the flags setting them.
func (o *replayOptions) fieldFlags() map[string]fieldFlag {
	m := map[string]fieldFlag{
		"Speed":         {flag: "speed"},
		"Loop":          {flag: "loop"},
		"Settle":        {flag: "settle"},
		"ProgressEvery": {flag: "progress-interval"},
	}
	for k, v := range o.copy.fieldFlags() {
		m["Copy."+k] = v
	}
	return m
}

// config validates the options; every error names its flag.
func (o *replayOptions) config(files []string, progress io.Writer, terminal bool) (daemon.ReplayConfig, error) {
	// The copy command's checks and mapping, whole; the interface is not
	// used: the files are the capture.
	o.copy.iface = "(replay)"
	cc, err := o.copy.config()
	if err != nil {
		return daemon.ReplayConfig{}, err
	}
	cfg := daemon.DefaultReplayConfig()
	cfg.Copy = cc.CopyConfig
	cfg.Copy.Capture.Interface = ""
	cfg.Files, cfg.Speed, cfg.Loop, cfg.Settle, cfg.ProgressEvery = files, o.speed, o.loop, o.settle, o.every
	if !o.noProgress {
		cfg.Progress, cfg.Terminal = progress, terminal
	}
	if err := cfg.Validate(); err != nil {
		return daemon.ReplayConfig{}, o.copy.from.explain(err, o.fieldFlags())
	}
	return cfg, nil
}

func (o *replayOptions) run(cmd *cobra.Command, g *globalOptions, files []string) error {
	if err := g.checkLog(origin{}); err != nil {
		return err
	}
	stderr := cmd.ErrOrStderr()
	cfg, err := o.config(files, stderr, isTerminal(stderr))
	if err != nil {
		return err
	}
	lf, log, err := g.openLog(o.copy.daemon.logFile, stderr, origin{})
	if err != nil {
		return err
	}
	defer lf.Close()
	pr, err := daemon.RunReplay(cmd.Context(), cfg, log)
	if err != nil {
		return o.copy.from.explain(err, o.fieldFlags())
	}
	if o.json {
		return json.NewEncoder(cmd.OutOrStdout()).Encode(pr.Report())
	}
	fmt.Fprintln(cmd.OutOrStdout(), pr.Summary())
	return nil
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
