// Package pcapdump writes IP packets to a size-bounded, rotating set of
// pcap files for debugging (a daemon's --dump), and wraps the datapath's
// ends so that they feed one: Tee for a capture source, TeeSender for a
// sender toward the shadow.
//
// It owns the dump files (creation, rotation, reopening on SIGHUP) and
// counts its own failures; it never fails its callers. It does not decide
// what is dumped: whoever wraps a source or a sender does. It never follows
// a symbolic link at a dump's path nor writes into an existing file: each
// file is created anew (O_EXCL|O_NOFOLLOW, mode 0600).
package pcapdump

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/tcpshadow/tcpshadow/capture"
)

// Config configures a Dump.
type Config struct {
	// Path is the current file. Older ones are Path.1 (the newest) to
	// Path.<Files-1>, as logrotate names them.
	Path string
	// MaxBytes bounds each file: a packet that would grow the current
	// file past it starts a new one (a file holds at least one packet,
	// whatever the bound). Default 100 MiB.
	MaxBytes int64
	// Files bounds how many files are kept, the current one included.
	// Default 5.
	Files int
}

// DefaultConfig returns the defaults, the only place they are written:
// Open takes zero fields from it. It names no file.
func DefaultConfig() Config { return Config{MaxBytes: 100 << 20, Files: 5} }

// Stats counts what a Dump did.
type Stats struct {
	Packets   uint64 // packet records written
	Errors    uint64 // failed writes, flushes, opens and renames
	Dropped   uint64 // packets not written because of an error
	Rotations uint64 // files started because the current one was full
}

const (
	pcapHeaderLen = 24
	pcapRecordLen = 16 // per-packet record header
	// dumpRetry is how long a Dump that failed waits before opening a
	// fresh file, so a full disk costs one attempt a second, not one a
	// packet.
	dumpRetry = time.Second
	// dumpFlushEvery bounds how stale the file is while packets flow, so
	// tcpdump -r on a live dump sees recent packets.
	dumpFlushEvery = time.Second
)

// file is what a Dump writes to: an *os.File, or a failing fake in
// tests.
type file interface {
	io.WriteCloser
	Stat() (os.FileInfo, error)
}

// Dump writes IP packets to a size-bounded, rotating set of pcap files
// (LINKTYPE_RAW, microsecond timestamps) for debugging. It is safe for
// concurrent use: one mutex serialises the writers, which is acceptable
// because a dump is off unless asked for, and callers that do not dump
// never reach it. Errors never reach the caller: they are counted (Stats),
// logged once per failure, and the Dump starts a fresh file a second
// later.
type Dump struct {
	cfg    Config
	log    *slog.Logger
	create func(path string) (file, error) // opens a file for writing, truncated

	mu      sync.Mutex // guards the fields below
	f       file       // nil while broken or closed
	bw      *bufio.Writer
	pw      *pcapgo.Writer
	size    int64     // bytes in f, buffered ones included
	broken  bool      // an error stopped the dump; logged once until it recovers
	retryAt time.Time // when a broken Dump may open a fresh file
	closed  bool

	packets, errs, dropped, rotations atomic.Uint64

	stop     chan struct{}
	flushed  sync.WaitGroup
	stopOnce sync.Once
}

// Open starts a dump at cfg.Path. A non-empty file already there is
// rotated away first (Path → Path.1 ...), so a restart never appends to a
// file that may end in a torn record.
func Open(cfg Config, log *slog.Logger) (*Dump, error) {
	return open(cfg, log, func(path string) (file, error) {
		return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	})
}

func open(cfg Config, log *slog.Logger, create func(string) (file, error)) (*Dump, error) {
	if cfg.Path == "" {
		return nil, errors.New("dump: empty path")
	}
	def := DefaultConfig()
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = def.MaxBytes
	}
	if cfg.Files == 0 {
		cfg.Files = def.Files
	}
	if cfg.MaxBytes < pcapHeaderLen+pcapRecordLen {
		return nil, fmt.Errorf("dump %s: size bound of %d bytes too small", cfg.Path, cfg.MaxBytes)
	}
	if cfg.Files < 1 {
		return nil, fmt.Errorf("dump %s: want at least 1 file", cfg.Path)
	}
	d := &Dump{cfg: cfg, log: log, create: create, bw: bufio.NewWriterSize(nil, 64<<10), stop: make(chan struct{})}
	d.mu.Lock()
	err := d.openLocked()
	d.mu.Unlock()
	if err != nil {
		return nil, err
	}
	d.flushed.Add(1)
	go d.flusher()
	return d, nil
}

