package capture

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// tpacketSource reads TPACKET_V3 rings of its own AF_PACKET sockets in Go
// (tpacketring.go): a packet costs no cgo call and no system call, and an
// empty ring parks the reader in Go's network poller, holding no thread.
//
// That matters at low rates: every cgo or system call after an idle gap
// wakes the runtime's sysmon thread, which then polls at 20 µs until the
// process idles again; with a cgo call per packet that was about half of
// the copier's CPU at 1k requests a second (docs/scaling.md). libpcap
// still compiles the filter; the kernel runs it.
//
// The ring starts small and grows with the observed rate
// (tpacketgrow.go); only the reader swaps rings.
type tpacketSource struct {
	cfg     Config
	ifindex int
	prog    []unix.SockFilter
	dir     direction
	netnsFD int       // the namespace opened in, for the rings it grows into
	netns   uint64    // its inode
	r       *ringSock // the ring read; the reader changes it, under mu

	// Reader state: the block of r it holds (cur, while held), and within
	// it the packets left and the next one's offset.
	cur, left, next int
	held            bool
	readyFn         func(uintptr) bool // built once: waiting must not allocate

	grow grower // the reader's, but for what grower says

	read  atomic.Uint64
	nonIP atomic.Uint64
	other atomic.Uint64
	bad   atomic.Uint64 // frames whose ring header is out of bounds: a kernel we misread

	// holder's mu also serialises Stats, whose kernel counters reset on
	// each read and are summed here (under mu), and guards r's changes.
	holder
	kernRecv, kernDrp uint64
}

// ringWait bounds one wait for packets: Read returns ErrTimeout after it,
// so an idle source wakes its reader a few times a second at most.
const ringWait = 250 * time.Millisecond

var errClosed = errors.New("capture closed")

type direction uint8

const (
	bothWays direction = iota
	inboundOnly
	outboundOnly
)

// openTPacket opens cfg's capture on a ring of cfg.InitialBufferSize.
func openTPacket(cfg Config) (*tpacketSource, error) {
	if cfg.InboundOnly && cfg.OutboundOnly {
		return nil, fmt.Errorf("capture on %s: inbound only or outbound only, not both", cfg.Interface)
	}
	if cfg.Outbound.Filter != "" && (!cfg.InboundOnly || cfg.Outbound.SnapLen <= 0 || cfg.Outbound.SnapLen > cfg.SnapLen) {
		return nil, fmt.Errorf("capture on %s: outbound packets are added to an inbound-only capture, cut at 1..%d bytes", cfg.Interface, cfg.SnapLen)
	}
	s := &tpacketSource{cfg: cfg}
	s.free = s.freeRings
	if cfg.Interface != "any" {
		ifi, err := net.InterfaceByName(cfg.Interface)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", cfg.Interface, err)
		}
		s.ifindex = ifi.Index
	}
	var err error
	if s.prog, err = ringFilter(cfg); err != nil {
		return nil, err
	}
	if s.netnsFD, s.netns, err = openNetns(); err != nil {
		return nil, fmt.Errorf("capture on %s: %w", cfg.Interface, err)
	}
	switch {
	case cfg.Outbound.Filter != "":
		// The filter takes each direction's packets (ringFilter).
	case cfg.InboundOnly:
		s.dir = inboundOnly
	case cfg.OutboundOnly:
		s.dir = outboundOnly
	}
	if s.r, err = openRing(cfg, s.ifindex, s.prog, min(cfg.InitialBufferSize, cfg.BufferSize)); err == nil {
		if err = s.r.bind(s.ifindex); err != nil {
			s.r.release()
		}
	}
	if err != nil {
		unix.Close(s.netnsFD)
		return nil, fmt.Errorf("capture on %s: %w", cfg.Interface, err)
	}
	s.grow.init(cfg)
	s.grow.size.Store(int64(s.r.size()))
	s.readyFn = func(uintptr) bool { return s.closed.Load() || s.grow.pending.Load() != nil || s.r.ready(s.cur) }
	return s, nil
}

func (s *tpacketSource) Read() ([]byte, time.Time, error) {
	if !s.begin() {
		return nil, time.Time{}, io.EOF
	}
	for {
		if s.left == 0 {
			if err := s.nextBlock(); err != nil {
				return nil, time.Time{}, s.failed(err)
			}
			continue
		}
		f, ok := parseFrame(s.r.block(s.cur), s.next)
		if !ok {
			s.bad.Add(1)
			s.left = 0
			continue
		}
		s.left--
		s.next = f.next
		switch {
		case f.pktType == packetOtherHost:
			s.other.Add(1)
			continue
		case s.dir == inboundOnly && f.pktType == packetOutgoing, s.dir == outboundOnly && f.pktType != packetOutgoing:
			continue // the filter's test dropped these already
		}
		data := f.data
		if len(data) == 0 || !(f.proto == etherTypeIPv4 && data[0]>>4 == 4 || f.proto == etherTypeIPv6 && data[0]>>4 == 6) {
			s.nonIP.Add(1)
			continue
		}
		ts := time.Unix(int64(f.sec), int64(f.nsec))
		if s.grow.switching() && s.grow.duplicate(data, ts) {
			continue // read from the ring before, during the switch
		}
		s.checkCut(len(data), f.wireLen, f.pktType)
		s.read.Add(1)
		return data, ts, nil
	}
}

