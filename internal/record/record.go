// Package record writes the packets a copy daemon captures to a
// directory of rotating pcap files (copy --record), for a later replay:
// both directions of the mapped traffic, as the captures read them.
//
// It owns the recording's queues, files and their bounds: a file is
// closed once it holds MaxBytes or is MaxAge old (tcpdump's -C and -G),
// and the oldest are removed beyond MaxFiles. A file is written as
// NAME.pcap.part and renamed NAME.pcap once closed, so that a replay of
// the directory only ever reads whole files; names sort in time order.
//
// It must never slow or block the capture path: each capture goroutine
// has its own bounded, lock-free queue (a Tap), a packet that does not
// fit is dropped and counted, and nothing is allocated per packet. Disk
// errors are counted and logged once, never returned to the capture; it
// retries a second later with a fresh file. It never follows a symbolic
// link nor writes into an existing file (O_EXCL|O_NOFOLLOW, mode 0600).
package record

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/pcapfile"
)

// Config configures a Recorder; a zero field takes DefaultConfig's.
type Config struct {
	Dir      string        // where the files go; empty: no recording
	MaxBytes int64         // a file is closed once it would grow past this
	MaxAge   time.Duration // ... or once it is this old; 0: no age bound
	MaxFiles int           // completed files kept (the one being written aside); the oldest go
	// QueueBytes bounds each capture goroutine's queue.
	QueueBytes int
}

// DefaultConfig returns the defaults, the only place they are written.
// It names no directory.
func DefaultConfig() Config {
	return Config{MaxBytes: 100 << 20, MaxFiles: 10, QueueBytes: 16 << 20}
}

// Bounds on a Config, checked by Validate.
const (
	MinBytes    = 1 << 20
	MaxFilesMax = 100000
)

// FieldError is a Config field out of its bounds.
type FieldError struct {
	Field string // "MaxBytes"
	Value any
	Err   error
}

func (e *FieldError) Error() string { return fmt.Sprintf("%s %v: %v", e.Field, e.Value, e.Err) }
func (e *FieldError) Unwrap() error { return e.Err }

// Validate checks the bounds, whether or not a directory is named; an
// error is a *FieldError.
func (c *Config) Validate() error {
	bad := func(field string, v any, why string) error {
		return &FieldError{Field: field, Value: v, Err: errors.New(why)}
	}
	switch {
	case c.MaxBytes < MinBytes || c.MaxBytes > 1<<40:
		return bad("MaxBytes", c.MaxBytes, "want a size of 1MiB..1TiB")
	case c.MaxAge < 0:
		return bad("MaxAge", c.MaxAge, "must not be negative")
	case c.MaxAge > 0 && c.MaxAge < time.Second:
		return bad("MaxAge", c.MaxAge, "want at least 1s, or 0 for no age bound")
	case c.MaxFiles < 1 || c.MaxFiles > MaxFilesMax:
		return bad("MaxFiles", c.MaxFiles, fmt.Sprintf("want 1..%d", MaxFilesMax))
	case c.QueueBytes < minTapBytes || c.QueueBytes > 1<<30:
		return bad("QueueBytes", c.QueueBytes, "want 64KiB..1GiB")
	}
	if c.Dir == "" {
		return nil
	}
	fi, err := os.Stat(c.Dir)
	if err != nil {
		return &FieldError{Field: "Dir", Value: c.Dir, Err: fmt.Errorf("want an existing directory: %w", err)}
	}
	if !fi.IsDir() {
		return bad("Dir", c.Dir, "want an existing directory: it is not one")
	}
	return nil
}

// Stats counts what a Recorder did.
type Stats struct {
	Packets   uint64 // written
	Bytes     uint64 // of packets written
	Dropped   uint64 // not written: a full queue, or a disk error
	Files     uint64 // files completed
	Removed   uint64 // old files removed to keep MaxFiles
	Errors    uint64 // failed creates, writes, renames, removals
	Rotations uint64 // files closed for their size or age bound
}

const (
	filePrefix = "tcpshadow-"
	fileSuffix = ".pcap"
	partSuffix = ".part"
	// pollEvery is how often the writer looks at the queues when they
	// were empty: they must hold this long of traffic.
	pollEvery  = 5 * time.Millisecond
	flushEvery = time.Second
	retryAfter = time.Second
)

