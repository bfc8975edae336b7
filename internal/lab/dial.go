//go:build linux

package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// socketBatch is how many sockets a Dialer's namespace thread makes per
// trip: one thread hand-off per batch instead of one per dial.
const socketBatch = 16

// Dialer opens TCP connections from inside a namespace, optionally from a
// chosen local address, cheaply enough for a load generator: NS.DialContext
// moves a thread into the namespace and back for every dial, while a
// Dialer keeps one OS thread there for its whole life, which only creates
// sockets (a socket belongs to the namespace it is created in; bind and
// connect then work from any thread). Addresses are checked as
// NS.DialContext checks them.
//
// A Dialer is safe for concurrent use. Its thread keeps the namespace
// alive: Close it before closing the lab. Connections it made are the
// caller's to close.
type Dialer struct {
	ns   *NS
	reqs chan socketReq // to the namespace thread; closed by Close
	done chan struct{}  // closed when the namespace thread has ended

	mu     sync.Mutex    // guards the fields below; held across a batch request
	spare  map[int][]int // unconnected sockets by address family
	closed bool
}

type socketReq struct {
	family int
	reply  chan socketReply
}

type socketReply struct {
	fds []int
	err error
}

// NewDialer starts a Dialer's namespace thread.
func (n *NS) NewDialer() (*Dialer, error) {
	fd, err := n.dupFD()
	if err != nil {
		return nil, fmt.Errorf("dialer in %s: %w", n.name, err)
	}
	d := &Dialer{
		ns:    n,
		reqs:  make(chan socketReq),
		done:  make(chan struct{}),
		spare: make(map[int][]int),
	}
	ready := make(chan error, 1)
	go d.thread(fd, ready)
	if err := <-ready; err != nil {
		<-d.done
		return nil, fmt.Errorf("dialer in %s: %w", n.name, err)
	}
	return d, nil
}

// thread enters the namespace on a locked OS thread and makes sockets on
// request. It never unlocks: the thread ends with the goroutine, so it is
// never handed back to the runtime inside the lab's namespace.
func (d *Dialer) thread(nsFD int, ready chan<- error) {
	defer close(d.done)
	runtime.LockOSThread()
	err := unix.Setns(nsFD, unix.CLONE_NEWNET)
	unix.Close(nsFD)
	ready <- err
	if err != nil {
		return
	}
	for req := range d.reqs {
		var rep socketReply
		for range socketBatch {
			s, err := unix.Socket(req.family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
			if err != nil {
				rep.err = err
				break
			}
			rep.fds = append(rep.fds, s)
		}
		req.reply <- rep
	}
}

// socket returns an unconnected non-blocking TCP socket of the family,
// created in the namespace; the caller owns it.
func (d *Dialer) socket(family int) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return -1, net.ErrClosed
	}
	if fds := d.spare[family]; len(fds) > 0 {
		fd := fds[len(fds)-1]
		d.spare[family] = fds[:len(fds)-1]
		return fd, nil
	}
	// The lab may have deleted the namespace's name; the thread would
	// still make sockets in it, and they should not outlive the lab.
	d.ns.lab.mu.Lock()
	labClosed := d.ns.lab.closed
	d.ns.lab.mu.Unlock()
	if labClosed {
		return -1, ErrClosed
	}
	reply := make(chan socketReply, 1)
	d.reqs <- socketReq{family: family, reply: reply}
	rep := <-reply
	if len(rep.fds) == 0 {
		return -1, fmt.Errorf("socket: %w", rep.err)
	}
	d.spare[family] = rep.fds[1:]
	return rep.fds[0], nil
}

// Close ends the namespace thread and closes the spare sockets. It is
// idempotent; dials after Close fail with net.ErrClosed.
func (d *Dialer) Close() error {
	d.mu.Lock()
	if !d.closed {
		d.closed = true
		close(d.reqs)
		for _, fds := range d.spare {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
		d.spare = nil
	}
	d.mu.Unlock()
	<-d.done
	return nil
}

// DialTCP connects to remote from inside the namespace. A valid local
// address is bound first (port chosen by the kernel at connect, so many
// connections can share it); an invalid one leaves the choice to the
// kernel. Both must lie in the lab ranges (or loopback) and be of the same
// family. ctx bounds the connect.
func (d *Dialer) DialTCP(ctx context.Context, local netip.Addr, remote netip.AddrPort) (net.Conn, error) {
	c, err := d.dial(ctx, local, remote)
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s in %s: %w", remote, local, d.ns.name, err)
	}
	return c, nil
}

