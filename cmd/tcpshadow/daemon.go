package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/internal/logfile"
	"github.com/tcpshadow/tcpshadow/internal/pcapdump"
)

// This file is what the copy and intercept commands share: the options
// both daemons have, reading them with the config file, and the log.

// daemonOptions are the flags both daemons have besides the root's
// logging flags.
type daemonOptions struct {
	configFile    string
	logFile       string
	dump          dumpOptions
	secretFile    string
	name          string
	metricsAddr   string
	pprof         bool
	statsInterval time.Duration
	bufferMB      int
	bufferStartMB int
	capTimeout    time.Duration
}

// daemonHelp is what differs in the shared flags' help between daemons.
type daemonHelp struct {
	dumped string // what --dump writes
	secret string // what --secret-file holds
	peer   string // to whom --name is announced
}

// daemonDefaults are the shared flags' defaults, from the daemon's
// default configuration.
type daemonDefaults struct {
	capture       capture.Config
	statsInterval time.Duration
	dump          pcapdump.Config
}

func (d *daemonOptions) addFlags(f *pflag.FlagSet, h daemonHelp, def daemonDefaults) {
	f.StringVar(&d.configFile, "config", "", "read options from this TOML file; flags given on the command line override it")
	f.StringVar(&d.logFile, "log-file", "", "append the log to this file, reopened on SIGHUP (default: standard error)")
	d.dump.addFlags(f, h.dumped, def.dump)
	f.StringVar(&d.secretFile, "secret-file", "", "file holding "+h.secret)
	f.StringVar(&d.name, "name", "", "name announced to "+h.peer+" (default: hostname)")
	f.StringVar(&d.metricsAddr, "metrics", "", "serve Prometheus metrics on this address (off if empty)")
	f.BoolVar(&d.pprof, "debug-pprof", false, "also serve Go's profiler under /debug/pprof/ on the --metrics address, which must then be loopback")
	f.DurationVar(&d.statsInterval, "stats-interval", def.statsInterval, "log a one-line summary this often (0: never)")
	f.IntVar(&d.bufferMB, "capture-buffer-mb", def.capture.BufferSize>>20, "largest kernel capture ring in MiB (the copier's at most an eighth of --max-memory); it grows to this with the rate it is read at")
	f.IntVar(&d.bufferStartMB, "capture-buffer-start-mb", def.capture.InitialBufferSize>>20, "kernel capture ring at start in MiB; 0: 64 of the largest packets (32 at the copier's snap length, 4 at the agent's); --capture-buffer-mb or more: a fixed ring")
	f.DurationVar(&d.capTimeout, "capture-timeout", def.capture.Timeout, "longest a captured packet waits in the kernel's ring before it is read (latency against wake-ups)")
}

// addFieldFlags adds the shared flags to a daemon's field → flag table.
func (d *daemonOptions) addFieldFlags(m map[string]fieldFlag) {
	m["Capture.BufferSize"] = fieldFlag{flag: "capture-buffer-mb", given: d.bufferMB}
	m["Capture.InitialBufferSize"] = fieldFlag{flag: "capture-buffer-start-mb", given: d.bufferStartMB}
	m["Capture.Timeout"] = fieldFlag{flag: "capture-timeout"}
	m["MetricsAddr"] = fieldFlag{flag: "metrics"}
	m["Pprof"] = fieldFlag{flag: "debug-pprof"}
	m["StatsInterval"] = fieldFlag{flag: "stats-interval"}
	m["Dump.Path"] = fieldFlag{flag: "dump"}
	m["Dump.MaxBytes"] = fieldFlag{flag: "dump-max-mb", given: d.dump.maxMB}
	m["Dump.Files"] = fieldFlag{flag: "dump-files"}
}

// setCapture sets the capture settings the shared flags hold.
func (d *daemonOptions) setCapture(c *capture.Config) {
	c.BufferSize, c.InitialBufferSize, c.Timeout = mebibytes(d.bufferMB), mebibytes(d.bufferStartMB), d.capTimeout
}

