package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/capture/capturetest"
)

// notifySocket listens where $NOTIFY_SOCKET points, with a watchdog of
// interval, and returns the datagrams systemd would get.
func notifySocket(t *testing.T, interval time.Duration) <-chan string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", strconv.FormatInt(interval.Microseconds(), 10))
	got := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			select {
			case got <- string(buf[:n]):
			default:
			}
		}
	}()
	return got
}

func waitWatchdog(t *testing.T, got <-chan string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case s := <-got:
			if strings.Contains(s, "WATCHDOG=1") {
				return
			}
		case <-deadline:
			t.Fatal("no WATCHDOG=1 from the datapath loop")
		}
	}
}

// TestDaemonsPetWatchdog: under a unit with WatchdogSec=, both daemons'
// capture loops pet systemd's watchdog, busy or idle.
func TestDaemonsPetWatchdog(t *testing.T) {
	t.Run("copy", func(t *testing.T) {
		got := notifySocket(t, 200*time.Millisecond)
		src := capturetest.New(16)
		cfg := validCopy()
		cfg.MaxCPU = 1
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- runCopy(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, testHost(src, capturetest.New(16), &recordingSender{}, nil))
		}()
		for i := range 200 {
			src.Push(synTo(t, uint16(1000+i)), time.Now())
		}
		waitWatchdog(t, got)
		cancel()
		<-done
	})
	t.Run("agent", func(t *testing.T) {
		got := notifySocket(t, 200*time.Millisecond)
		src := capturetest.New(16)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- runAgent(ctx, validAgent(), slog.New(slog.NewTextHandler(io.Discard, nil)), nil,
				testHost(src, nil, &recordingSender{}, make(chan string, 1)))
		}()
		waitWatchdog(t, got)
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}
