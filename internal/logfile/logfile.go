// Package logfile is a daemon's log destination: standard error, or a file
// that Reopen (on SIGHUP) closes and opens again by name, so logrotate can
// move it away without stopping the daemon. It owns the file and nothing
// else; formatting is log/slog's. It never follows a symbolic link at the
// path, nor writes to anything but a regular file, and creates the file
// mode 0600 only where none is: a daemon running as root must not be
// turned into a way to append to another file.
package logfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"syscall"
)

// File is an io.Writer to a log file, safe for concurrent use.
type File struct {
	path     string
	fallback io.Writer // used when path is empty

	mu     sync.Mutex // guards the fields below; held across each Write so a reopen never splits a record
	f      *os.File
	closed bool
}

// Open opens path for appending, creating it (mode 0600) if needed. With an
// empty path the File writes to fallback and Reopen does nothing.
func Open(path string, fallback io.Writer) (*File, error) {
	l := &File{path: path, fallback: fallback}
	if path == "" {
		return l, nil
	}
	f, err := open(path)
	if err != nil {
		return nil, err
	}
	l.f = f
	return l, nil
}

// open appends to the regular file at path, or creates it, never
// following a symbolic link: O_NOFOLLOW on the existing file, O_EXCL (which
// refuses any link) on a new one. O_NONBLOCK keeps a FIFO at the path from
// blocking the open; it changes nothing for a regular file.
func open(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	}
	if err != nil {
		return nil, fmt.Errorf("open log file: %w", err)
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("open log file %s: not a regular file", path)
	}
	return f, nil
}

// Path returns the file's path, empty for the fallback.
func (l *File) Path() string { return l.path }

func (l *File) Write(p []byte) (int, error) {
	if l.path == "" {
		return l.fallback.Write(p)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return 0, os.ErrClosed
	}
	return l.f.Write(p)
}

// Reopen opens the path anew and switches to it. If that fails the File
// goes on writing to the file it had.
func (l *File) Reopen() error {
	if l.path == "" {
		return nil
	}
	f, err := open(l.path)
	if err != nil {
		return err
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return f.Close()
	}
	old := l.f
	l.f = f
	l.mu.Unlock()
	if old != nil {
		return old.Close()
	}
	return nil
}

// Close closes the file; later writes fail with os.ErrClosed.
func (l *File) Close() error {
	if l.path == "" {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
