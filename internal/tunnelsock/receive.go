package tunnelsock

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tcpshadow/tcpshadow/intercept/tunnel"
)

// Injector hands verified inner packets to this host's stack; Flush
// reports how many it refused (rawsock.Batch).
type Injector interface {
	Send(pkt []byte) error
	Flush() (failed int, err error)
}

// RecvStats counts what the agent's receiver did with each datagram.
type RecvStats struct {
	Received  uint64 // datagrams read
	Injected  uint64 // inner packets handed to the stack
	BadMAC    uint64 // datagrams whose tag did not verify
	Replayed  uint64 // datagrams of a counter already accepted, or older than the window
	Malformed uint64 // datagrams too short, of another version or type
	TooBig    uint64 // datagrams larger than tunnel.MaxDatagram (cut by the read)
	NoSession uint64 // datagrams of a session no connected copy daemon has
	Refused   uint64 // verified inner packets not IP, not from the daemon's pools or not to this host
	Failed    uint64 // inner packets the stack refused
	Probes    uint64 // probes answered
}

// rcvBuf is the socket receive buffer asked for: a copy daemon splits
// each captured 64 KiB aggregate into ~50 datagrams at once, and at 1
// Gbit/s of copies an 8 MiB buffer overflowed in the lab whenever the
// agent's one goroutine was off the CPU for tens of milliseconds; 64 MiB
// is half a second of that, charged only while it holds datagrams.
const rcvBuf = 64 << 20

// localEvery is how often the host's addresses are read again.
const localEvery = time.Second

// Receiver reads the tunnel's datagrams on one UDP socket. Run and the
// handling of a batch happen on one goroutine, which owns the peers'
// windows; Stats may be called from any.
type Receiver struct {
	conn   *net.UDPConn // nil in tests that feed batches directly
	raw    syscall.RawConn
	fd     int // conn's, for probe acks; -1 without conn
	peers  *tunnel.Table
	inject Injector
	local  map[netip.Addr]struct{} // this host's addresses; owned by Run
	// localAddrs returns this host's addresses; tests replace it.
	localAddrs func() []netip.Addr
	localAt    time.Time

	bufs  [MaxBatch][tunnel.MaxDatagram]byte
	iovs  [MaxBatch]unix.Iovec
	msgs  [MaxBatch]unix.Mmsghdr
	names [MaxBatch]unix.RawSockaddrAny

	received, injected, badMAC, replayed, malformed, tooBig, noSession, refused, failed, probes atomic.Uint64
}

// Listen opens the tunnel's socket on addr (an unspecified address: every
// address, both families).
func Listen(addr netip.AddrPort, peers *tunnel.Table, inject Injector) (*Receiver, error) {
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, fmt.Errorf("listen on udp %v: %w", addr, err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("tunnel socket: %w", err)
	}
	r := newReceiver(peers, inject)
	r.conn, r.raw = conn, raw
	_ = raw.Control(func(fd uintptr) {
		r.fd = int(fd)
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf)
		}
	})
	return r, nil
}

func newReceiver(peers *tunnel.Table, inject Injector) *Receiver {
	r := &Receiver{fd: -1, peers: peers, inject: inject, localAddrs: interfaceAddrs}
	for i := range r.msgs {
		r.iovs[i].Base = &r.bufs[i][0]
		r.iovs[i].SetLen(len(r.bufs[i]))
		h := &r.msgs[i].Hdr
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
	}
	return r
}

// Addr returns the socket's address.
func (r *Receiver) Addr() netip.AddrPort {
	return r.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Stats returns the counters.
func (r *Receiver) Stats() RecvStats {
	return RecvStats{
		Received: r.received.Load(), Injected: r.injected.Load(), BadMAC: r.badMAC.Load(), Replayed: r.replayed.Load(),
		Malformed: r.malformed.Load(), TooBig: r.tooBig.Load(), NoSession: r.noSession.Load(), Refused: r.refused.Load(),
		Failed: r.failed.Load(), Probes: r.probes.Load(),
	}
}

// Run reads and handles batches until ctx is done, then closes the
// socket. Only a socket that cannot be read at all ends it early.
//
// Reads wait in Go's netpoller and take what is queued with one
// non-blocking recvmmsg: a blocking read would hand the goroutine's P to
// another thread and back for every batch, which at tens of thousands of
// datagrams a second costs more than the datagrams and lets the socket's
// buffer overflow.
func (r *Receiver) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { r.conn.Close() })
	defer stop()
	defer r.conn.Close()
	var n uintptr
	var errno syscall.Errno
	read := func(fd uintptr) bool {
		for i := range r.msgs {
			r.msgs[i].Hdr.Namelen = unix.SizeofSockaddrAny
			r.msgs[i].Hdr.Flags = 0
		}
		n, _, errno = unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.msgs[0])),
			MaxBatch, unix.MSG_DONTWAIT, 0, 0)
		return errno != unix.EAGAIN
	}
	for {
		if err := r.raw.Read(read); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read tunnel: %w", err)
		}
		switch {
		case errno == 0:
			r.refreshLocal(time.Now())
			r.handle(int(n))
		case errno == unix.EINTR, errno == unix.ECONNREFUSED: // an ICMP error for a probe ack
		default:
			return fmt.Errorf("read tunnel: %w", errno)
		}
	}
}