// ringFrame is one packet's place in a block of the ring.
type ringFrame struct {
	data      []byte // from the network header, as long as the kernel kept
	next      int    // the next packet's offset in the block
	wireLen   int    // the packet's length before any cut
	pktType   byte   // sockaddr_ll's packet type: the direction
	proto     uint16 // sockaddr_ll's protocol: the EtherType
	sec, nsec uint32
}

// parseFrame reads the packet header at off in block b. It reports false
// when the header or the data it points at would lie outside b: the
// ring's memory is the kernel's, but a misread layout must not become an
// out-of-bounds read.
func parseFrame(b []byte, off int) (ringFrame, bool) {
	if off < 0 || off+pktMinLen > len(b) {
		return ringFrame{}, false
	}
	net, snap := int(host16(b[off+pktNet:])), int(host32(b[off+pktSnapLen:]))
	start := off + net
	if start+snap > len(b) {
		return ringFrame{}, false
	}
	return ringFrame{
		data:    b[start : start+snap : start+snap],
		next:    off + int(host32(b[off+pktNextOffset:])),
		wireLen: int(host32(b[off+pktLen:])),
		pktType: b[off+sllPktType],
		proto:   be16(b[off+sllProtocol:]),
		sec:     host32(b[off+pktSec:]),
		nsec:    host32(b[off+pktNsec:]),
	}, true
}

// nextBlock hands the block read back to the kernel and waits, up to
// ringWait, for the next one; a grown ring is switched to on the way.
func (s *tpacketSource) nextBlock() error {
	if s.held {
		atomic.StoreUint32(s.r.status(s.cur), unix.TP_STATUS_KERNEL)
		s.held = false
		s.cur = (s.cur + 1) % s.r.blocks
	}
	for !s.r.ready(s.cur) {
		if s.closed.Load() {
			return errClosed
		}
		if next := s.grow.pending.Swap(nil); next != nil {
			s.beginSwitch(next)
			continue
		}
		deadline := time.Now().Add(ringWait)
		if s.grow.draining() {
			if !time.Now().Before(s.grow.drained) {
				s.finishSwitch()
				continue
			}
			deadline = s.grow.drained
		}
		if err := s.r.poll.SetReadDeadline(deadline); err != nil {
			return errClosed
		}
		if s.closed.Load() { // Close's wake may have come before that deadline
			return errClosed
		}
		if err := s.r.raw.Read(s.readyFn); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && !s.closed.Load() {
				if s.grow.draining() || s.grow.pending.Load() != nil {
					continue
				}
				return ErrTimeout
			}
			return errClosed
		}
	}
	if next := s.grow.pending.Swap(nil); next != nil {
		s.beginSwitch(next) // the ring being read keeps being read until empty
	}
	b := s.r.block(s.cur)
	s.held, s.left, s.next = true, int(host32(b[blkNumPkts:])), int(host32(b[blkFirstPkt:]))
	s.account(int(host32(b[blkLen:])))
	return nil
}

// failed ends a Read that got err.
func (s *tpacketSource) failed(err error) error {
	if s.fail() || errors.Is(err, errClosed) {
		return io.EOF
	}
	return err
}

func (s *tpacketSource) Stats() Stats {
	st := Stats{Read: s.read.Load(), NonIP: s.nonIP.Load() + s.bad.Load(), OtherHost: s.other.Load()}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sumKernelLocked()
	st.KernelRecv, st.KernelDropped = s.kernRecv, s.kernDrp
	g := &s.grow
	st.RingBytes, st.RingGrown, st.RingGrowFailed = uint64(g.size.Load()), g.grown.Load(), g.failed.Load()
	st.RingCut, st.RingDuplicates = g.cut.Load(), g.dups.Load()
	return st
}

// sumKernelLocked adds what the kernel counted since the last read to
// the totals: the rings' counters reset on each read.
func (s *tpacketSource) sumKernelLocked() {
	if s.released {
		return
	}
	for _, r := range [...]*ringSock{s.r, s.grow.next} {
		if r != nil {
			recv, drops := r.kernelStats()
			s.kernRecv += recv
			s.kernDrp += drops
		}
	}
}

// Close stops the source: a waiting Read returns io.EOF at once. The
// rings are released now, or by the reader once it is no longer busy.
func (s *tpacketSource) Close() error {
	s.close(func() { _ = s.r.poll.SetReadDeadline(time.Unix(1, 0)) })
	return nil
}

// freeRings releases the rings, the one read, the one switched to and
// the one prepared, and the namespace (holder.free).
func (s *tpacketSource) freeRings() {
	s.r.release()
	unix.Close(s.netnsFD)
	if s.grow.next != nil {
		s.grow.next.release()
	}
	if p := s.grow.pending.Swap(nil); p != nil {
		p.release()
	}
}
