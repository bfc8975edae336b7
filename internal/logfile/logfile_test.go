package logfile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReopen does what logrotate does: move the file, then reopen. Lines
// before go to the moved file, lines after to a new one at the path.
func TestReopen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "tcpshadow.log")
	if err := os.WriteFile(p, []byte("earlier run\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := Open(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	l.Write([]byte("one\n"))
	if err := os.Rename(p, p+".1"); err != nil {
		t.Fatal(err)
	}
	l.Write([]byte("two\n"))
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	l.Write([]byte("three\n"))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, p+".1"); got != "earlier run\none\ntwo\n" {
		t.Errorf("moved file %q: want the earlier run's line kept and appended to", got)
	}
	if got := read(t, p); got != "three\n" {
		t.Errorf("new file %q", got)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode())
	}
	if _, err := l.Write([]byte("late\n")); !errors.Is(err, os.ErrClosed) {
		t.Errorf("write after Close: %v, want os.ErrClosed", err)
	}
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Write([]byte("late\n")); !errors.Is(err, os.ErrClosed) {
		t.Errorf("write after Close and Reopen: %v, want os.ErrClosed", err)
	}
}

// TestReopenFailureKeepsOld checks a failed reopen leaves the old file in
// use.
func TestReopenFailureKeepsOld(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "logs")
	os.Mkdir(dir, 0o700)
	p := filepath.Join(dir, "x.log")
	l, err := Open(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	os.Rename(dir, dir+".old")
	if err := l.Reopen(); err == nil {
		t.Fatal("reopen into a missing directory succeeded")
	}
	if _, err := l.Write([]byte("still here\n")); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(dir+".old", "x.log")); got != "still here\n" {
		t.Errorf("old file %q", got)
	}
}

func TestFallback(t *testing.T) {
	var b bytes.Buffer
	l, err := Open("", &b)
	if err != nil {
		t.Fatal(err)
	}
	l.Write([]byte("x\n"))
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if b.String() != "x\n" {
		t.Errorf("fallback got %q", b.String())
	}
}

// TestConcurrentReopen writes from several goroutines while reopening
// (run with -race): no line is split or lost.
func TestConcurrentReopen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.log")
	l, err := Open(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				l.Write([]byte("0123456789\n"))
			}
		}()
	}
	for range 20 {
		if err := l.Reopen(); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	l.Close()
	got := read(t, p)
	if len(got) != 4*200*11 || bytes.Count([]byte(got), []byte("0123456789\n")) != 800 {
		t.Errorf("%d bytes, want 800 whole lines", len(got))
	}
}

// TestNoSymlinkFollowed: a link at the path, planted before the start or
// between two reopens, is never written through; neither is a FIFO.
func TestNoSymlinkFollowed(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "passwd")
	if err := os.WriteFile(target, []byte("root:x:0:0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "daemon.log")
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(p, nil); err == nil {
		t.Fatal("Open followed a symbolic link")
	}
	os.Remove(p)
	l, err := Open(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	os.Rename(p, p+".1")
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err == nil {
		t.Fatal("Reopen followed a symbolic link")
	}
	l.Write([]byte("still the old file\n"))
	if got := read(t, target); got != "root:x:0:0\n" {
		t.Fatalf("the link's target was written: %q", got)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err := Open(fifo, nil); err == nil {
		l.Close()
		t.Fatal("Open took a FIFO")
	}
}