// Path returns the current file's path.
func (d *Dump) Path() string { return d.cfg.Path }

// Stats returns a snapshot of the counters.
func (d *Dump) Stats() Stats {
	return Stats{
		Packets: d.packets.Load(), Errors: d.errs.Load(),
		Dropped: d.dropped.Load(), Rotations: d.rotations.Load(),
	}
}

// WriteIP dumps one IP packet captured or sent at ts. Its length on the
// wire comes from its IP header, so a packet truncated by the capture's
// snap length is recorded as such (and link padding past the IP length is
// left out).
func (d *Dump) WriteIP(ts time.Time, pkt []byte) {
	n := ipLen(pkt)
	if n > 0 && n < len(pkt) {
		pkt = pkt[:n]
	}
	d.Write(ts, pkt, max(n, len(pkt)))
}

// ipLen returns the length an IP packet's header declares, or 0 if it
// declares none (IPv4 offloads, IPv6 jumbograms) or is not IP.
func ipLen(pkt []byte) int {
	switch {
	case len(pkt) >= 20 && pkt[0]>>4 == 4:
		return int(binary.BigEndian.Uint16(pkt[2:4]))
	case len(pkt) >= 40 && pkt[0]>>4 == 6:
		if pl := int(binary.BigEndian.Uint16(pkt[4:6])); pl > 0 {
			return 40 + pl
		}
	}
	return 0
}

// Write dumps pkt, whose length on the wire was origLen, as captured at
// ts. It does not keep pkt.
func (d *Dump) Write(ts time.Time, pkt []byte, origLen int) {
	if len(pkt) > capture.MaxSnapLen {
		pkt = pkt[:capture.MaxSnapLen]
	}
	origLen = max(origLen, len(pkt))
	rec := int64(pcapRecordLen + len(pkt))
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	if d.f == nil && !d.retryLocked() {
		d.dropped.Add(1)
		return
	}
	if d.size+rec > d.cfg.MaxBytes && d.size > pcapHeaderLen {
		if err := d.rotateLocked(); err != nil {
			d.failLocked("rotate", err)
			d.dropped.Add(1)
			return
		}
		d.rotations.Add(1)
	}
	ci := gopacket.CaptureInfo{Timestamp: ts, CaptureLength: len(pkt), Length: origLen}
	if err := d.pw.WritePacket(ci, pkt); err != nil {
		d.failLocked("write", err)
		d.dropped.Add(1)
		return
	}
	d.size += rec
	d.packets.Add(1)
}

// retryLocked opens a fresh file once the retry delay after a failure has
// passed, and reports whether the Dump can write.
func (d *Dump) retryLocked() bool {
	if time.Now().Before(d.retryAt) {
		return false
	}
	if err := d.openLocked(); err != nil {
		d.failLocked("open", err)
		return false
	}
	d.recoveredLocked()
	return true
}

func (d *Dump) recoveredLocked() {
	if d.broken {
		d.broken = false
		d.log.Info("dumping again", "path", d.cfg.Path)
	}
}

// failLocked abandons the current file after an error: the next write
// after dumpRetry starts a fresh one (rotating the broken one away). Only
// the first failure of a run of them is logged.
func (d *Dump) failLocked(what string, err error) {
	d.errs.Add(1)
	if d.f != nil {
		_ = d.f.Close()
		d.f = nil
	}
	d.bw.Reset(nil)
	d.retryAt = time.Now().Add(dumpRetry)
	if !d.broken {
		d.broken = true
		d.log.Warn("dump failed; packets are not dumped until it can be reopened",
			"path", d.cfg.Path, "op", what, "err", err, "retry_every", dumpRetry.String())
	}
}