// Recorder writes what its Taps are handed to the files.
type Recorder struct {
	cfg Config
	log *slog.Logger

	mu   sync.Mutex // guards taps
	taps []*tap

	// The writer's own.
	f       *os.File
	bw      *bufio.Writer
	pw      *pcapfile.Writer
	name    string // the file being written, without partSuffix
	size    int64
	opened  time.Time
	seq     int
	retryAt time.Time
	broken  bool
	kept    []string // completed files, oldest first

	packets, bytes, dropped, files, removed, errs, rotations atomic.Uint64

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// Open starts a recorder in cfg.Dir; its writer runs until Close.
func Open(cfg Config, log *slog.Logger) (*Recorder, error) {
	def := DefaultConfig()
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = def.MaxBytes
	}
	if cfg.MaxFiles == 0 {
		cfg.MaxFiles = def.MaxFiles
	}
	if cfg.QueueBytes == 0 {
		cfg.QueueBytes = def.QueueBytes
	}
	if cfg.Dir == "" {
		return nil, errors.New("record: no directory")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("record: %w", err)
	}
	r := &Recorder{cfg: cfg, log: log, bw: bufio.NewWriterSize(nil, 256<<10), stop: make(chan struct{}), done: make(chan struct{})}
	// Files of an earlier run count against MaxFiles too.
	ents, err := os.ReadDir(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("record: %w", err)
	}
	for _, e := range ents {
		if n := e.Name(); e.Type().IsRegular() && strings.HasPrefix(n, filePrefix) && strings.HasSuffix(n, fileSuffix) {
			r.kept = append(r.kept, filepath.Join(cfg.Dir, n))
		}
	}
	slices.Sort(r.kept)
	go r.run()
	return r, nil
}

// Tap is one capture goroutine's way into a Recorder. Its Write must be
// called from one goroutine.
type Tap struct{ t *tap }

// Tap returns a queue for one more capture goroutine.
func (r *Recorder) Tap() *Tap {
	t := newTap(r.cfg.QueueBytes)
	r.mu.Lock()
	r.taps = append(r.taps, t)
	r.mu.Unlock()
	return &Tap{t: t}
}

// Write queues a copy of one IP packet captured at ts; it never blocks.
// Its length on the wire is its IP header's, so a packet cut by the snap
// length is recorded as such.
func (t *Tap) Write(ts time.Time, pkt []byte) {
	if len(pkt) > pcapfile.MaxRecordLen {
		pkt = pkt[:pcapfile.MaxRecordLen]
	}
	t.t.put(ts.UnixNano(), pkt, ipLen(pkt))
}

// ipLen returns the length an IP header declares, or 0.
func ipLen(pkt []byte) int {
	switch {
	case len(pkt) >= 20 && pkt[0]>>4 == 4:
		return int(pkt[2])<<8 | int(pkt[3])
	case len(pkt) >= 40 && pkt[0]>>4 == 6:
		return 40 + (int(pkt[4])<<8 | int(pkt[5]))
	}
	return 0
}

// Stats returns the counters.
func (r *Recorder) Stats() Stats {
	st := Stats{
		Packets: r.packets.Load(), Bytes: r.bytes.Load(), Dropped: r.dropped.Load(),
		Files: r.files.Load(), Removed: r.removed.Load(), Errors: r.errs.Load(), Rotations: r.rotations.Load(),
	}
	r.mu.Lock()
	for _, t := range r.taps {
		st.Dropped += t.dropped.Load()
	}
	r.mu.Unlock()
	return st
}

// Close writes what is queued, completes the current file and stops.
func (r *Recorder) Close() error {
	r.once.Do(func() { close(r.stop) })
	<-r.done
	return nil
}

// run is the writer: it merges the taps' records by time into the
// files until Close, then drains them.
func (r *Recorder) run() {
	defer close(r.done)
	poll := time.NewTicker(pollEvery)
	defer poll.Stop()
	lastFlush := time.Now()
	for {
		n := r.drain()
		now := time.Now()
		if r.f != nil && now.Sub(lastFlush) >= flushEvery {
			if err := r.bw.Flush(); err != nil {
				r.fail("flush", err)
			}
			lastFlush = now
		}
		if r.f != nil && r.cfg.MaxAge > 0 && now.Sub(r.opened) >= r.cfg.MaxAge {
			r.rotate()
		}
		if n > 0 {
			continue
		}
		select {
		case <-r.stop:
			r.drain()
			r.complete()
			return
		case <-poll.C:
		}
	}
}

