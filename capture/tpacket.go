package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/google/gopacket/pcap"
	"golang.org/x/sys/unix"
)

// tpacketSource reads a TPACKET_V3 ring of its own AF_PACKET socket in
// Go: a packet costs no cgo call and no system call, and an empty ring
// parks the reader in Go's network poller, holding no thread.
//
// That matters at low rates: every cgo or system call after an idle gap
// wakes the runtime's sysmon thread, which then polls at 20 µs until the
// process idles again; with a cgo call per packet that was about half of
// the copier's CPU at 1k requests a second (docs/scaling.md). libpcap
// still compiles the filter; the kernel runs it.
//
// The socket is SOCK_DGRAM: every frame starts at its network header
// whatever the link, so the filter is compiled for raw IP and the
// direction is read from the packet type the kernel records.
type tpacketSource struct {
	fd        int
	ring      []byte // the mmap'd blocks
	blockSize int
	blocks    int
	poll      *os.File // a dup of fd, registered with the poller
	raw       syscall.RawConn
	dir       direction

	// Reader state: the block it holds (cur, while held), and within it
	// the packets left and the next one's offset.
	cur, left, next int
	held            bool
	readyFn         func(uintptr) bool // built once: waiting must not allocate

	closed atomic.Bool
	read   atomic.Uint64
	nonIP  atomic.Uint64
	other  atomic.Uint64
	bad    atomic.Uint64 // frames whose ring header is out of bounds: a kernel we misread

	// mu orders the ring's release after the reader is done with it, as
	// in pcapSource; and it serialises Stats, whose kernel counters reset
	// on each read and are summed here.
	mu                sync.Mutex
	busy, released    bool
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

// Offsets in the ring, from linux/if_packet.h. A block starts with
// struct tpacket_block_desc; each packet with struct tpacket3_hdr,
// followed (at tpacket3HdrLen) by a struct sockaddr_ll.
const (
	blkStatus      = 8  // hdr.bh1.block_status
	blkNumPkts     = 12 // hdr.bh1.num_pkts
	blkFirstPkt    = 16 // hdr.bh1.offset_to_first_pkt
	pktNextOffset  = 0  // tp_next_offset
	pktSec         = 4  // tp_sec
	pktNsec        = 8  // tp_nsec
	pktSnapLen     = 12 // tp_snaplen
	pktNet         = 26 // tp_net
	tpacket3HdrLen = 48 // TPACKET_ALIGN(sizeof(struct tpacket3_hdr))
	sllProtocol    = tpacket3HdrLen + 2
	sllPktType     = tpacket3HdrLen + 10
	pktMinLen      = sllPktType + 1
)

// Packet types of struct sockaddr_ll (linux/if_packet.h).
const (
	packetOtherHost = 3
	packetOutgoing  = 4
)

// maxFilterLen is the kernel's bound on a classic BPF program (BPF_MAXINSNS).
const maxFilterLen = 4096

// Ancillary load of the packet type in classic BPF (linux/filter.h).
const skfAdPktType = 0xfffff000 + 4 // SKF_AD_OFF + SKF_AD_PKTTYPE

// ringBlockSize returns the block size for snapLen: a power of two of
// pages that holds the largest packet with its headers.
func ringBlockSize(snapLen int) int {
	need := snapLen + 256 // block descriptor, tpacket3_hdr, sockaddr_ll, alignment
	b := os.Getpagesize()
	for b < need || b < 64<<10 {
		b <<= 1
	}
	return b
}

// openTPacket opens cfg's capture on its own TPACKET_V3 ring.
func openTPacket(cfg Config) (*tpacketSource, error) {
	if cfg.InboundOnly && cfg.OutboundOnly {
		return nil, fmt.Errorf("capture on %s: inbound only or outbound only, not both", cfg.Interface)
	}
	if cfg.Outbound.Filter != "" && (!cfg.InboundOnly || cfg.Outbound.SnapLen <= 0 || cfg.Outbound.SnapLen > cfg.SnapLen) {
		return nil, fmt.Errorf("capture on %s: outbound packets are added to an inbound-only capture, cut at 1..%d bytes", cfg.Interface, cfg.SnapLen)
	}
	ifindex := 0 // "any"
	if cfg.Interface != "any" {
		ifi, err := net.InterfaceByName(cfg.Interface)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", cfg.Interface, err)
		}
		ifindex = ifi.Index
	}
	prog, err := ringFilter(cfg)
	if err != nil {
		return nil, err
	}
	// Protocol 0: the socket takes no packet until bind, after its filter
	// and ring are in place.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: packet socket: %w", cfg.Interface, err)
	}
	s := &tpacketSource{fd: fd, blockSize: ringBlockSize(cfg.SnapLen), dir: bothWays}
	switch {
	case cfg.Outbound.Filter != "":
		// The filter takes each direction's packets (ringFilter).
	case cfg.InboundOnly:
		s.dir = inboundOnly
	case cfg.OutboundOnly:
		s.dir = outboundOnly
	}
	s.blocks = max(cfg.BufferSize/s.blockSize, 2)
	if err := s.setup(cfg, ifindex, prog); err != nil {
		s.release()
		return nil, fmt.Errorf("capture on %s: %w", cfg.Interface, err)
	}
	s.readyFn = func(uintptr) bool { return s.closed.Load() || s.ready() }
	return s, nil
}

