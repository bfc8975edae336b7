package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tcpshadow/tcpshadow/internal/conffile"
	"github.com/tcpshadow/tcpshadow/internal/logfile"
	"github.com/tcpshadow/tcpshadow/internal/metrics"
	"github.com/tcpshadow/tcpshadow/internal/pcapdump"
)

// This file is what copy and intercept share as daemons: the config file,
// the log file, the pcap dump and SIGHUP.

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
	capTimeout    time.Duration
}

// defaultMaxCPU is both daemons' --max-cpu default: half the host's
// CPUs. The copier shares its host with production; and neither daemon
// gains from more, whereas an idle P to hand work to makes the Go
// scheduler wake threads for every packet.
func defaultMaxCPU() int { return max(1, runtime.NumCPU()/2) }

// checkMaxCPU validates a --max-cpu value.
func checkMaxCPU(from origin, v int) error {
	if v < 1 || v > 1024 {
		return fmt.Errorf("%s %d: want 1..1024", from.name("max-cpu"), v)
	}
	return nil
}

// daemonHelp is what differs in the shared flags' help between daemons.
type daemonHelp struct {
	dumped string // what --dump writes
	secret string // what --secret-file holds
	peer   string // to whom --name is announced
}

func (d *daemonOptions) addFlags(f *pflag.FlagSet, h daemonHelp) {
	f.StringVar(&d.configFile, "config", "", "read options from this TOML file; flags given on the command line override it")
	f.StringVar(&d.logFile, "log-file", "", "append the log to this file, reopened on SIGHUP (default: standard error)")
	d.dump.addFlags(f, h.dumped)
	f.StringVar(&d.secretFile, "secret-file", "", "file holding "+h.secret)
	f.StringVar(&d.name, "name", "", "name announced to "+h.peer+" (default: hostname)")
	f.StringVar(&d.metricsAddr, "metrics", "", "serve Prometheus metrics on this address (off if empty)")
	f.BoolVar(&d.pprof, "debug-pprof", false, "also serve Go's profiler under /debug/pprof/ on the --metrics address")
	f.DurationVar(&d.statsInterval, "stats-interval", 30*time.Second, "log a one-line summary this often (0: never)")
	f.IntVar(&d.bufferMB, "capture-buffer-mb", 32, "kernel capture buffer in MiB")
	f.DurationVar(&d.capTimeout, "capture-timeout", time.Millisecond, "longest a captured packet waits in the kernel's ring before it is read (latency against wake-ups)")
}

// daemonConfig is the validated form of daemonOptions.
type daemonConfig struct {
	logFile        string
	dump           *pcapdump.Config // nil: no dump
	secret         []byte
	name           string
	metricsAddr    string
	pprof          bool
	statsInterval  time.Duration
	captureBuffer  int // bytes
	captureTimeout time.Duration
}

// daemon gives the shared part of either daemon's configuration.
func (c *daemonConfig) daemon() *daemonConfig { return c }

// runDaemon is what both daemons' RunE do: read the config file under the
// flags, validate, open the log, run.
func runDaemon[C interface{ daemon() *daemonConfig }](cmd *cobra.Command, g *globalOptions, role string,
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
	lf, log, err := g.openLog(cfg.daemon().logFile, cmd.ErrOrStderr(), f)
	if err != nil {
		return err
	}
	defer lf.Close()
	return run(cmd.Context(), cfg, log, lf)
}

// config validates the shared options; errors name the flag or file key.
func (d *daemonOptions) config(from origin) (daemonConfig, error) {
	var c daemonConfig
	if d.logFile != "" {
		if err := checkDir(d.logFile); err != nil {
			return c, fmt.Errorf("%s %q: %w", from.name("log-file"), d.logFile, err)
		}
	}
	dump, err := d.dump.config(from)
	if err != nil {
		return c, err
	}
	if d.statsInterval < 0 {
		return c, fmt.Errorf("%s %v: must not be negative", from.name("stats-interval"), d.statsInterval)
	}
	if d.bufferMB < 1 || d.bufferMB > 4096 {
		return c, fmt.Errorf("%s %d: want 1..4096", from.name("capture-buffer-mb"), d.bufferMB)
	}
	if d.capTimeout < time.Millisecond || d.capTimeout > time.Second {
		return c, fmt.Errorf("%s %v: want 1ms..1s", from.name("capture-timeout"), d.capTimeout)
	}
	secret, err := readSecret(d.secretFile)
	if err != nil {
		return c, fmt.Errorf("%s: %w", from.name("secret-file"), err)
	}
	name := d.name
	if name == "" {
		name, _ = os.Hostname()
	}
	return daemonConfig{
		logFile: d.logFile, dump: dump, secret: secret, name: name,
		metricsAddr: d.metricsAddr, pprof: d.pprof, statsInterval: d.statsInterval,
		captureBuffer: d.bufferMB << 20, captureTimeout: d.capTimeout,
	}, nil
}

