package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/internal/logfile"
	"github.com/tcpshadow/tcpshadow/internal/metrics"
	"github.com/tcpshadow/tcpshadow/internal/pcapdump"
	"github.com/tcpshadow/tcpshadow/internal/rawsock"
	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// This file is what both daemons share: what they take from the host,
// the budgets, the checks of their common fields, the dump and SIGHUP.

// DefaultMaxCPU is both daemons' default CPU budget: half the host's CPUs.
// The copier shares its host with production; and neither daemon gains
// from more, whereas an idle P to hand work to makes the Go scheduler wake
// threads for every packet.
func DefaultMaxCPU() int { return max(1, runtime.NumCPU()/2) }

// host is what the daemons take from the machine; tests put in-memory
// captures and senders here, and leave the process's limits alone.
type host struct {
	openCapture func(capture.Config) (capture.Source, error)
	openMirror  func(capture.MirrorConfig) (capture.Source, error)
	// oneRing captures prod's side in the client capture's ring
	// (capture.Outbound) rather than with a capture of its own.
	oneRing bool
	// openSender opens one worker's way to the shadow and what closes it.
	openSender func() (tcpstate.Sender, io.Closer, error)
	listen     func(addr string) (net.Listener, error)
	// isLocal follows the host's own addresses, for port-only maps; nil
	// copies a port-only map's traffic to any address.
	isLocal func(ctx context.Context, log *slog.Logger) (func(netip.Addr) bool, error)
	// limit holds the process to its budget; maxMemory 0 leaves memory be.
	limit func(maxCPU int, maxMemory int64)
}

func liveHost() host {
	return host{
		openCapture: capture.OpenLive,
		openMirror:  capture.OpenMirror,
		oneRing:     true,
		openSender: func() (tcpstate.Sender, io.Closer, error) {
			s, err := rawsock.Open()
			if err != nil {
				return nil, nil, err
			}
			return rawsock.NewBatch(s), s, nil // one sendmmsg per worker batch
		},
		listen:  func(addr string) (net.Listener, error) { return net.Listen("tcp", addr) },
		isLocal: followLocalAddrs,
		limit: func(maxCPU int, maxMemory int64) {
			// Leave production its CPUs and memory: the Go scheduler and
			// collector are held to the budget, the engine sheds load
			// past it.
			runtime.GOMAXPROCS(maxCPU)
			if maxMemory > 0 {
				debug.SetMemoryLimit(maxMemory)
			}
		},
	}
}

// validateCapture checks the capture settings both daemons share.
func validateCapture(c *capture.Config) error {
	if c.Interface == "" {
		return fieldErr("Capture.Interface", nil, "is required")
	}
	if c.SnapLen < 128 || c.SnapLen > capture.MaxSnapLen {
		return fieldErr("Capture.SnapLen", c.SnapLen, fmt.Sprintf("want 128..%d", capture.MaxSnapLen))
	}
	if c.BufferSize < 1<<20 || c.BufferSize > 4096<<20 {
		return fieldErr("Capture.BufferSize", c.BufferSize, "want 1..4096 MiB")
	}
	if c.InitialBufferSize != 0 && (c.InitialBufferSize < 1<<20 || c.InitialBufferSize > 4096<<20) {
		return fieldErr("Capture.InitialBufferSize", c.InitialBufferSize, "want 1..4096 MiB, or 0 for the snap length's default")
	}
	if c.Timeout < time.Millisecond || c.Timeout > time.Second {
		return fieldErr("Capture.Timeout", c.Timeout, "want 1ms..1s")
	}
	return nil
}

// validateRun checks the budget and reporting fields both daemons share.
func validateRun(maxCPU int, statsInterval time.Duration, dump pcapdump.Config) error {
	if maxCPU < 1 || maxCPU > 1024 {
		return fieldErr("MaxCPU", maxCPU, "want 1..1024")
	}
	if statsInterval < 0 {
		return fieldErr("StatsInterval", statsInterval, "must not be negative")
	}
	// Checked whether or not a dump is on, so that a bad bound fails
	// before anyone turns it on.
	if dump.MaxBytes < 1<<20 || dump.MaxBytes > 1<<40 {
		return fieldErr("Dump.MaxBytes", dump.MaxBytes, "want 1..1048576 MiB")
	}
	if dump.Files < 1 || dump.Files > 1000 {
		return fieldErr("Dump.Files", dump.Files, "want 1..1000")
	}
	if dump.Path == "" {
		return nil
	}
	dir := filepath.Dir(dump.Path)
	if fi, err := os.Stat(dir); err != nil {
		return &FieldError{Field: "Dump.Path", Value: dump.Path, Err: fmt.Errorf("want a file in an existing directory: %w", err)}
	} else if !fi.IsDir() {
		return fieldErr("Dump.Path", dump.Path, fmt.Sprintf("want a file in an existing directory: %s is not a directory", dir))
	}
	if fi, err := os.Lstat(dump.Path); err == nil && !fi.Mode().IsRegular() {
		return fieldErr("Dump.Path", dump.Path, "want a regular file, not a link (it is rotated by renaming)")
	}
	return nil
}

// validateMetrics checks the metrics endpoint both daemons share: the
// profiler only on a loopback address.
func validateMetrics(addr string, pprof bool) error {
	if pprof && !metrics.IsLoopback(addr) {
		return &FieldError{Field: "Pprof", Value: pprof, Err: fmt.Errorf("with MetricsAddr %q: %w", addr, metrics.ErrPprofNotLoopback)}
	}
	return nil
}

// openDump opens the dump if cfg names a file; the returned dump is nil
// otherwise.
func openDump(cfg pcapdump.Config, log *slog.Logger) (*pcapdump.Dump, error) {
	if cfg.Path == "" {
		return nil, nil
	}
	d, err := pcapdump.Open(cfg, log)
	if err != nil {
		return nil, inField("Dump.Path", err)
	}
	log.Info("dumping packets", "path", cfg.Path, "max_bytes", cfg.MaxBytes, "files", cfg.Files)
	return d, nil
}

// reopenOnHangup reopens the log file and the dump (either may be nil) on
// every SIGHUP until the returned stop is called, then calls each of also
// (the copy daemon's re-reading of its controls).
func reopenOnHangup(log *slog.Logger, lf *logfile.File, dump *pcapdump.Dump, also ...func()) (stop func()) {
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
				for _, f := range also {
					f()
				}
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
	logPath := ""
	if lf != nil {
		logPath = lf.Path()
		if err := lf.Reopen(); err != nil {
			log.Error("reopen log file; still writing the old one", "path", logPath, "err", err)
		}
	}
	dumpPath := ""
	if dump != nil {
		dumpPath = dump.Path()
		if err := dump.Reopen(); err != nil {
			log.Error("reopen dump file", "path", dumpPath, "err", err)
		}
	}
	log.Info("reopened on SIGHUP", "log_file", logPath, "dump", dumpPath)
}
