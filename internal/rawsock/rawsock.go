// Package rawsock sends IP packets the copier built itself through raw
// sockets (IP_HDRINCL for IPv4, IPPROTO_RAW for IPv6): the source address
// is whatever the packet says, so forged client addresses leave prod as
// they are. It owns the sockets and nothing else; it never blocks (sends
// use MSG_DONTWAIT) and never retains a packet.
package rawsock

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sndBuf is the socket send buffer asked for: deep enough to absorb a
// burst of copies without EAGAIN.
const sndBuf = 4 << 20

// Sender is one pair of raw sockets. It is not safe for concurrent use:
// give each worker its own.
type Sender struct {
	fd4, fd6 int
	sa4      unix.RawSockaddrInet4
	sa6      unix.RawSockaddrInet6
}

// ErrNoIPv6 is returned when sending IPv6 on a host without IPv6.
var ErrNoIPv6 = errors.New("ipv6 raw socket unavailable")

// Open opens the sockets. IPv6 is optional: a host without it can still
// copy IPv4.
func Open() (*Sender, error) {
	s := &Sender{fd4: -1, fd6: -1}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, fmt.Errorf("open ipv4 raw socket (needs CAP_NET_RAW): %w", err)
	}
	s.fd4 = fd
	tune(fd)
	if fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW); err == nil {
		s.fd6 = fd
		tune(fd)
	}
	s.sa4.Family = unix.AF_INET
	s.sa6.Family = unix.AF_INET6
	return s, nil
}

func tune(fd int) {
	// SO_SNDBUFFORCE passes wmem_max with CAP_NET_ADMIN; fall back quietly.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sndBuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, sndBuf)
	}
}

// Send transmits one IPv4 or IPv6 packet to its destination address.
func (s *Sender) Send(pkt []byte) error {
	if len(pkt) < 20 {
		return errors.New("packet too short")
	}
	var fd int
	var sa unsafe.Pointer
	var salen uintptr
	switch pkt[0] >> 4 {
	case 4:
		copy(s.sa4.Addr[:], pkt[16:20])
		fd, sa, salen = s.fd4, unsafe.Pointer(&s.sa4), unix.SizeofSockaddrInet4
	case 6:
		if s.fd6 < 0 {
			return ErrNoIPv6
		}
		if len(pkt) < 40 {
			return errors.New("packet too short")
		}
		copy(s.sa6.Addr[:], pkt[24:40])
		fd, sa, salen = s.fd6, unsafe.Pointer(&s.sa6), unix.SizeofSockaddrInet6
	default:
		return errors.New("not an ip packet")
	}
	// Raw for the reason flushQueue gives: MSG_DONTWAIT never sleeps.
	_, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd),
		uintptr(unsafe.Pointer(&pkt[0])), uintptr(len(pkt)), unix.MSG_DONTWAIT,
		uintptr(sa), salen)
	if errno != 0 {
		return errno
	}
	return nil
}

// Close closes the sockets.
func (s *Sender) Close() error {
	if s.fd4 >= 0 {
		unix.Close(s.fd4)
		s.fd4 = -1
	}
	if s.fd6 >= 0 {
		unix.Close(s.fd6)
		s.fd6 = -1
	}
	return nil
}
