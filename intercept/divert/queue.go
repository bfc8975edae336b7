package divert

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpshadow/tcpshadow/capture"
)

// Config configures a Queue.
type Config struct {
	Num uint16 // NFQUEUE number; the rules queue to it
	// MaxLen bounds the packets the kernel holds for the agent; beyond
	// it the kernel drops them (counted: QueueDropped).
	MaxLen uint32
	// CopyRange is how much of each packet the kernel copies to the
	// agent: its IP and TCP headers with options are all it relays.
	CopyRange  uint32
	BufferSize int           // the socket's receive buffer, bytes
	Timeout    time.Duration // Read returns capture.ErrTimeout after this long idle
}

// DefaultQueueNum is the queue the rules and the agent use by default.
const DefaultQueueNum = 36524

// DefaultConfig returns the queue's defaults, written here and nowhere
// else.
func DefaultConfig() Config {
	return Config{
		Num:        DefaultQueueNum,
		MaxLen:     8192,
		CopyRange:  256,
		BufferSize: 8 << 20,
		Timeout:    100 * time.Millisecond,
	}
}

// Stats counts what a Queue saw. Every packet the kernel queued is read
// (Read), or dropped by the kernel: the queue full (QueueDropped) or the
// socket's buffer full (UserDropped, and Overruns counts the reads that
// reported it).
type Stats struct {
	Read          uint64 // packets returned by Read, each dropped
	Malformed     uint64 // messages not parsable as a queued packet
	Other         uint64 // netlink messages that were not packets
	VerdictErrors uint64 // verdicts the kernel refused (the packet is dropped when the queue goes)
	Overruns      uint64 // reads that found the socket's buffer had overflowed
	QueueTotal    uint64 // packets held in the queue now (gauge), from the kernel
	Queued        uint64 // packets the kernel queued since the binding
	QueueDropped  uint64 // dropped by the kernel: queue full
	UserDropped   uint64 // dropped by the kernel: the agent's socket full
}

// conn is the netlink socket; tests fake it.
type conn interface {
	// recv reads one datagram; unix.EAGAIN after the receive timeout.
	recv(b []byte) (int, error)
	send(b []byte) error
	close() error
}

// Queue reads packets from an NFQUEUE and drops every one it reads. It is
// a capture.Source: Read returns a packet from its IP header (at most
// CopyRange bytes), valid until the next Read. One goroutine reads.
type Queue struct {
	cfg     Config
	c       conn
	buf     []byte
	n, off  int // buf[off:n] is read and not yet parsed
	verdict [verdictMsgLen]byte
	seq     uint32

	mu      sync.Mutex // guards reading, closed: Close and Read's end
	reading bool
	closed  bool

	st struct {
		read, malformed, other, verdictErrors, overruns atomic.Uint64
	}
	// procPath is the kernel's per-queue counters; tests point it elsewhere.
	procPath string
}

// Open binds queue cfg.Num and configures it: packets copied up to
// CopyRange, at most MaxLen held, large (GSO) segments queued whole, and
// no fail-open flag, so the kernel drops what the queue cannot take. It
// fails if another process holds the queue.
func Open(cfg Config) (*Queue, error) {
	c, err := dialNetlink(cfg)
	if err != nil {
		return nil, err
	}
	q := newQueue(cfg, c)
	if err := q.configure(); err != nil {
		c.close()
		return nil, err
	}
	return q, nil
}

func newQueue(cfg Config, c conn) *Queue {
	// A datagram holds one packet's message: its headers, a few metadata
	// attributes and at most CopyRange bytes of the packet.
	return &Queue{cfg: cfg, c: c, buf: make([]byte, int(cfg.CopyRange)+4096), procPath: "/proc/net/netfilter/nfnetlink_queue"}
}

