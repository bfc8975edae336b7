package sdnotify

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// listen binds a unix datagram socket named name, as systemd does for
// $NOTIFY_SOCKET, with SO_PASSCRED so that each datagram carries its
// sender's credentials (what systemd's NotifyAccess= checks).
func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1)
	}); err != nil || serr != nil {
		t.Fatalf("SO_PASSCRED: %v %v", err, serr)
	}
	return c
}

// receive reads one datagram and the sender's PID.
func receive(t *testing.T, c *net.UnixConn) (string, int32) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	oob := make([]byte, syscall.CmsgSpace(syscall.SizeofUcred))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatalf("read notification: %v", err)
	}
	msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control messages: %v (%d)", err, len(msgs))
	}
	cred, err := syscall.ParseUnixCredentials(&msgs[0])
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n]), cred.Pid
}

// checkSends runs every sender against the socket at name and checks the
// exact datagram and that it comes from this process.
func checkSends(t *testing.T, name string) {
	c := listen(t, name)
	t.Setenv("NOTIFY_SOCKET", name)
	for _, tc := range []struct {
		what string
		send func() error
		want string
	}{
		{"Ready", Ready, "READY=1"},
		{"Stopping", Stopping, "STOPPING=1"},
		{"Reloading", Reloading, "RELOADING=1"},
		{"Watchdog", Watchdog, "WATCHDOG=1"},
		{"Status", func() error { return Status("copying on eth0") }, "STATUS=copying on eth0"},
		{"StatusNewline", func() error { return Status("two\nlines") }, "STATUS=two lines"},
		{"Notify", func() error { return Notify("READY=1\nSTATUS=up") }, "READY=1\nSTATUS=up"},
	} {
		if err := tc.send(); err != nil {
			t.Fatalf("%s: %v", tc.what, err)
		}
		got, pid := receive(t, c)
		if got != tc.want {
			t.Errorf("%s sent %q, want %q", tc.what, got, tc.want)
		}
		if pid != int32(os.Getpid()) {
			t.Errorf("%s: sender pid %d, want %d", tc.what, pid, os.Getpid())
		}
	}
}

func TestNotifyPathSocket(t *testing.T) {
	checkSends(t, filepath.Join(t.TempDir(), "notify"))
}

// TestNotifyAbstractSocket: systemd's own $NOTIFY_SOCKET is usually
// abstract ("@/org/freedesktop/systemd1/notify/..."). Abstract names live
// in this network namespace only and carry no traffic beyond this host.
func TestNotifyAbstractSocket(t *testing.T) {
	checkSends(t, fmt.Sprintf("@tcpshadow-sdnotify-test/%d/%x", os.Getpid(), rand.Uint64()))
}

func TestNotifyUnsetIsNoop(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	for _, f := range []func() error{Ready, Stopping, Reloading, Watchdog, func() error { return Status("x") }} {
		if err := f(); err != nil {
			t.Fatalf("without NOTIFY_SOCKET: %v", err)
		}
	}
	os.Unsetenv("NOTIFY_SOCKET") // t.Setenv restores it afterwards
	if err := Ready(); err != nil {
		t.Fatalf("NOTIFY_SOCKET unset: %v", err)
	}
}

func TestNotifyErrors(t *testing.T) {
	for _, sock := range []string{
		filepath.Join(t.TempDir(), "nobody-listens"), // ENOENT
		"relative/path",
		"@",
		"vsock:2:1234",
	} {
		t.Setenv("NOTIFY_SOCKET", sock)
		if err := Ready(); err == nil {
			t.Errorf("NOTIFY_SOCKET=%q: Ready succeeded, want an error", sock)
		}
	}
}

func TestWatchdogInterval(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		usec, pid string
		want      time.Duration
		wantErr   bool
	}{
		{"", "", 0, false},
		{"30000000", "", 30 * time.Second, false},
		{"500000", self, 500 * time.Millisecond, false},
		{"500000", strconv.Itoa(os.Getpid() + 1), 0, false}, // another process's watchdog
		{"0", "", 0, true},
		{"-5", "", 0, true},
		{"soon", "", 0, true},
		{"500000", "me", 0, true},
	} {
		t.Setenv("WATCHDOG_USEC", tc.usec)
		t.Setenv("WATCHDOG_PID", tc.pid)
		got, err := WatchdogInterval()
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: got %v, %v; want %v, error %v",
				tc.usec, tc.pid, got, err, tc.want, tc.wantErr)
		}
	}
}
