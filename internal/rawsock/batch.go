package rawsock

import (
	"errors"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MaxBatch is how many packets one sendmmsg carries.
const MaxBatch = 64

// slotSize holds any packet an Ethernet MTU allows; larger ones are sent
// at once, unbatched.
const slotSize = 2048

// Batch queues packets and sends each family's queue with one sendmmsg
// call, so a worker pays one system call per batch instead of one per
// packet. Packets are copied: callers may reuse their buffers at once. Not
// safe for concurrent use; one per worker.
type Batch struct {
	s      *Sender
	v4, v6 queue
	failed int
	err    error
}

type queue struct {
	n     int
	bufs  [MaxBatch][slotSize]byte
	iovs  [MaxBatch]unix.Iovec
	msgs  [MaxBatch]unix.Mmsghdr
	name4 [MaxBatch]unix.RawSockaddrInet4
	name6 [MaxBatch]unix.RawSockaddrInet6
}

// NewBatch returns a batching front for s.
func NewBatch(s *Sender) *Batch { return &Batch{s: s} }

// Send queues pkt; a full queue is flushed first. Errors of queued packets
// are reported by Flush.
func (b *Batch) Send(pkt []byte) error {
	if len(pkt) < 20 {
		return errors.New("packet too short")
	}
	if len(pkt) > slotSize {
		return b.s.Send(pkt)
	}
	var q *queue
	switch pkt[0] >> 4 {
	case 4:
		q = &b.v4
	case 6:
		if b.s.fd6 < 0 {
			return ErrNoIPv6
		}
		if len(pkt) < 40 {
			return errors.New("packet too short")
		}
		q = &b.v6
	default:
		return errors.New("not an ip packet")
	}
	if q.n == MaxBatch {
		b.flushQueue(q, pkt[0]>>4)
	}
	i := q.n
	n := copy(q.bufs[i][:], pkt)
	q.iovs[i].Base = &q.bufs[i][0]
	q.iovs[i].SetLen(n)
	h := &q.msgs[i].Hdr
	h.Iov = &q.iovs[i]
	h.SetIovlen(1)
	if pkt[0]>>4 == 4 {
		q.name4[i].Family = unix.AF_INET
		copy(q.name4[i].Addr[:], pkt[16:20])
		h.Name = (*byte)(unsafe.Pointer(&q.name4[i]))
		h.Namelen = unix.SizeofSockaddrInet4
	} else {
		q.name6[i].Family = unix.AF_INET6
		copy(q.name6[i].Addr[:], pkt[24:40])
		h.Name = (*byte)(unsafe.Pointer(&q.name6[i]))
		h.Namelen = unix.SizeofSockaddrInet6
	}
	q.n++
	return nil
}

// Flush sends everything queued and returns how many packets the kernel
// refused since the last Flush, with the last error.
func (b *Batch) Flush() (failed int, err error) {
	b.flushQueue(&b.v4, 4)
	b.flushQueue(&b.v6, 6)
	failed, err = b.failed, b.err
	b.failed, b.err = 0, nil
	return failed, err
}

func (b *Batch) flushQueue(q *queue, family byte) {
	fd := b.s.fd4
	if family == 6 {
		fd = b.s.fd6
	}
	for off := 0; off < q.n; {
		// RawSyscall: with MSG_DONTWAIT the call never sleeps, but on a
		// virtual link it runs the receiver's stack and can take tens of
		// µs. Announced to the scheduler (Syscall), that makes the
		// runtime hand the P to another thread and back, several context
		// switches per flush; raw, the goroutine just keeps its P.
		r, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd),
			uintptr(unsafe.Pointer(&q.msgs[off])), uintptr(q.n-off), unix.MSG_DONTWAIT, 0, 0)
		if errno != 0 {
			// The first packet failed (EMSGSIZE, EAGAIN, ...): count it
			// and go on with the rest; never block, never give up.
			b.failed++
			b.err = errno
			off++
			continue
		}
		off += int(r)
	}
	q.n = 0
}