type dumpOptions struct {
	path  string
	maxMB int
	files int
}

func (d *dumpOptions) addFlags(f *pflag.FlagSet, dumped string) {
	f.StringVar(&d.path, "dump", "", "write "+dumped+" to this pcap file, rotated as FILE.1, FILE.2 ... (off if empty)")
	f.IntVar(&d.maxMB, "dump-max-mb", 100, "start a new dump file when the current one reaches this many MiB")
	f.IntVar(&d.files, "dump-files", 5, "dump files kept, the current one included")
}

// config validates the dump options; it returns nil when dumping is off.
func (d *dumpOptions) config(from origin) (*pcapdump.Config, error) {
	if d.maxMB < 1 || d.maxMB > 1<<20 {
		return nil, fmt.Errorf("%s %d: want 1..1048576", from.name("dump-max-mb"), d.maxMB)
	}
	if d.files < 1 || d.files > 1000 {
		return nil, fmt.Errorf("%s %d: want 1..1000", from.name("dump-files"), d.files)
	}
	if d.path == "" {
		return nil, nil
	}
	if err := checkDir(d.path); err != nil {
		return nil, fmt.Errorf("%s %q: %w", from.name("dump"), d.path, err)
	}
	if fi, err := os.Stat(d.path); err == nil && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s %q: want a regular file (it is rotated by renaming)", from.name("dump"), d.path)
	}
	return &pcapdump.Config{Path: d.path, MaxBytes: int64(d.maxMB) << 20, Files: d.files}, nil
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

// openDump opens the dump if one is configured; the returned dump is nil
// otherwise.
func openDump(cfg *pcapdump.Config, log *slog.Logger) (*pcapdump.Dump, error) {
	if cfg == nil {
		return nil, nil
	}
	d, err := pcapdump.Open(*cfg, log)
	if err != nil {
		return nil, fmt.Errorf("--dump: %w", err)
	}
	log.Info("dumping packets", "path", cfg.Path, "max_bytes", cfg.MaxBytes, "files", cfg.Files)
	return d, nil
}

// dumpSamples renders a dump's counters; none without a dump.
func dumpSamples(d *pcapdump.Dump) []metrics.Sample {
	if d == nil {
		return nil
	}
	st := d.Stats()
	return []metrics.Sample{
		{Name: "tcpshadow_dump_packets_total", Help: "Packets written to the pcap dump.", Value: float64(st.Packets)},
		{Name: "tcpshadow_dump_errors_total", Help: "Dump write, open and rotation errors.", Value: float64(st.Errors)},
		{Name: "tcpshadow_dump_dropped_total", Help: "Packets not dumped because of an error.", Value: float64(st.Dropped)},
		{Name: "tcpshadow_dump_rotations_total", Help: "Dump files started because the current one was full.", Value: float64(st.Rotations)},
	}
}

// reopenOnHangup reopens the log file and the dump on every SIGHUP until
// the returned stop is called.
func reopenOnHangup(log *slog.Logger, lf *logfile.File, dump *pcapdump.Dump) (stop func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-sig:
				reopen(log, lf, dump)
			}
		}
	}()
	return func() {
		signal.Stop(sig)
		close(done)
		wg.Wait()
	}
}

// reopen reopens the log file and the dump; a failure keeps the old file.
func reopen(log *slog.Logger, lf *logfile.File, dump *pcapdump.Dump) {
	if err := lf.Reopen(); err != nil {
		log.Error("reopen log file; still writing the old one", "path", lf.Path(), "err", err)
	}
	dumpPath := ""
	if dump != nil {
		dumpPath = dump.Path()
		if err := dump.Reopen(); err != nil {
			log.Error("reopen dump file", "path", dumpPath, "err", err)
		}
	}
	log.Info("reopened on SIGHUP", "log_file", lf.Path(), "dump", dumpPath)
}

