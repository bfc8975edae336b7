package compare

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// Divergence log defaults and bounds.
const (
	DefaultLogMaxBytes  = 16 << 20
	DefaultLogFiles     = 3
	DefaultLogPerSecond = 100
	maxLogFiles         = 20
	minLogMaxBytes      = 4 << 10
)

// LogConfig configures the divergence log: JSON lines at Path, moved to
// Path.1 (and Path.1 to Path.2, …, up to Files old ones) when MaxBytes
// would be passed, at most PerSecond lines a second (the rest counted as
// suppressed). Zero values take the defaults.
type LogConfig struct {
	Path      string
	MaxBytes  int64
	Files     int
	PerSecond int
}

// divergenceEntry is one line of the divergence log.
type divergenceEntry struct {
	Time     time.Time `json:"time"`
	Map      string    `json:"map"`
	Client   string    `json:"client"`
	Protocol string    `json:"protocol"`
	Request  string    `json:"request"`
	Prod     string    `json:"prod"`
	Shadow   string    `json:"shadow"`
	ProdMS   *float64  `json:"prod_ms"`          // null: no answer
	ShadowMS *float64  `json:"shadow_ms"`        // null: no answer
	Slower   bool      `json:"slower,omitempty"` // answered alike, the shadow much later (SlowerMargin)
}

// divergenceLog writes divergence entries, bounded in size, files and
// rate. Written by the consumer only; its counters are read anywhere.
type divergenceLog struct {
	cfg  LogConfig
	f    *os.File
	size int64

	second   int64 // the Unix second the rate budget is for
	inSecond int

	logged, suppressed, errs atomic.Uint64
}

func openDivergenceLog(cfg LogConfig) (*divergenceLog, error) {
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultLogMaxBytes
	}
	if cfg.Files == 0 {
		cfg.Files = DefaultLogFiles
	}
	if cfg.PerSecond == 0 {
		cfg.PerSecond = DefaultLogPerSecond
	}
	if cfg.MaxBytes < minLogMaxBytes {
		return nil, fmt.Errorf("divergence log: max size %d: want at least %d bytes", cfg.MaxBytes, minLogMaxBytes)
	}
	if cfg.Files < 0 || cfg.Files > maxLogFiles {
		return nil, fmt.Errorf("divergence log: %d old files: want 0 to %d", cfg.Files, maxLogFiles)
	}
	if cfg.PerSecond < 0 {
		return nil, fmt.Errorf("divergence log: %d lines a second: want a positive rate", cfg.PerSecond)
	}
	l := &divergenceLog{cfg: cfg}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

// open appends to the regular file at the path or creates it (mode 0600),
// never following a symbolic link, as internal/logfile does: a daemon
// running as root must not be turned into a way to write another file.
func (l *divergenceLog) open() error {
	path := l.cfg.Path
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	}
	if err != nil {
		return fmt.Errorf("open divergence log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return fmt.Errorf("open divergence log %s: not a regular file", path)
	}
	l.f, l.size = f, fi.Size()
	return nil
}

// write appends one entry, rotating first if it would pass MaxBytes.
func (l *divergenceLog) write(e divergenceEntry) {
	if s := e.Time.Unix(); s != l.second {
		l.second, l.inSecond = s, 0
	}
	if l.inSecond >= l.cfg.PerSecond {
		l.suppressed.Add(1)
		return
	}
	l.inSecond++
	line, err := json.Marshal(e)
	if err != nil {
		l.errs.Add(1)
		return
	}
	line = append(line, '\n')
	if l.size+int64(len(line)) > l.cfg.MaxBytes {
		if err := l.rotate(); err != nil {
			l.errs.Add(1)
			return
		}
	}
	if l.f == nil {
		l.errs.Add(1)
		return
	}
	n, err := l.f.Write(line)
	l.size += int64(n)
	if err != nil {
		l.errs.Add(1)
		return
	}
	l.logged.Add(1)
}

// rotate moves path.k to path.k+1 (the oldest falls off), path to path.1,
// and opens a new path. With Files 0 the file is emptied instead. Rename
// replaces whatever is at the target, a link included, without following
// it.
func (l *divergenceLog) rotate() error {
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	p := l.cfg.Path
	if l.cfg.Files == 0 {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("rotate divergence log: %w", err)
		}
	} else {
		for k := l.cfg.Files - 1; k >= 1; k-- {
			err := os.Rename(p+"."+strconv.Itoa(k), p+"."+strconv.Itoa(k+1))
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("rotate divergence log: %w", err)
			}
		}
		if err := os.Rename(p, p+".1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("rotate divergence log: %w", err)
		}
	}
	return l.open()
}

func (l *divergenceLog) close() error {
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
