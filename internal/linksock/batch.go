package linksock

import (
	"errors"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MaxBatch is how many packets one sendmmsg carries.
const MaxBatch = 64

// slotSize holds any packet an Ethernet MTU allows; larger ones are sent
// at once, unbatched.
const slotSize = 2048

// Batch queues packets and sends them with one sendmmsg call, as
// rawsock.Batch does for raw sockets: one system call per worker batch.
// Packets are copied, so callers may reuse their buffers at once; the
// next hop is read when a packet is queued. Not safe for concurrent use;
// one per worker.
type Batch struct {
	s      *Sender
	n      int
	bufs   [MaxBatch][slotSize]byte
	iovs   [MaxBatch]unix.Iovec
	msgs   [MaxBatch]unix.Mmsghdr
	names  [MaxBatch]unix.RawSockaddrLinklayer
	failed int
	err    error
}

// NewBatch returns a batching front for s.
func NewBatch(s *Sender) *Batch { return &Batch{s: s} }

// Send queues pkt; a full queue is flushed first. A packet without a
// resolved next hop is refused at once (ErrNoRoute, ErrNoNeighbour);
// errors of queued packets are reported by Flush.
func (b *Batch) Send(pkt []byte) error {
	if len(pkt) > slotSize {
		return b.s.Send(pkt)
	}
	h, proto, err := b.s.nextHop(pkt)
	if err != nil {
		return err
	}
	if b.n == MaxBatch {
		b.flush()
	}
	i := b.n
	n := copy(b.bufs[i][:], pkt)
	b.iovs[i].Base = &b.bufs[i][0]
	b.iovs[i].SetLen(n)
	sa := &b.names[i]
	sa.Family, sa.Protocol, sa.Ifindex, sa.Halen = unix.AF_PACKET, htons(proto), int32(h.ifindex), 6
	copy(sa.Addr[:6], h.mac[:])
	m := &b.msgs[i].Hdr
	m.Iov = &b.iovs[i]
	m.SetIovlen(1)
	m.Name = (*byte)(unsafe.Pointer(sa))
	m.Namelen = unix.SizeofSockaddrLinklayer
	b.n++
	return nil
}

// Flush sends everything queued and returns how many packets the kernel
// refused since the last Flush, with the last error.
func (b *Batch) Flush() (failed int, err error) {
	b.flush()
	failed, err = b.failed, b.err
	b.failed, b.err = 0, nil
	return failed, err
}

func (b *Batch) flush() {
	for off := 0; off < b.n; {
		// Raw for the reason rawsock's flushQueue gives.
		r, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(b.s.fd),
			uintptr(unsafe.Pointer(&b.msgs[off])), uintptr(b.n-off), unix.MSG_DONTWAIT, 0, 0)
		if errno != 0 {
			b.failed++ // the first packet failed: count it, go on with the rest
			b.err = errno
			off++
			continue
		}
		off += int(r)
	}
	b.n = 0
}

// nextHop returns where pkt goes and its EtherType, counting and asking
// for what is missing.
func (s *Sender) nextHop(pkt []byte) (hop, uint16, error) {
	var dst netip.Addr
	var proto uint16
	switch {
	case len(pkt) >= 20 && pkt[0]>>4 == 4:
		dst, proto = netip.AddrFrom4([4]byte(pkt[16:20])), unix.ETH_P_IP
	case len(pkt) >= 40 && pkt[0]>>4 == 6:
		dst, proto = netip.AddrFrom16([16]byte(pkt[24:40])), unix.ETH_P_IPV6
	default:
		return hop{}, 0, errNotIP
	}
	h, ok := (*s.r.table.Load())[dst]
	switch {
	case !ok:
		s.r.noRoute.Add(1)
		select {
		case s.r.want <- dst: // the resolver looks it up
		default:
		}
		return hop{}, 0, ErrNoRoute
	case !h.ok:
		s.r.noNeigh.Add(1)
		return hop{}, 0, ErrNoNeighbour
	}
	return h, proto, nil
}

var errNotIP = errors.New("not an ip packet")