func (s *tpacketSource) setup(cfg Config, ifindex int, prog []unix.SockFilter) error {
	if err := unix.SetsockoptInt(s.fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V3); err != nil {
		return fmt.Errorf("TPACKET_V3: %w", err)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.SetsockoptSockFprog(s.fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		return fmt.Errorf("attach filter: %w", err)
	}
	if s.dir == inboundOnly && cfg.Outbound.Filter == "" {
		// The kernel then skips the copy of what the host sends; the
		// filter drops it too on kernels without the option.
		_ = unix.SetsockoptInt(s.fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
	}
	req := unix.TpacketReq3{
		Block_size:     uint32(s.blockSize),
		Block_nr:       uint32(s.blocks),
		Frame_size:     uint32(s.blockSize),
		Frame_nr:       uint32(s.blocks),
		Retire_blk_tov: uint32(max(cfg.Timeout/time.Millisecond, 1)),
	}
	if err := unix.SetsockoptTpacketReq3(s.fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return fmt.Errorf("ring of %d×%d bytes: %w", s.blocks, s.blockSize, err)
	}
	ring, err := unix.Mmap(s.fd, 0, s.blocks*s.blockSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map ring: %w", err)
	}
	s.ring = ring
	if cfg.Promisc && ifindex != 0 {
		mreq := unix.PacketMreq{Ifindex: int32(ifindex), Type: unix.PACKET_MR_PROMISC}
		if err := unix.SetsockoptPacketMreq(s.fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
			return fmt.Errorf("promiscuous mode: %w", err)
		}
	}
	if err := unix.Bind(s.fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	dup, err := unix.FcntlInt(uintptr(s.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("dup capture socket: %w", err)
	}
	s.poll = os.NewFile(uintptr(dup), "tpacket")
	if s.raw, err = s.poll.SyscallConn(); err != nil {
		return fmt.Errorf("capture socket: %w", err)
	}
	if err := s.poll.SetReadDeadline(time.Time{}); err != nil {
		return fmt.Errorf("capture socket not pollable: %w", err)
	}
	return nil
}

// ringFilter compiles cfg.Filter for raw IP, cut at cfg.SnapLen, behind a
// test of the packet's direction when only one is wanted; with
// cfg.Outbound, outgoing packets run its filter instead.
func ringFilter(cfg Config) ([]unix.SockFilter, error) {
	in, err := compileFilter(cfg.Filter, cfg.SnapLen)
	if err != nil {
		return nil, err
	}
	var prog []unix.SockFilter
	switch {
	case cfg.Outbound.Filter != "":
		out, err := compileFilter(cfg.Outbound.Filter, cfg.Outbound.SnapLen)
		if err != nil {
			return nil, err
		}
		// An outgoing packet skips the jump (jt 1) into out's program;
		// the others jump over it to in's. Both end in returns.
		prog = append(prog,
			unix.SockFilter{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: skfAdPktType},
			unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 1, Jf: 0, K: packetOutgoing},
			unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JA, K: uint32(len(out))},
		)
		prog = append(prog, out...)
	case cfg.InboundOnly || cfg.OutboundOnly:
		// An outgoing packet skips the drop (jt 1) when outbound is
		// wanted, lands on it (jt 0) when inbound is.
		jt, jf := uint8(0), uint8(1)
		if cfg.OutboundOnly {
			jt, jf = 1, 0
		}
		prog = append(prog,
			unix.SockFilter{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: skfAdPktType},
			unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: jt, Jf: jf, K: packetOutgoing},
			unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: 0},
		)
	}
	prog = append(prog, in...)
	if len(prog) > maxFilterLen {
		return nil, fmt.Errorf("set filter %q: %d instructions, the kernel takes %d", cfg.Filter, len(prog), maxFilterLen)
	}
	return prog, nil
}

