package tunnelsock

import (
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tcpshadow/tcpshadow/intercept/tunnel"
)

// MaxBatch is how many datagrams one sendmmsg or recvmmsg carries.
const MaxBatch = 64

// slotSize holds a sealed packet an Ethernet MTU allows; larger ones are
// sent at once, unbatched.
const slotSize = 2048 + tunnel.Overhead

// sndBuf is the socket send buffer asked for, as rawsock's.
const sndBuf = 4 << 20

// ErrNoSession is returned for a packet sent while the control channel
// is down: there are no keys to seal it with.
var ErrNoSession = errors.New("tunnel: no control-channel session")

// ErrTooBig is returned for a packet larger than tunnel.MaxInner.
var ErrTooBig = errors.New("tunnel: packet too big")

// Link is the copy daemon's end of the tunnel: where datagrams go, the
// current session's keys, and the counters every worker's Sender adds to.
type Link struct {
	Dst  netip.AddrPort // the agent's tunnel address
	Keys tunnel.Current // the client stores the session's Sealer here

	sent, failed, noSession, tooBig atomic.Uint64
}

// SendStats counts what the copy daemon's senders did.
type SendStats struct {
	Sent      uint64 // datagrams the kernel took
	Failed    uint64 // datagrams the kernel refused (EAGAIN, EMSGSIZE, unreachable)
	NoSession uint64 // packets dropped: the control channel was down
	TooBig    uint64 // packets dropped: larger than tunnel.MaxInner
}

// Stats returns the counters.
func (l *Link) Stats() SendStats {
	return SendStats{Sent: l.sent.Load(), Failed: l.failed.Load(), NoSession: l.noSession.Load(), TooBig: l.tooBig.Load()}
}

// Sender seals packets into datagrams and queues them; Flush sends the
// queue with one sendmmsg on a connected UDP socket. Not safe for
// concurrent use: one per worker.
type Sender struct {
	l      *Link
	fd     int
	n      int
	bufs   [MaxBatch][slotSize]byte
	iovs   [MaxBatch]unix.Iovec
	msgs   [MaxBatch]unix.Mmsghdr
	big    [tunnel.MaxDatagram]byte
	failed int
	err    error
}

// Open opens a Sender's socket, connected to l.Dst.
func Open(l *Link) (*Sender, error) {
	dst := l.Dst
	fam := unix.AF_INET6
	if dst.Addr().Unmap().Is4() {
		fam = unix.AF_INET
	}
	fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("open tunnel socket: %w", err)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sndBuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, sndBuf)
	}
	// Fragment what exceeds the path's MTU rather than refuse it: the
	// inner packet is as large as the shadow's MSS allows.
	if fam == unix.AF_INET {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DONT)
	} else {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DONT)
	}
	if err := unix.Connect(fd, sockaddr(dst)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tunnel to %v: %w", dst, err)
	}
	return &Sender{l: l, fd: fd}, nil
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if a := ap.Addr().Unmap(); a.Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// Send seals pkt and queues it; a full queue is flushed first. A packet
// without a session or too big is refused at once; errors of queued
// datagrams are reported by Flush.
func (s *Sender) Send(pkt []byte) error {
	seal := s.l.Keys.Load()
	switch {
	case seal == nil:
		s.l.noSession.Add(1)
		return ErrNoSession
	case len(pkt) > tunnel.MaxInner:
		s.l.tooBig.Add(1)
		return ErrTooBig
	case len(pkt)+tunnel.Overhead > slotSize:
		d := seal.Seal(s.big[:], tunnel.TypePacket, pkt)
		_, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(s.fd), uintptr(unsafe.Pointer(&d[0])), uintptr(len(d)),
			unix.MSG_DONTWAIT, 0, 0)
		if errno != 0 {
			s.l.failed.Add(1)
			return errno
		}
		s.l.sent.Add(1)
		return nil
	}
	if s.n == MaxBatch {
		s.flush()
	}
	i := s.n
	d := seal.Seal(s.bufs[i][:], tunnel.TypePacket, pkt)
	s.iovs[i].Base = &s.bufs[i][0]
	s.iovs[i].SetLen(len(d))
	h := &s.msgs[i].Hdr
	h.Iov = &s.iovs[i]
	h.SetIovlen(1)
	s.n++
	return nil
}

// Flush sends everything queued and returns how many datagrams the
// kernel refused since the last Flush, with the last error.
func (s *Sender) Flush() (failed int, err error) {
	s.flush()
	failed, err = s.failed, s.err
	s.failed, s.err = 0, nil
	return failed, err
}

func (s *Sender) flush() {
	sent := 0
	for off := 0; off < s.n; {
		// Raw for the reason rawsock's flushQueue gives.
		r, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(s.fd),
			uintptr(unsafe.Pointer(&s.msgs[off])), uintptr(s.n-off), unix.MSG_DONTWAIT, 0, 0)
		if errno != 0 {
			s.failed++ // the first datagram failed: count it, go on with the rest
			s.err = errno
			s.l.failed.Add(1)
			off++
			continue
		}
		off += int(r)
		sent += int(r)
	}
	if sent > 0 {
		s.l.sent.Add(uint64(sent))
	}
	s.n = 0
}

// Close closes the socket.
func (s *Sender) Close() error { return unix.Close(s.fd) }
