// Package sdnotify tells systemd about a daemon's state with the
// sd_notify(3) protocol: one datagram of newline-separated KEY=VALUE
// assignments sent to the unix datagram socket named by $NOTIFY_SOCKET.
//
// It owns that one message exchange and nothing else: no socket is kept
// open, no goroutine is started, and every function is a no-op returning
// nil when $NOTIFY_SOCKET is unset (not started by systemd with
// Type=notify), so callers need no "under systemd?" checks. It never
// unsets $NOTIFY_SOCKET: a daemon sends READY, STATUS and STOPPING over
// its life.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Ready tells systemd that start-up finished (READY=1): a Type=notify
// unit leaves "activating", and units ordered after it start.
func Ready() error { return Notify("READY=1") }

// Stopping tells systemd the daemon began shutting down (STOPPING=1).
func Stopping() error { return Notify("STOPPING=1") }

// Reloading tells systemd the daemon began reloading (RELOADING=1); send
// Ready when done.
func Reloading() error { return Notify("RELOADING=1") }

// Status sets the one-line status `systemctl status` shows (STATUS=...).
// Newlines would start new assignments, so they are replaced by spaces.
func Status(s string) error {
	return Notify("STATUS=" + strings.ReplaceAll(s, "\n", " "))
}

// Watchdog pets the service watchdog (WATCHDOG=1); see WatchdogInterval.
func Watchdog() error { return Notify("WATCHDOG=1") }

// WatchdogInterval returns how often systemd expects Watchdog, from
// $WATCHDOG_USEC: 0 when the unit has no WatchdogSec= or the watchdog is
// meant for another process ($WATCHDOG_PID names a different PID).
// Systemd's advice is to pet at half this interval.
func WatchdogInterval() (time.Duration, error) {
	usec := os.Getenv("WATCHDOG_USEC")
	if usec == "" {
		return 0, nil
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" {
		p, err := strconv.Atoi(pid)
		if err != nil {
			return 0, fmt.Errorf("parse WATCHDOG_PID %q: %w", pid, err)
		}
		if p != os.Getpid() {
			return 0, nil
		}
	}
	n, err := strconv.ParseUint(usec, 10, 63)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("parse WATCHDOG_USEC %q: want a positive integer", usec)
	}
	return time.Duration(n) * time.Microsecond, nil
}

// Notify sends state, one or more newline-separated KEY=VALUE assignments
// (sd_notify(3)), to $NOTIFY_SOCKET. It returns nil without doing anything
// when the variable is unset or empty.
func Notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	// A leading '@' names a socket in the abstract namespace; the net
	// package turns it into the leading NUL the kernel wants. Anything but
	// an absolute path or '@' (systemd 254+ also knows vsock:) is refused.
	if path[0] != '/' && path[0] != '@' {
		return fmt.Errorf("sd_notify: NOTIFY_SOCKET %q: want an absolute path or @name", path)
	}
	if len(path) < 2 {
		return errors.New("sd_notify: NOTIFY_SOCKET: empty socket name")
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer conn.Close()
	// The manager reads the sender's PID from the kernel's credentials
	// (SCM_CREDENTIALS), so the main process needs no explicit MAINPID=.
	n, err := conn.Write([]byte(state))
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	if n != len(state) {
		return fmt.Errorf("sd_notify: short write: %d of %d bytes", n, len(state))
	}
	return nil
}