// configure binds the queue and sets its parameters, waiting for the
// kernel's acknowledgement of each step.
func (q *Queue) configure() error {
	num := q.cfg.Num
	steps := []struct {
		what string
		msg  []byte
	}{
		{"bind", configMsg(q.nextSeq(), num, attr(cfgCmd, cmdBind, 0, 0, 0))},
		{"set parameters", configMsg(q.nextSeq(), num,
			attr(cfgParams, append(be32(q.cfg.CopyRange), copyPacket)...),
			attr(cfgQueueMax, be32(q.cfg.MaxLen)...),
			// Flags, and the mask saying which flags the message sets:
			// GSO on; fail-open (0x1) explicitly off.
			attr(cfgFlags, be32(flagGSO)...),
			attr(cfgMask, be32(flagGSO|0x1)...))},
	}
	for _, s := range steps {
		if err := q.c.send(s.msg); err != nil {
			return fmt.Errorf("nfqueue %d: %s: %w", num, s.what, err)
		}
		if err := q.awaitAck(); err != nil {
			if errors.Is(err, unix.EPERM) {
				return fmt.Errorf("nfqueue %d: %s: %w (another process, another agent?, holds the queue)", num, s.what, err)
			}
			return fmt.Errorf("nfqueue %d: %s: %w", num, s.what, err)
		}
	}
	return nil
}

// awaitAck reads until the acknowledgement of the last request. Packets
// that arrive meanwhile (the rules may already be in place) are dropped
// at once.
func (q *Queue) awaitAck() error {
	// Bounded: packets queue only once the parameters are set (before, the
	// kernel drops them), so few can come before the last acknowledgement.
	for range 4096 {
		n, err := q.c.recv(q.buf)
		if err != nil {
			return err
		}
		b := q.buf[:n]
		for len(b) > 0 {
			msg, rest, err := splitMessage(b)
			if err != nil {
				return err
			}
			b = rest
			switch msgType(msg) {
			case nlmsgError:
				errno, err := parseAck(msg)
				if err != nil {
					return err
				}
				if errno != 0 {
					return unix.Errno(errno)
				}
				return nil
			case typePacket:
				var p packet
				if parsePacket(msg, &p) == nil || p.hasID {
					q.drop(p.id)
				}
			}
		}
	}
	return errors.New("no acknowledgement")
}

func (q *Queue) nextSeq() uint32 { q.seq++; return q.seq }

// drop gives packet id its DROP verdict.
func (q *Queue) drop(id uint32) {
	putVerdict(q.verdict[:], q.nextSeq(), q.cfg.Num, id)
	if q.c.send(q.verdict[:]) != nil {
		q.st.verdictErrors.Add(1)
	}
}

// Read returns the next queued packet, after giving it its DROP verdict.
// It returns capture.ErrTimeout when idle and io.EOF after Close. It is on
// the per-packet path: no allocation.
func (q *Queue) Read() ([]byte, time.Time, error) {
	for {
		if q.off >= q.n {
			if err := q.fill(); err != nil {
				return nil, time.Time{}, err
			}
			continue
		}
		msg, rest, err := splitMessage(q.buf[q.off:q.n])
		if err != nil {
			q.st.malformed.Add(1)
			q.off = q.n
			continue
		}
		q.off = q.n - len(rest)
		if msgType(msg) != typePacket {
			q.st.other.Add(1)
			continue
		}
		var p packet
		err = parsePacket(msg, &p)
		if p.hasID {
			q.drop(p.id)
		}
		if err != nil {
			q.st.malformed.Add(1)
			continue
		}
		q.st.read.Add(1)
		return p.payload, time.Now(), nil
	}
}

// fill reads the next datagram into buf.
func (q *Queue) fill() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return io.EOF
	}
	q.reading = true
	q.mu.Unlock()
	n, err := q.c.recv(q.buf)
	q.mu.Lock()
	q.reading = false
	if q.closed {
		// Close came while we read: the socket is ours to close.
		q.c.close()
		q.mu.Unlock()
		return io.EOF
	}
	q.mu.Unlock()
	switch {
	case err == nil:
		q.n, q.off = n, 0
		return nil
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
		return capture.ErrTimeout
	case errors.Is(err, unix.ENOBUFS):
		// The kernel could not queue packets to us and dropped them
		// (UserDropped counts them); the socket goes on.
		q.st.overruns.Add(1)
		return nil
	}
	return fmt.Errorf("nfqueue %d: read: %w", q.cfg.Num, err)
}