// handle opens the first n datagrams of the batch and injects what
// passes, flushing the injector once.
func (r *Receiver) handle(n int) {
	queued := 0
	for i := range n {
		r.received.Add(1)
		m := &r.msgs[i]
		if m.Hdr.Flags&unix.MSG_TRUNC != 0 || int(m.Len) > tunnel.MaxDatagram {
			r.tooBig.Add(1)
			continue
		}
		d := r.bufs[i][:m.Len]
		if r.one(d, i) {
			queued++
		}
	}
	if queued == 0 {
		return
	}
	failed, _ := r.inject.Flush()
	r.failed.Add(uint64(failed))
	r.injected.Add(uint64(queued - failed))
}

// one handles one datagram; it reports whether an inner packet was queued.
func (r *Receiver) one(d []byte, i int) bool {
	h, v := tunnel.Parse(d)
	if v != tunnel.OK {
		r.count(v)
		return false
	}
	p := r.peers.Lookup(h.Session())
	if p == nil {
		r.noSession.Add(1)
		return false
	}
	inner, v := p.Open.Open(d)
	if v != tunnel.OK {
		r.count(v)
		return false
	}
	switch h.Type() {
	case tunnel.TypeProbe:
		r.answerProbe(p, inner, i)
		return false
	case tunnel.TypePacket:
	default:
		r.malformed.Add(1) // a probe ack, sent to the agent
		return false
	}
	src, dst, ok := ends(inner)
	if !ok || !p.Allows(src) || !r.isLocal(dst) {
		r.refused.Add(1)
		return false
	}
	if err := r.inject.Send(inner); err != nil {
		r.failed.Add(1)
		return false
	}
	return true
}

func (r *Receiver) count(v tunnel.Verdict) {
	switch v {
	case tunnel.TooBig:
		r.tooBig.Add(1)
	case tunnel.BadMAC:
		r.badMAC.Add(1)
	case tunnel.Replayed:
		r.replayed.Add(1)
	default:
		r.malformed.Add(1)
	}
}

// ends returns an IP packet's addresses, if it is one whose length field
// matches its size.
func ends(p []byte) (src, dst netip.Addr, ok bool) {
	switch {
	case len(p) >= 20 && p[0]>>4 == 4 && p[0]&0xf >= 5:
		if int(be16(p[2:])) != len(p) {
			return src, dst, false
		}
		return netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20])), true
	case len(p) >= 40 && p[0]>>4 == 6:
		if int(be16(p[4:]))+40 != len(p) {
			return src, dst, false
		}
		return netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40])), true
	}
	return src, dst, false
}

func be16(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

// answerProbe sends a probe's token back to where it came from, sealed
// with the agent's key: the probe's sender learns the port is open both
// ways and the keys agree. Probes are rare (tcpshadow doctor), so this
// one send may allocate.
func (r *Receiver) answerProbe(p *Peer, token []byte, i int) {
	if len(token) > tunnel.MaxProbe {
		r.malformed.Add(1)
		return
	}
	var buf [tunnel.MaxProbe + tunnel.Overhead]byte
	d := p.Seal.Seal(buf[:], tunnel.TypeProbeAck, token)
	m := &r.msgs[i].Hdr
	_, _, errno := unix.Syscall6(unix.SYS_SENDTO, uintptr(r.fd), uintptr(unsafe.Pointer(&d[0])), uintptr(len(d)),
		unix.MSG_DONTWAIT, uintptr(unsafe.Pointer(m.Name)), uintptr(m.Namelen))
	if errno == 0 {
		r.probes.Add(1)
	}
}

// Peer is tunnel.Peer, named here for answerProbe.
type Peer = tunnel.Peer

func (r *Receiver) isLocal(a netip.Addr) bool {
	_, ok := r.local[a.Unmap()]
	return ok
}

// refreshLocal reads this host's addresses once every localEvery.
func (r *Receiver) refreshLocal(now time.Time) {
	if r.local != nil && now.Sub(r.localAt) < localEvery {
		return
	}
	r.localAt = now
	m := make(map[netip.Addr]struct{})
	for _, a := range r.localAddrs() {
		m[a.Unmap()] = struct{}{}
	}
	r.local = m
}

func interfaceAddrs() []netip.Addr {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}
