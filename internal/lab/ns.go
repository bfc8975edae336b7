//go:build linux

package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	dialTimeout      = 5 * time.Second
	maxErrOutput     = 4 << 10
	defaultHTTPConns = 16
)

// NS is one named network namespace of a Lab.
type NS struct {
	lab  *Lab
	name string
	role string

	// fd and h are set during setup and closed by Lab.Close, which holds
	// lab.mu while doing so; readers after setup hold lab.mu too (dupFD).
	fd netns.NsHandle
	h  *netlink.Handle
}

// Name returns the namespace's name, usable with ip netns exec.
func (n *NS) Name() string { return n.name }

// Handle returns a netlink handle bound to the namespace, for tests that
// manipulate its links, addresses or routes. It is closed by Lab.Close;
// after that Handle returns nil.
func (n *NS) Handle() *netlink.Handle {
	n.lab.mu.Lock()
	defer n.lab.mu.Unlock()
	return n.h
}

func (n *NS) String() string { return n.name }

// dupFD returns a private copy of the namespace descriptor, so a concurrent
// Close cannot close it under a caller.
func (n *NS) dupFD() (int, error) {
	n.lab.mu.Lock()
	defer n.lab.mu.Unlock()
	if n.lab.closed {
		return -1, ErrClosed
	}
	fd, err := unix.FcntlInt(uintptr(n.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("dup namespace %s: %w", n.name, err)
	}
	return fd, nil
}

// closeHandles releases the netlink handle and namespace descriptor.
func (n *NS) closeHandles() {
	n.lab.mu.Lock()
	defer n.lab.mu.Unlock()
	if n.h != nil {
		n.h.Close()
		n.h = nil
	}
	if n.fd >= 0 {
		_ = n.fd.Close()
		n.fd = -1
	}
}

// inode identifies the namespace for the leftover-process check.
func (n *NS) inode() (uint64, error) {
	n.lab.mu.Lock()
	defer n.lab.mu.Unlock()
	if n.fd < 0 {
		return 0, os.ErrClosed
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(n.fd), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// Do runs fn on an OS thread switched into the namespace, then switches the
// thread back. fn runs on a fresh goroutine locked to its thread, so the
// caller's thread never changes namespace. If switching back fails, or fn
// leaves through runtime.Goexit (t.FailNow), the thread stays locked and
// the runtime discards it rather than reuse it in the wrong namespace. A
// panic in fn is re-raised in the caller.
//
// Sockets created in fn belong to the namespace for their whole life. fn
// must not start goroutines that expect to run in the namespace: only fn's
// own goroutine is switched.
func (n *NS) Do(fn func() error) error {
	fd, err := n.dupFD()
	if err != nil {
		return err
	}
	defer unix.Close(fd)

	type result struct {
		err      error
		panicked bool
		val      any
	}
	ch := make(chan result, 1)
	go func() {
		var res result
		returned := false
		defer func() {
			if !returned && !res.panicked && res.err == nil {
				res.err = fmt.Errorf("do in %s: fn did not return (runtime.Goexit?)", n.name)
			}
			ch <- res
		}()
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			res.err = fmt.Errorf("get thread namespace: %w", err)
			returned = true
			return
		}
		defer orig.Close()
		if err := netns.Set(netns.NsHandle(fd)); err != nil {
			runtime.UnlockOSThread() // setns failed: the thread did not move
			res.err = fmt.Errorf("enter namespace %s: %w", n.name, err)
			returned = true
			return
		}
		func() {
			defer func() {
				if r := recover(); r != nil {
					res.panicked, res.val = true, r
				}
			}()
			res.err = fn()
		}()
		returned = true
		if err := netns.Set(orig); err != nil {
			// Stay locked: the thread dies with this goroutine.
			res.err = errors.Join(res.err, fmt.Errorf("leave namespace %s: %w (thread discarded)", n.name, err))
			return
		}
		runtime.UnlockOSThread()
	}()
	res := <-ch
	if res.panicked {
		panic(res.val)
	}
	return res.err
}

// Command returns a command that runs name in the namespace through
// ip netns exec (which execs, so the started process is the program
// itself). The child gets SIGKILL if the OS thread that starts it exits
// (Pdeathsig), so a crashed test leaves no process behind; start it from an
// ordinary goroutine, not one that exits while locked to its thread.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Run runs name in the namespace and returns its combined output. A ctx
// without a deadline gets one minute. On failure the error includes the
// output.
func (n *NS) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, runTimeout)
		defer cancel()
	}
	cmd := n.Command(ctx, name, args...)
	cmd.WaitDelay = time.Second // grandchildren holding the pipe cannot hang us
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if len(msg) > maxErrOutput {
			msg = "…" + msg[len(msg)-maxErrOutput:]
		}
		return out, fmt.Errorf("run %s in %s: %w: %s",
			strings.Join(append([]string{name}, args...), " "), n.name, err, msg)
	}
	return out, nil
}