// origin says where each option came from, so a validation error names
// what the user wrote: the flag, or the config file's key.
type origin struct {
	table string            // the config file's table for the command; empty without a file
	keys  map[string]string // flag name → file key, for the options the file set
}

// name names a flag's option: "--linger", or "copy.linger" when the file
// set it.
func (o origin) name(flag string) string {
	if k, ok := o.keys[flag]; ok {
		return k
	}
	return "--" + flag
}

// item names element i of a list option: "--map", or "copy.map[1]".
func (o origin) item(flag string, i int) string {
	if k, ok := o.keys[flag]; ok {
		return fmt.Sprintf("%s[%d]", k, i)
	}
	return "--" + flag
}

// missing names a required option nobody gave.
func (o origin) missing(flag string) string {
	if o.table == "" {
		return "--" + flag
	}
	return fmt.Sprintf("%s (--%s)", conffile.KeyName(o.table, flag), flag)
}

// Config file layout: one table per daemon; the logging keys both share
// sit at the top level.
var (
	fileTables    = []string{"copy", "intercept"}
	topLevelFlags = []string{"log-format", "log-level", "log-file"}
	notInFile     = []string{"help", "config"}
)

// daemonCmd returns a fresh, unattached command for a table, with the
// root's logging flags added, and its options.
func daemonCmd(table string) (*cobra.Command, *globalOptions, any) {
	g := &globalOptions{}
	var cmd *cobra.Command
	var opts any
	switch table {
	case "copy":
		o := &copyOptions{}
		cmd, opts = newCopyCmdWith(g, o), o
	case "intercept":
		o := &interceptOptions{}
		cmd, opts = newInterceptCmdWith(g, o), o
	default:
		panic("no daemon " + table)
	}
	g.addFlags(cmd.Flags())
	return cmd, g, opts
}

// tableFlags lists the flags a table's keys set: every flag of the
// daemon but the top-level and command-line-only ones.
func tableFlags(table string) []string {
	cmd, _, _ := daemonCmd(table)
	var out []string
	fs := cmd.Flags()
	fs.SortFlags = false // in the order the command defines them
	fs.VisitAll(func(f *pflag.Flag) {
		if !slices.Contains(topLevelFlags, f.Name) && !slices.Contains(notInFile, f.Name) {
			out = append(out, f.Name)
		}
	})
	return out
}

// applyConfigFile fills the flags of fs, the flags of the daemon reading
// table, from the config file at path, except flags set on the command
// line. The other daemon's table is type-checked too, so a mistake
// anywhere in a shared file fails at startup.
func applyConfigFile(fs *pflag.FlagSet, table, path string) (origin, error) {
	if path == "" {
		return origin{}, nil
	}
	f, err := conffile.Load(path)
	if err != nil {
		return origin{}, err
	}
	if !f.Has(table) {
		return origin{}, fmt.Errorf("config %s: no [%s] table for the %s daemon", path, table, table)
	}
	return applyFile(f, fs, table)
}

func applyFile(f *conffile.File, fs *pflag.FlagSet, table string) (origin, error) {
	if err := checkTables(f); err != nil {
		return origin{}, err
	}
	for _, other := range fileTables {
		if other != table && f.Has(other) {
			scratch, _, _ := daemonCmd(other)
			if _, err := f.Apply(scratch.Flags(), other, tableFlags(other)); err != nil {
				return origin{}, err
			}
		}
	}
	from := origin{table: table, keys: make(map[string]string)}
	for _, t := range []string{"", table} {
		allowed := topLevelFlags
		if t != "" {
			allowed = tableFlags(t)
		}
		keys, err := f.Apply(fs, t, allowed)
		if err != nil {
			return origin{}, err
		}
		for flag, key := range keys {
			from.keys[flag] = key
		}
	}
	return from, nil
}

// errNoTable is returned by config check for a file with neither table.
var errNoTable = errors.New("want a [copy] or an [intercept] table")