// compileFilter compiles expr for packets that start at their IP header.
func compileFilter(expr string, snapLen int) ([]unix.SockFilter, error) {
	insns, err := pcap.CompileBPFFilter(linkTypeRawAlt, snapLen, expr)
	if err != nil {
		return nil, fmt.Errorf("set filter %q: %w", expr, err)
	}
	prog := make([]unix.SockFilter, len(insns))
	for i, in := range insns {
		prog[i] = unix.SockFilter{Code: in.Code, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	return prog, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// block returns block i of the ring.
func (s *tpacketSource) block(i int) []byte { return s.ring[i*s.blockSize : (i+1)*s.blockSize] }

// status is block i's status word, shared with the kernel.
func (s *tpacketSource) status(i int) *uint32 {
	return (*uint32)(unsafe.Pointer(&s.ring[i*s.blockSize+blkStatus]))
}

// ready reports whether the current block is the reader's.
func (s *tpacketSource) ready() bool {
	return atomic.LoadUint32(s.status(s.cur))&unix.TP_STATUS_USER != 0
}

func (s *tpacketSource) Read() ([]byte, time.Time, error) {
	s.mu.Lock()
	if s.closed.Load() {
		s.busy = false
		s.releaseLocked()
		s.mu.Unlock()
		return nil, time.Time{}, io.EOF
	}
	s.busy = true
	s.mu.Unlock()
	for {
		if s.left == 0 {
			if err := s.nextBlock(); err != nil {
				return nil, time.Time{}, s.failed(err)
			}
			continue
		}
		b := s.block(s.cur)
		off := s.next
		if off < 0 || off+pktMinLen > len(b) {
			s.bad.Add(1)
			s.left = 0
			continue
		}
		s.left--
		s.next = off + int(host32(b[off+pktNextOffset:]))
		net, snap := int(host16(b[off+pktNet:])), int(host32(b[off+pktSnapLen:]))
		if off+net+snap > len(b) {
			s.bad.Add(1)
			s.left = 0
			continue
		}
		switch pt := b[off+sllPktType]; {
		case pt == packetOtherHost:
			s.other.Add(1)
			continue
		case s.dir == inboundOnly && pt == packetOutgoing, s.dir == outboundOnly && pt != packetOutgoing:
			continue // the filter's test dropped these already
		}
		data := b[off+net : off+net+snap : off+net+snap]
		proto := be16(b[off+sllProtocol:])
		if snap == 0 || !(proto == etherTypeIPv4 && data[0]>>4 == 4 || proto == etherTypeIPv6 && data[0]>>4 == 6) {
			s.nonIP.Add(1)
			continue
		}
		s.read.Add(1)
		ts := time.Unix(int64(host32(b[off+pktSec:])), int64(host32(b[off+pktNsec:])))
		return data, ts, nil
	}
}

// nextBlock hands the block read back to the kernel and waits, up to
// ringWait, for the next one.
func (s *tpacketSource) nextBlock() error {
	if s.held {
		atomic.StoreUint32(s.status(s.cur), unix.TP_STATUS_KERNEL)
		s.held = false
		s.cur = (s.cur + 1) % s.blocks
	}
	if !s.ready() {
		if err := s.poll.SetReadDeadline(time.Now().Add(ringWait)); err != nil {
			return errClosed
		}
		if s.closed.Load() { // Close's wake may have come before that deadline
			return errClosed
		}
		if err := s.raw.Read(s.readyFn); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && !s.closed.Load() {
				return ErrTimeout
			}
			return errClosed
		}
		if s.closed.Load() {
			return errClosed
		}
	}
	b := s.block(s.cur)
	s.held, s.left, s.next = true, int(host32(b[blkNumPkts:])), int(host32(b[blkFirstPkt:]))
	return nil
}

// failed ends a Read that got err, as pcapSource.failed does.
func (s *tpacketSource) failed(err error) error {
	s.mu.Lock()
	s.busy = false
	closed := s.closed.Load()
	if closed {
		s.releaseLocked()
	}
	s.mu.Unlock()
	if closed || errors.Is(err, errClosed) {
		return io.EOF
	}
	return err
}

func (s *tpacketSource) Stats() Stats {
	st := Stats{Read: s.read.Load(), NonIP: s.nonIP.Load() + s.bad.Load(), OtherHost: s.other.Load()}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.released {
		// The kernel's counters reset on each read: summed here.
		if ks, err := unix.GetsockoptTpacketStatsV3(s.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
			s.kernRecv += uint64(ks.Packets)
			s.kernDrp += uint64(ks.Drops)
		}
	}
	st.KernelRecv, st.KernelDropped = s.kernRecv, s.kernDrp
	return st
}

// Close stops the source: a waiting Read returns io.EOF at once. The
// ring is released now, or by the reader once it is no longer busy.
func (s *tpacketSource) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	_ = s.poll.SetReadDeadline(time.Unix(1, 0))
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.busy {
		s.releaseLocked()
	}
	return nil
}

func (s *tpacketSource) releaseLocked() {
	if s.released {
		return
	}
	s.released = true
	s.release()
}

// release unmaps the ring and closes the sockets; also what a failed
// open undoes.
func (s *tpacketSource) release() {
	if s.ring != nil {
		_ = unix.Munmap(s.ring)
		s.ring = nil
	}
	if s.poll != nil {
		s.poll.Close()
	}
	unix.Close(s.fd)
}

// The ring's headers are in the host's byte order; sockaddr_ll's protocol
// in the network's.
func host16(b []byte) uint16 { return binary.NativeEndian.Uint16(b) }
func host32(b []byte) uint32 { return binary.NativeEndian.Uint32(b) }
func be16(b []byte) uint16   { return binary.BigEndian.Uint16(b) }
