package capture

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/google/gopacket/pcap"
	"golang.org/x/sys/unix"
)

// ringSock is one AF_PACKET socket and its mapped TPACKET_V3 ring. The
// socket is SOCK_DGRAM: every frame starts at its network header whatever
// the link, so filters are compiled for raw IP and the direction is read
// from the packet type the kernel records.
type ringSock struct {
	fd        int
	ring      []byte // the mapped blocks
	blockSize int
	blocks    int
	poll      *os.File // a dup of fd, registered with the poller
	raw       syscall.RawConn
}

// Offsets in the ring, from linux/if_packet.h. A block starts with
// struct tpacket_block_desc; each packet with struct tpacket3_hdr,
// followed (at tpacket3HdrLen) by a struct sockaddr_ll.
const (
	blkStatus      = 8  // hdr.bh1.block_status
	blkNumPkts     = 12 // hdr.bh1.num_pkts
	blkFirstPkt    = 16 // hdr.bh1.offset_to_first_pkt
	blkLen         = 20 // hdr.bh1.blk_len: bytes of the block in use
	pktNextOffset  = 0  // tp_next_offset
	pktSec         = 4  // tp_sec
	pktNsec        = 8  // tp_nsec
	pktSnapLen     = 12 // tp_snaplen
	pktLen         = 16 // tp_len
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

// minBlocks is the fewest blocks a ring is cut into: at a low rate each
// block carries what arrived in one Timeout, so the block count, not the
// bytes, is how long a stalled reader can be away (64 ms at 1 ms). A
// copier on one P was seen away for more than 16 ms under pgbench.
const minBlocks = 64

// ringBlockSize returns the block size for a ring of size bytes and
// snapLen: a power of two of pages that holds the largest packet with its
// headers, halved (not below 128 KiB, which holds a 64 KiB GRO packet)
// while the ring would have fewer than minBlocks. A packet too long for a
// small ring's block is cut by the kernel; the source then grows the ring
// (tpacketgrow.go).
func ringBlockSize(size, snapLen int) int {
	need := snapLen + 256 // block descriptor, tpacket3_hdr, sockaddr_ll, alignment
	b := os.Getpagesize()
	for b < need || b < 64<<10 {
		b <<= 1
	}
	for b > 128<<10 && size/b < minBlocks {
		b >>= 1
	}
	return b
}

// openRing opens a ring of about size bytes that keeps what prog
// accepts, not yet bound: it takes nothing until bind.
func openRing(cfg Config, ifindex int, prog []unix.SockFilter, size int) (*ringSock, error) {
	// Protocol 0: the socket takes no packet until bind, after its filter
	// and ring are in place.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	r := &ringSock{fd: fd, blockSize: ringBlockSize(size, cfg.SnapLen)}
	r.blocks = max(size/r.blockSize, 2)
	if err := r.setup(cfg, ifindex, prog); err != nil {
		r.release()
		return nil, err
	}
	return r, nil
}

func (r *ringSock) setup(cfg Config, ifindex int, prog []unix.SockFilter) error {
	if err := unix.SetsockoptInt(r.fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V3); err != nil {
		return fmt.Errorf("TPACKET_V3: %w", err)
	}
	if err := attachFilter(r.fd, prog); err != nil {
		return err
	}
	if cfg.InboundOnly && cfg.Outbound.Filter == "" {
		// The kernel then skips the copy of what the host sends; the
		// filter drops it too on kernels without the option.
		_ = unix.SetsockoptInt(r.fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
	}
	req := unix.TpacketReq3{
		Block_size:     uint32(r.blockSize),
		Block_nr:       uint32(r.blocks),
		Frame_size:     uint32(r.blockSize),
		Frame_nr:       uint32(r.blocks),
		Retire_blk_tov: uint32(retireTimeout(cfg) / time.Millisecond),
	}
	if err := unix.SetsockoptTpacketReq3(r.fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return fmt.Errorf("ring of %d×%d bytes: %w", r.blocks, r.blockSize, err)
	}
	ring, err := unix.Mmap(r.fd, 0, r.blocks*r.blockSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map ring: %w", err)
	}
	r.ring = ring
	if cfg.Promisc && ifindex != 0 {
		mreq := unix.PacketMreq{Ifindex: int32(ifindex), Type: unix.PACKET_MR_PROMISC}
		if err := unix.SetsockoptPacketMreq(r.fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
			return fmt.Errorf("promiscuous mode: %w", err)
		}
	}
	dup, err := unix.FcntlInt(uintptr(r.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("dup capture socket: %w", err)
	}
	r.poll = os.NewFile(uintptr(dup), "tpacket")
	if r.raw, err = r.poll.SyscallConn(); err != nil {
		return fmt.Errorf("capture socket: %w", err)
	}
	if err := r.poll.SetReadDeadline(time.Time{}); err != nil {
		return fmt.Errorf("capture socket not pollable: %w", err)
	}
	return nil
}

// bind starts the ring taking packets from ifindex (0: every interface).
func (r *ringSock) bind(ifindex int) error {
	if err := unix.Bind(r.fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	return nil
}

// retireTimeout is cfg.Timeout in the kernel's whole milliseconds.
func retireTimeout(cfg Config) time.Duration {
	return max(cfg.Timeout.Truncate(time.Millisecond), time.Millisecond)
}

func attachFilter(fd int, prog []unix.SockFilter) error {
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		return fmt.Errorf("attach filter: %w", err)
	}
	return nil
}

// dropAll is a filter that keeps nothing.
var dropAll = []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}

// size is the ring's size in bytes.
func (r *ringSock) size() int { return r.blocks * r.blockSize }

// block returns block i of the ring.
func (r *ringSock) block(i int) []byte { return r.ring[i*r.blockSize : (i+1)*r.blockSize] }

// status is block i's status word, shared with the kernel.
func (r *ringSock) status(i int) *uint32 {
	return (*uint32)(unsafe.Pointer(&r.ring[i*r.blockSize+blkStatus]))
}

// ready reports whether block i is the reader's.
func (r *ringSock) ready(i int) bool {
	return atomic.LoadUint32(r.status(i))&unix.TP_STATUS_USER != 0
}

// kernelStats reads the kernel's counters, which reset on each read. The
// call is raw (it never sleeps): announced to the scheduler, the reader's
// look at them every sizing window would wake sysmon (tpacket.go).
func (r *ringSock) kernelStats() (recv, dropped uint64) {
	var ks unix.TpacketStatsV3
	n := uint32(unsafe.Sizeof(ks))
	_, _, errno := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(r.fd), unix.SOL_PACKET, unix.PACKET_STATISTICS,
		uintptr(unsafe.Pointer(&ks)), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return 0, 0
	}
	return uint64(ks.Packets), uint64(ks.Drops)
}

// release unmaps the ring and closes the sockets; also what a failed
// open undoes.
func (r *ringSock) release() {
	if r.ring != nil {
		_ = unix.Munmap(r.ring)
		r.ring = nil
	}
	if r.poll != nil {
		r.poll.Close()
	}
	unix.Close(r.fd)
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

// The ring's headers are in the host's byte order; sockaddr_ll's protocol
// in the network's.
func host16(b []byte) uint16 { return binary.NativeEndian.Uint16(b) }
func host32(b []byte) uint32 { return binary.NativeEndian.Uint32(b) }
func be16(b []byte) uint16   { return binary.BigEndian.Uint16(b) }