// Listen listens inside the namespace. The host part of addr must be empty
// or an IP literal: nothing is resolved.
func (n *NS) Listen(network, addr string) (net.Listener, error) {
	if err := checkAddr(addr, true); err != nil {
		return nil, fmt.Errorf("listen in %s: %w", n.name, err)
	}
	var ln net.Listener
	err := n.Do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen in %s: %w", n.name, err)
	}
	return ln, nil
}

// DialContext connects from inside the namespace. addr's host must be an IP
// literal in the lab ranges (LabV4, LabV6) or loopback.
func (n *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := checkAddr(addr, false); err != nil {
		return nil, fmt.Errorf("dial from %s: %w", n.name, err)
	}
	var c net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial from %s: %w", n.name, err)
	}
	return c, nil
}

// HTTPClient returns a client whose connections are dialled inside the
// namespace, with keep-alive, at most maxConns connections per host
// (maxConns < 1 means 16), no proxy, and bounded timeouts (dial 5 s,
// response header 10 s, whole request 30 s). URLs must use IP literals.
func (n *NS) HTTPClient(maxConns int) *http.Client {
	if maxConns < 1 {
		maxConns = defaultHTTPConns
	}
	tr := &http.Transport{
		Proxy: nil, // never the environment's proxy: the lab is sealed
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, dialTimeout)
			defer cancel()
			return n.DialContext(ctx, network, addr)
		},
		MaxIdleConns:          maxConns,
		MaxIdleConnsPerHost:   maxConns,
		MaxConnsPerHost:       maxConns,
		IdleConnTimeout:       30 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// checkAddr accepts host:port whose host is an IP literal (or, when
// listening, empty). Dial targets must lie in the lab ranges or loopback.
func checkAddr(addr string, listen bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" && listen {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("address %q: host must be an IP literal (no name resolution in the lab)", addr)
	}
	ip = ip.WithZone("").Unmap()
	if listen || ip.IsLoopback() || ip.IsUnspecified() || LabV4.Contains(ip) || LabV6.Contains(ip) {
		return nil
	}
	return fmt.Errorf("address %q is outside the lab ranges %s and %s", addr, LabV4, LabV6)
}

// Sysctl writes a net.* sysctl inside the namespace. key is dotted
// ("net.ipv4.ip_forward") or a path under /proc/sys ("net/ipv4/conf/eth0.1/rp_filter")
// for interface names that contain dots. Other sysctls are host-wide and refused.
func (n *NS) Sysctl(key, value string) error {
	return n.sysctls([]sysctlKV{{key, value}})
}

// ReadSysctl reads a net.* sysctl inside the namespace, without the
// trailing newline.
func (n *NS) ReadSysctl(key string) (string, error) {
	path, err := sysctlPath(key)
	if err != nil {
		return "", err
	}
	var v []byte
	err = n.Do(func() error {
		var err error
		v, err = os.ReadFile(path)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("read sysctl %s in %s: %w", key, n.name, err)
	}
	return strings.TrimSpace(string(v)), nil
}

// sysctls writes several sysctls in one trip into the namespace. /proc/sys/net
// shows the namespace of the thread that opens it, hence Do.
func (n *NS) sysctls(kvs []sysctlKV) error {
	paths := make([]string, len(kvs))
	for i, kv := range kvs {
		p, err := sysctlPath(kv.key)
		if err != nil {
			return err
		}
		paths[i] = p
	}
	return n.Do(func() error {
		for i, kv := range kvs {
			if err := writeFile(paths[i], kv.value); err != nil {
				return fmt.Errorf("sysctl %s=%s in %s: %w", kv.key, kv.value, n.name, err)
			}
		}
		return nil
	})
}

func writeFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func sysctlPath(key string) (string, error) {
	sep := "."
	if strings.Contains(key, "/") {
		sep = "/"
	}
	parts := strings.Split(key, sep)
	if len(parts) < 2 || parts[0] != "net" {
		return "", fmt.Errorf("sysctl %q: only net.* sysctls are per namespace", key)
	}
	for _, p := range parts {
		if p == "" || p == "." || p == ".." {
			return "", fmt.Errorf("sysctl %q: bad key", key)
		}
	}
	return filepath.Join(append([]string{"/proc/sys"}, parts...)...), nil
}
