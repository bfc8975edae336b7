package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// holdEnv, when set in a test binary's environment ("ADDR N"), makes it a
// connection holder instead of running tests: it opens N connections to
// ADDR, says so on stdout, and keeps them until it is stopped or
// holdLimit passes. One process cannot hold 20,000 sockets under this
// machine's file limit; several can.
const holdEnv = "TCPSHADOW_E2E_HOLD"

// holdLimit bounds how long a holder lives.
const holdLimit = 3 * time.Minute

// holdRate is how many connections a second a holder opens, holdBatch at
// a time.
const (
	holdRate  = 2500
	holdBatch = 25
)

// holdConnections is a holder's main; it returns the exit status.
func holdConnections(spec string) int {
	addr, nstr, ok := strings.Cut(spec, " ")
	n, err := strconv.Atoi(nstr)
	if !ok || err != nil || n <= 0 {
		fmt.Fprintf(os.Stderr, "%s=%q: want ADDR N\n", holdEnv, spec)
		return 2
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max // raising the soft limit to the hard one needs no privilege
		_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	conns := make([]net.Conn, 0, n)
	// No keep-alive probes: 20,000 idle connections would send bursts of
	// them. Dials are paced at holdRate a second, a busy server's rate.
	d := net.Dialer{Timeout: 5 * time.Second, KeepAlive: -1}
	tick := time.NewTicker(time.Second / holdRate * holdBatch)
	defer tick.Stop()
	for len(conns) < n {
		if len(conns)%holdBatch == 0 {
			<-tick.C
		}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			fmt.Printf("failed after %d: %v\n", len(conns), err)
			return 1
		}
		conns = append(conns, c)
	}
	fmt.Printf("held %d\n", len(conns))
	time.Sleep(holdLimit) // the lab's SIGTERM ends it sooner
	for _, c := range conns {
		c.Close()
	}
	return 0
}

// listenNoAccept listens on addr in ns with the largest backlog and never
// accepts: the kernel completes handshakes and holds the connections in
// the accept queue, one socket each and no file descriptor. It raises the
// namespace's somaxconn so the backlog holds.
func listenNoAccept(t *testing.T, ns *lab.NS, addr netip.AddrPort, backlog int) {
	t.Helper()
	for _, kv := range [][2]string{{"net.core.somaxconn", strconv.Itoa(backlog)}, {"net.ipv4.tcp_max_syn_backlog", strconv.Itoa(backlog)}} {
		if err := ns.Sysctl(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	var fd int
	err := ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}); err != nil {
			return err
		}
		return unix.Listen(fd, backlog)
	})
	if err != nil {
		t.Fatalf("listen on %v in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
}

// establishedOn counts the connections established to local in ns whose
// peer is in the pool.
func establishedOn(t *testing.T, ns *lab.NS, local netip.AddrPort) int {
	t.Helper()
	out, err := ns.Run(context.Background(), "ss", "-Htn", "state", "established", "src", local.String())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		fs := strings.Fields(line)
		if len(fs) < 4 {
			continue
		}
		if peer, err := netip.ParseAddrPort(fs[3]); err == nil && lab.PoolV4.Contains(peer.Addr().Unmap()) {
			n++
		}
	}
	return n
}

// TestCopyResets20kSessionsOnSIGTERM: with 20,000 sessions established on
// the shadow, SIGTERM makes the copy daemon reset every one (paced, so
// that none is lost to a full socket buffer) and exit 0: 5 s later the
// shadow holds no connection from the pool.
func TestCopyResets20kSessionsOnSIGTERM(t *testing.T) {
	const sessions, holders = 20000, 2
	prodAddr := netip.AddrPortFrom(lab.ProdClientSideV4, 8000)
	shadowAddr := netip.AddrPortFrom(lab.ShadowV4, 8000)
	e := newEnv(t, envOptions{
		maps:        []string{prodAddr.String() + "-" + shadowAddr.String()},
		agentFilter: "tcp and src port 8000",
		copyArgs:    []string{"--idle-timeout", "5m"},
	})
	listenNoAccept(t, e.lab.Prod, prodAddr, 65535)
	listenNoAccept(t, e.lab.Shadow, shadowAddr, 65535)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var held []*lab.Process
	for i := 0; i < holders; i++ {
		p, err := e.lab.Client.Start(context.Background(), "env",
			fmt.Sprintf("%s=%s %d", holdEnv, prodAddr, sessions/holders), self)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, p)
	}
	if !waitFor(t, "the holders' connections", 90*time.Second, func() bool {
		for _, p := range held {
			if p.Exited() || !strings.Contains(p.Output(), "held ") {
				return false
			}
		}
		return true
	}) {
		for _, p := range held {
			t.Logf("holder: %s", p.Output())
		}
		t.FailNow()
	}
	var n int
	if !waitFor(t, "20,000 sessions established on the shadow", 90*time.Second, func() bool {
		n = establishedOn(t, e.lab.Shadow, shadowAddr)
		return n == sessions
	}) {
		e.dumpMetrics(t)
		t.Fatalf("%d of %d sessions established on the shadow", n, sessions)
	}

	start := time.Now()
	if err := e.copier.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := waitExit(t, e.copier, start); err != nil {
		t.Fatalf("copy daemon exited with %v after SIGTERM, want status 0:\n%s", err, e.copier.Output())
	}
	if want := fmt.Sprintf("sessions_ended.shutdown=%d", sessions); !strings.Contains(e.copier.Output(), want) {
		t.Errorf("stop summary lacks %s:\n%s", want, e.copier.Output())
	}
	stopped := time.Now()
	time.Sleep(5*time.Second - time.Since(start))
	if n := establishedOn(t, e.lab.Shadow, shadowAddr); n != 0 {
		t.Fatalf("%d connections from the pool still established on the shadow 5s after SIGTERM (exit took %v)", n, stopped.Sub(start))
	}
}
