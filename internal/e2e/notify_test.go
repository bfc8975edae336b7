package e2e

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// notification is one sd_notify datagram and the PID the kernel says sent
// it (SCM_CREDENTIALS), which is what systemd checks with NotifyAccess=main.
type notification struct {
	pid   int
	state string
}

// notifySocket binds a unix datagram socket as systemd does for a
// Type=notify unit, points $NOTIFY_SOCKET at it for the processes this
// test starts, and delivers what arrives on the returned channel.
func notifySocket(t *testing.T) <-chan notification {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
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
	t.Setenv("NOTIFY_SOCKET", path)
	ch := make(chan notification, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		oob := make([]byte, syscall.CmsgSpace(syscall.SizeofUcred))
		for {
			n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("read notify socket: %v", err)
				}
				return
			}
			pid := -1
			if msgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil && len(msgs) == 1 {
				if cred, err := syscall.ParseUnixCredentials(&msgs[0]); err == nil {
					pid = int(cred.Pid)
				}
			}
			select {
			case ch <- notification{pid: pid, state: string(buf[:n])}:
			default:
				t.Errorf("notification %q from pid %d dropped: channel full", buf[:n], pid)
			}
		}
	}()
	// Registered before newEnv's cleanups, so it runs after the lab has
	// stopped the daemons.
	t.Cleanup(func() { c.Close(); <-done })
	return ch
}

// waitNotify waits up to timeout until want arrived from pid, failing on
// any READY=1 sent twice by one process.
func waitNotify(t *testing.T, ch <-chan notification, seen map[notification]int, pid int, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for seen[notification{pid, want}] == 0 {
		select {
		case n := <-ch:
			t.Logf("sd_notify from pid %d: %q", n.pid, n.state)
			for _, line := range strings.Split(n.state, "\n") {
				k := notification{n.pid, line}
				seen[k]++
				if line == "READY=1" && seen[k] > 1 {
					t.Errorf("pid %d sent READY=1 %d times", n.pid, seen[k])
				}
			}
		case <-deadline.C:
			t.Fatalf("no %q from pid %d within %v", want, pid, timeout)
		}
	}
}

// TestSystemdNotify runs both daemons with $NOTIFY_SOCKET set, as systemd
// does for the Type=notify units in scripts/systemd, and checks that each
// sends READY=1 from its own PID once it is up (agent listening, copy
// daemon capturing with its control channel connected) and STOPPING=1 when SIGTERM stops it.
func TestSystemdNotify(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (lab)")
	}
	ch := notifySocket(t)
	e := newEnv(t, envOptions{})
	seen := map[notification]int{}
	waitNotify(t, ch, seen, e.agent.PID(), "READY=1", 10*time.Second)
	waitNotify(t, ch, seen, e.copier.PID(), "READY=1", 10*time.Second)
	// The copy daemon is ready only with its control channel up (the agent
	// runs), and says so.
	if seen[notification{e.copier.PID(), "STATUS=copying; control channel up"}] == 0 {
		t.Errorf("copy daemon's READY=1 came without STATUS=copying; control channel up")
	}

	if err := e.copier.Stop(30 * time.Second); err != nil {
		t.Logf("copy daemon stopped: %v", err)
	}
	waitNotify(t, ch, seen, e.copier.PID(), "STOPPING=1", 5*time.Second)
	if err := e.agent.Stop(30 * time.Second); err != nil {
		t.Logf("agent stopped: %v", err)
	}
	waitNotify(t, ch, seen, e.agent.PID(), "STOPPING=1", 5*time.Second)
}