// DialTCPFrom is DialTCP from a chosen local port too (SO_REUSEADDR
// set): a load generator reusing its ports, as clients behind a NAT do.
func (d *Dialer) DialTCPFrom(ctx context.Context, local netip.AddrPort, remote netip.AddrPort) (net.Conn, error) {
	c, err := d.dialPort(ctx, local.Addr(), local.Port(), remote)
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s in %s: %w", remote, local, d.ns.name, err)
	}
	return c, nil
}

func (d *Dialer) dial(ctx context.Context, local netip.Addr, remote netip.AddrPort) (net.Conn, error) {
	return d.dialPort(ctx, local, 0, remote)
}

func (d *Dialer) dialPort(ctx context.Context, local netip.Addr, port uint16, remote netip.AddrPort) (net.Conn, error) {
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	if err := checkAddr(remote.String(), false); err != nil {
		return nil, err
	}
	if local.IsValid() {
		local = local.Unmap()
		if err := checkAddr(netip.AddrPortFrom(local, 0).String(), false); err != nil {
			return nil, fmt.Errorf("local %w", err)
		}
		if local.Is4() != remote.Addr().Is4() {
			return nil, errors.New("local and remote address families differ")
		}
	}
	family := unix.AF_INET
	if remote.Addr().Is6() {
		family = unix.AF_INET6
	}
	fd, err := d.socket(family)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "tcp") // owns fd from here
	defer f.Close()
	switch {
	case local.IsValid() && port != 0:
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return nil, os.NewSyscallError("setsockopt", err)
		}
		if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(local, port))); err != nil {
			return nil, os.NewSyscallError("bind", err)
		}
	case local.IsValid():
		// Without it, bind picks a port unique to the local address alone;
		// deferring the choice to connect lets ports repeat across
		// destinations, as an unbound socket's do.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
			return nil, os.NewSyscallError("setsockopt", err)
		}
		if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(local, 0))); err != nil {
			return nil, os.NewSyscallError("bind", err)
		}
	}
	if err := unix.Connect(fd, sockaddr(remote)); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return nil, os.NewSyscallError("connect", err)
	}
	c, err := net.FileConn(f) // a duplicate, in the runtime's poller
	if err != nil {
		return nil, err
	}
	tc := c.(*net.TCPConn)
	if err := waitConnected(ctx, tc); err != nil {
		tc.Close()
		return nil, err
	}
	// FileConn read the addresses before the connect completed.
	lsa, err := unix.Getsockname(fd)
	if err != nil {
		tc.Close()
		return nil, os.NewSyscallError("getsockname", err)
	}
	return &dialedConn{TCPConn: tc, local: tcpAddr(lsa), remote: net.TCPAddrFromAddrPort(remote)}, nil
}

// waitConnected waits, in the runtime's poller, until the socket's
// non-blocking connect has completed, failed or ctx is done.
func waitConnected(ctx context.Context, tc *net.TCPConn) error {
	rc, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		tc.SetWriteDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { tc.SetWriteDeadline(time.Unix(1, 0)) })
	var cerr error
	werr := rc.Write(func(fd uintptr) bool {
		v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			cerr = os.NewSyscallError("getsockopt", err)
		case v != 0:
			cerr = os.NewSyscallError("connect", syscall.Errno(v))
		default:
			if _, err := unix.Getpeername(int(fd)); errors.Is(err, unix.ENOTCONN) {
				return false // still connecting: wait until writable
			} else if err != nil {
				cerr = os.NewSyscallError("getpeername", err)
			}
		}
		return true
	})
	if !stop() {
		return ctx.Err()
	}
	if werr != nil {
		return werr
	}
	if cerr != nil {
		return cerr
	}
	return tc.SetWriteDeadline(time.Time{})
}

// dialedConn reports the addresses as they are once connected.
type dialedConn struct {
	*net.TCPConn
	local, remote net.Addr
}

func (c *dialedConn) LocalAddr() net.Addr  { return c.local }
func (c *dialedConn) RemoteAddr() net.Addr { return c.remote }

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

func tcpAddr(sa unix.Sockaddr) net.Addr {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)))
	case *unix.SockaddrInet6:
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)))
	}
	return nil
}