// Close unbinds the queue (by closing its socket); a waiting Read returns
// io.EOF within Timeout. With the queue unbound, the rules' packets are
// dropped by the kernel.
func (q *Queue) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil
	}
	q.closed = true
	if q.reading {
		return nil // the Read in progress closes it
	}
	return q.c.close()
}

// QueueStats returns the counters, the kernel's included.
func (q *Queue) QueueStats() Stats {
	s := Stats{
		Read: q.st.read.Load(), Malformed: q.st.malformed.Load(), Other: q.st.other.Load(),
		VerdictErrors: q.st.verdictErrors.Load(), Overruns: q.st.overruns.Load(),
	}
	if k, err := ReadKernelQueue(q.procPath, q.cfg.Num); err == nil {
		s.QueueTotal, s.QueueDropped, s.UserDropped, s.Queued = k.Total, k.Dropped, k.UserDropped, k.IDSequence
	}
	return s
}

// Stats returns the counters as a capture.Source's: the kernel's drops,
// queue full or socket full, are KernelDropped; malformed messages NonIP.
func (q *Queue) Stats() capture.Stats {
	s := q.QueueStats()
	return capture.Stats{Read: s.Read, NonIP: s.Malformed, KernelRecv: s.Queued,
		KernelDropped: s.QueueDropped + s.UserDropped}
}

// KernelQueue is one line of /proc/net/netfilter/nfnetlink_queue: a bound
// queue as the kernel sees it.
type KernelQueue struct {
	Num         uint16
	PortID      uint32 // the netlink port of the process bound to it
	Total       uint64 // packets waiting for a verdict
	CopyMode    int    // 2: packets copied
	CopyRange   uint64
	Dropped     uint64 // queue full
	UserDropped uint64 // the listener's socket full
	IDSequence  uint64 // the last packet id: packets queued since the binding
}

// ErrNotBound is ReadKernelQueue's answer for a queue no process binds.
var ErrNotBound = errors.New("no process is bound to the queue")

// ReadKernelQueue returns queue num's line of the kernel's table at path
// (/proc/net/netfilter/nfnetlink_queue, of the reader's network
// namespace), or ErrNotBound.
func ReadKernelQueue(path string, num uint16) (KernelQueue, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return KernelQueue{}, ErrNotBound // the module is loaded with the first binding
		}
		return KernelQueue{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 8 {
			continue
		}
		var v [8]uint64
		ok := true
		for i := range v {
			if v[i], err = strconv.ParseUint(fs[i], 10, 64); err != nil {
				ok = false
			}
		}
		if !ok || v[0] != uint64(num) {
			continue
		}
		return KernelQueue{Num: num, PortID: uint32(v[1]), Total: v[2], CopyMode: int(v[3]),
			CopyRange: v[4], Dropped: v[5], UserDropped: v[6], IDSequence: v[7]}, nil
	}
	if err := sc.Err(); err != nil {
		return KernelQueue{}, err
	}
	return KernelQueue{}, ErrNotBound
}

// netlinkConn is the live NETLINK_NETFILTER socket.
type netlinkConn struct{ fd int }

func dialNetlink(cfg Config) (*netlinkConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("nfqueue: netlink socket: %w", err)
	}
	fail := func(what string, err error) (*netlinkConn, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("nfqueue: %s: %w", what, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fail("bind", err)
	}
	// Forced: past net.core.rmem_max (the agent holds CAP_NET_ADMIN).
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, cfg.BufferSize); err != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, cfg.BufferSize); err != nil {
			return fail("receive buffer", err)
		}
	}
	tv := unix.NsecToTimeval(cfg.Timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fail("receive timeout", err)
	}
	// A reply the kernel cannot deliver is an error on our next read,
	// counted there; it must not fail the queue's configuration acks.
	return &netlinkConn{fd: fd}, nil
}

func (c *netlinkConn) recv(b []byte) (int, error) {
	n, err := unix.Read(c.fd, b)
	if err != nil {
		return 0, err
	}
	return n, nil
}

func (c *netlinkConn) send(b []byte) error {
	_, err := unix.Write(c.fd, b)
	return err
}

func (c *netlinkConn) close() error { return unix.Close(c.fd) }