// sharedFiles is what the shared options name on disk.
type sharedFiles struct {
	secret  []byte
	secrets map[string][]byte // the agent's, one per copy daemon
	name    string            // announced to the peer
}

// read reads the secret file (the agent's may hold one secret per copy
// daemon) and checks the log file could be opened; errors name the flag
// or file key.
func (d *daemonOptions) read(from origin, agent bool) (sharedFiles, error) {
	if d.logFile != "" {
		if err := checkDir(d.logFile); err != nil {
			return sharedFiles{}, fmt.Errorf("%s %q: %w", from.name("log-file"), d.logFile, err)
		}
	}
	var sf sharedFiles
	var err error
	if agent {
		sf.secret, sf.secrets, err = readAgentSecrets(d.secretFile)
	} else {
		sf.secret, err = readSecret(d.secretFile)
	}
	if err != nil {
		return sharedFiles{}, fmt.Errorf("%s: %w", from.name("secret-file"), err)
	}
	sf.name = d.name
	if sf.name == "" {
		sf.name, _ = os.Hostname()
	}
	return sf, nil
}

// runDaemon is what both daemons' RunE do: read the config file under the
// flags, validate, open the log, run.
func runDaemon[C interface{ logPath() string }](cmd *cobra.Command, g *globalOptions, role string,
	d *daemonOptions, from *origin, config func() (C, error),
	run func(context.Context, C, *slog.Logger, *logfile.File) error) error {
	f, err := applyConfigFile(cmd.Flags(), role, d.configFile)
	if err != nil {
		return err
	}
	*from = f
	if err := g.checkLog(f); err != nil {
		return err
	}
	cfg, err := config()
	if err != nil {
		return err
	}
	lf, log, err := g.openLog(cfg.logPath(), cmd.ErrOrStderr(), f)
	if err != nil {
		return err
	}
	defer lf.Close()
	return run(cmd.Context(), cfg, log, lf)
}

type dumpOptions struct {
	path  string
	maxMB int
	files int
}

func (d *dumpOptions) addFlags(f *pflag.FlagSet, dumped string, def pcapdump.Config) {
	f.StringVar(&d.path, "dump", "", "write "+dumped+" to this pcap file, rotated as FILE.1, FILE.2 ... (off if empty)")
	f.IntVar(&d.maxMB, "dump-max-mb", int(def.MaxBytes>>20), "start a new dump file when the current one reaches this many MiB")
	f.IntVar(&d.files, "dump-files", def.Files, "dump files kept, the current one included")
}

// config returns the dump's configuration; an empty path means no dump.
func (d *dumpOptions) config() pcapdump.Config {
	return pcapdump.Config{Path: d.path, MaxBytes: int64(mebibytes(d.maxMB)), Files: d.files}
}

// checkDir checks the directory a file is to be created in exists.
func checkDir(path string) error {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("want a file in an existing directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("want a file in an existing directory: %s is not a directory", dir)
	}
	return nil
}

// checkLog validates the logging flags, naming the file's key when the
// value came from it.
func (g *globalOptions) checkLog(from origin) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return fmt.Errorf("%s %q: want debug, info, warn or error", from.name("log-level"), g.logLevel)
	}
	switch strings.ToLower(g.logFormat) {
	case "text", "json":
		return nil
	}
	return fmt.Errorf("%s %q: want text or json", from.name("log-format"), g.logFormat)
}

// openLog opens the log file (stderr when path is empty) and the logger
// writing to it. Lines in a file keep their timestamps under systemd too.
func (g *globalOptions) openLog(path string, stderr io.Writer, from origin) (*logfile.File, *slog.Logger, error) {
	lf, err := logfile.Open(path, stderr)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", from.name("log-file"), err)
	}
	log, err := g.loggerTo(lf, path == "" && os.Getenv("JOURNAL_STREAM") != "")
	if err != nil {
		lf.Close()
		return nil, nil, err
	}
	return lf, log, nil
}