// openLocked starts a new current file: a non-empty one already at the
// path is rotated away first, an empty one removed, so that the new file
// is created where none is. What is at the path is looked at, not what a
// symbolic link there points to (a link is refused).
func (d *Dump) openLocked() error {
	fi, err := os.Lstat(d.cfg.Path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("dump %s: %w", d.cfg.Path, err)
	case !fi.Mode().IsRegular():
		// Never rename, remove or write through a link, a device or a directory.
		return fmt.Errorf("dump %s: not a regular file", d.cfg.Path)
	case fi.Size() > 0:
		if err := d.shiftLocked(); err != nil {
			return err
		}
	default:
		if err := os.Remove(d.cfg.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("dump: %w", err)
		}
	}
	f, err := d.create(d.cfg.Path)
	if err != nil {
		return fmt.Errorf("dump: %w", err)
	}
	d.f = f
	d.bw.Reset(f)
	d.pw = pcapgo.NewWriter(d.bw)
	if err := d.pw.WriteFileHeader(capture.MaxSnapLen, layers.LinkTypeRaw); err != nil {
		_ = f.Close()
		d.f = nil
		return fmt.Errorf("dump %s: write header: %w", d.cfg.Path, err)
	}
	d.size = pcapHeaderLen
	return nil
}

// rotateLocked closes the current file and starts the next one.
func (d *Dump) rotateLocked() error {
	if d.f != nil {
		err := d.bw.Flush()
		if cerr := d.f.Close(); err == nil {
			err = cerr
		}
		d.f = nil
		if err != nil {
			return fmt.Errorf("dump %s: close: %w", d.cfg.Path, err)
		}
	}
	return d.openLocked()
}

// shiftLocked renames Path.i to Path.i+1, oldest first, dropping the
// oldest beyond Files, then Path to Path.1.
func (d *Dump) shiftLocked() error {
	name := func(i int) string {
		if i == 0 {
			return d.cfg.Path
		}
		return d.cfg.Path + "." + strconv.Itoa(i)
	}
	last := d.cfg.Files - 1
	if err := os.Remove(name(last)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("dump: %w", err)
	}
	for i := last - 1; i >= 0; i-- {
		if err := os.Rename(name(i), name(i+1)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("dump: %w", err)
		}
	}
	return nil
}

// Reopen is for SIGHUP: if the current file was moved away (logrotate),
// it is closed and a new one started at Path; if it is still there, the
// Dump flushes and goes on writing it. A broken Dump retries at once.
func (d *Dump) Reopen() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	if d.f != nil {
		if err := d.bw.Flush(); err != nil {
			d.failLocked("flush", err)
		}
	}
	if d.f != nil {
		cur, err1 := d.f.Stat()
		at, err2 := os.Lstat(d.cfg.Path)
		if err1 == nil && err2 == nil && os.SameFile(cur, at) {
			return nil
		}
		_ = d.f.Close()
		d.f = nil
	}
	if err := d.openLocked(); err != nil {
		d.failLocked("reopen", err)
		return err
	}
	d.recoveredLocked()
	return nil
}

// flusher flushes buffered packets every dumpFlushEvery until Close.
func (d *Dump) flusher() {
	defer d.flushed.Done()
	t := time.NewTicker(dumpFlushEvery)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
			d.mu.Lock()
			if d.f != nil && d.bw.Buffered() > 0 {
				if err := d.bw.Flush(); err != nil {
					d.failLocked("flush", err)
				}
			}
			d.mu.Unlock()
		}
	}
}

// Close flushes and closes the current file; later writes are ignored.
func (d *Dump) Close() error {
	d.stopOnce.Do(func() { close(d.stop) })
	d.flushed.Wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	if d.f == nil {
		return nil
	}
	err := d.bw.Flush()
	if cerr := d.f.Close(); err == nil {
		err = cerr
	}
	d.f = nil
	if err != nil {
		d.errs.Add(1)
		return fmt.Errorf("dump %s: close: %w", d.cfg.Path, err)
	}
	return nil
}

// Tee returns a capture source that dumps every packet it reads from src
// to d before returning it.
func Tee(src capture.Source, d *Dump) capture.Source { return &teeSource{Source: src, d: d} }

type teeSource struct {
	capture.Source
	d *Dump
}

func (t *teeSource) Read() ([]byte, time.Time, error) {
	pkt, ts, err := t.Source.Read()
	if err == nil {
		t.d.WriteIP(ts, pkt)
	}
	return pkt, ts, err
}