// drain writes what the taps hold now, oldest first across them, and
// returns how many records it took.
func (r *Recorder) drain() int {
	r.mu.Lock()
	taps := r.taps
	r.mu.Unlock()
	n := 0
	for {
		var best *tap
		var bestTS int64
		for _, t := range taps {
			if ts, _, _, ok := t.peek(); ok && (best == nil || ts < bestTS) {
				best, bestTS = t, ts
			}
		}
		if best == nil {
			return n
		}
		ts, pkt, orig, _ := best.peek()
		r.write(ts, pkt, orig)
		best.take()
		n++
	}
}

// write writes one record, opening or rotating the file as its bounds
// say; a failure drops the record, counted.
func (r *Recorder) write(ts int64, pkt []byte, orig int) {
	rec := int64(pcapfile.RecordOverhead + len(pkt))
	if r.f != nil && (r.size+rec > r.cfg.MaxBytes && r.size > pcapfile.HeaderLen ||
		r.cfg.MaxAge > 0 && time.Since(r.opened) >= r.cfg.MaxAge) {
		r.rotate()
	}
	if r.f == nil && !r.open(ts) {
		r.dropped.Add(1)
		return
	}
	if err := r.pw.Write(ts, pkt, orig); err != nil {
		r.fail("write", err)
		r.dropped.Add(1)
		return
	}
	r.size += rec
	r.packets.Add(1)
	r.bytes.Add(uint64(len(pkt)))
}

// open starts a file named after ts, the time of its first packet.
func (r *Recorder) open(ts int64) bool {
	now := time.Now()
	if now.Before(r.retryAt) {
		return false
	}
	r.seq++
	stamp := time.Unix(0, ts).UTC().Format("20060102T150405.000Z")
	name := filepath.Join(r.cfg.Dir, fmt.Sprintf("%s%s-%06d%s", filePrefix, stamp, r.seq, fileSuffix))
	f, err := os.OpenFile(name+partSuffix, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		r.fail("create", err)
		return false
	}
	r.bw.Reset(f)
	pw, err := pcapfile.NewWriter(r.bw, pcapfile.LinkRaw)
	if err != nil {
		f.Close()
		os.Remove(name + partSuffix)
		r.fail("write header", err)
		return false
	}
	r.f, r.pw, r.name, r.size, r.opened = f, pw, name, pcapfile.HeaderLen, now
	if r.broken {
		r.broken = false
		r.log.Info("recording again", "dir", r.cfg.Dir)
	}
	return true
}

// rotate completes the current file for its size or age bound.
func (r *Recorder) rotate() {
	r.rotations.Add(1)
	r.complete()
}

// complete flushes and closes the current file, renames it to its final
// name and removes the oldest files beyond MaxFiles.
func (r *Recorder) complete() {
	if r.f == nil {
		return
	}
	err := r.bw.Flush()
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	r.f = nil
	r.bw.Reset(nil)
	if err == nil {
		err = os.Rename(r.name+partSuffix, r.name)
	}
	if err != nil {
		r.fail("complete", err)
		return
	}
	r.files.Add(1)
	r.kept = append(r.kept, r.name)
	for len(r.kept) > r.cfg.MaxFiles {
		if err := os.Remove(r.kept[0]); err != nil && !errors.Is(err, os.ErrNotExist) {
			r.errs.Add(1)
		} else {
			r.removed.Add(1)
		}
		r.kept = r.kept[1:]
	}
}

// fail abandons the current file after an error; the next packet after
// retryAfter starts a fresh one. Only the first of a run of failures is
// logged.
func (r *Recorder) fail(op string, err error) {
	r.errs.Add(1)
	if r.f != nil {
		r.f.Close()
		r.f = nil
		r.bw.Reset(nil)
		// What was written stays as .part: complete up to its last flush.
	}
	r.retryAt = time.Now().Add(retryAfter)
	if !r.broken {
		r.broken = true
		r.log.Warn("recording failed; packets are dropped until a new file can be written",
			"dir", r.cfg.Dir, "op", op, "err", err, "retry_every", retryAfter.String())
	}
}
