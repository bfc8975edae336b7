// Package capture reads packets from a live interface (its own
// TPACKET_V3 ring, tpacket.go, with filters compiled by libpcap), a pcap
// file (libpcap), or a traffic-mirroring session (VXLAN or GENEVE over
// UDP, mirror.go), and hands out their IP bytes without allocating.
//
// It owns the packet socket and its ring, its settings (snap length, ring
// size, block timeout, direction, BPF filter), the pcap file handle, the
// mirror session's socket and tunnel headers, and the link-layer framing.
// It does not interpret TCP beyond counting a mirror's out-of-order
// segments: callers decode the IP packets they get (package rewrite) and
// must copy them before the next Read, because reads are zero-copy views
// into the ring, libpcap's buffer or the mirror's buffer.
package capture

import (
	"errors"
	"fmt"
	"io"
	"math"
	"sync/atomic"
	"time"

	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcap"
)

// ErrTimeout is returned by Read when no packet arrived within the read
// timeout; callers use it to do periodic work and read again.
var ErrTimeout = errors.New("capture read timeout")

// Source is a stream of captured IP packets.
type Source interface {
	// Read returns the next packet, starting at its IP header, and its
	// capture time. The bytes are valid until the next call to Read.
	// It returns ErrTimeout when idle and io.EOF at the end of a file or
	// after Close.
	Read() ([]byte, time.Time, error)
	// Stats returns packet counters; Kernel* are zero for files.
	Stats() Stats
	// Close stops the source; a waiting Read returns io.EOF promptly.
	Close() error
}

// Stats counts what a Source saw. Frames that are not IPv4 or IPv6 (ARP,
// unknown link types, runts) are counted in NonIP and skipped.
type Stats struct {
	Read          uint64 // IP packets returned by Read
	NonIP         uint64
	OtherHost     uint64 // frames for another host (promiscuous "any" capture): not prod's
	KernelRecv    uint64 // from pcap_stats: packets that passed the filter
	KernelDropped uint64 // dropped for lack of buffer space
	IfDropped     uint64 // dropped by the interface or driver
	// A live capture's ring (tpacketgrow.go): its size now, the times it
	// grew or could not, the packets the kernel cut to fit a small ring's
	// blocks, and those read twice across a switch and skipped.
	RingBytes      uint64
	RingGrown      uint64
	RingGrowFailed uint64
	RingCut        uint64
	RingDuplicates uint64
}

// Config configures a live capture.
type Config struct {
	Interface string
	SnapLen   int // default MaxSnapLen: GRO can merge up to 64 KiB
	// BufferSize is the most the kernel ring grows to, in bytes; default
	// 32 MiB. It starts at InitialBufferSize and grows to hold Hold
	// (default 250 ms) of the rate it is read at, or when the kernel
	// dropped or cut packets; BufferSize or more makes it fixed. The
	// default start, StartFor(SnapLen), holds a burst of the largest
	// packets; a smaller start saves memory on an idle host, but a burst
	// at line rate (a 20 MiB upload over a veth) overflows it before it
	// can grow.
	BufferSize        int
	InitialBufferSize int
	Hold              time.Duration
	// Timeout bounds how long a packet may wait in the kernel's ring
	// before a read returns it: the kernel packs packets into blocks
	// (TPACKET_V3) and hands one over when it is full or this old, whole
	// ms, default 1ms. An idle Read waits in Go's poller,
	// holding no thread, and returns ErrTimeout after a quarter second.
	Timeout time.Duration
	Filter  string // BPF expression; empty captures everything
	Promisc bool
	// InboundOnly asks the kernel for received packets only, so the
	// copier never sees what it sends itself, whatever the filter.
	InboundOnly bool
	// OutboundOnly asks for the packets the host sends only: the copier
	// reads prod's side of each conversation so.
	OutboundOnly bool
	// Outbound, with InboundOnly and a Filter of its own, adds what the
	// host sends that matches it, cut at its SnapLen, to the same ring:
	// both sides of a conversation then come in the order the kernel saw
	// them, and one wake-up of the reader serves both.
	Outbound Outbound
}

// Outbound selects the packets the host sends that a capture also takes.
type Outbound struct {
	Filter  string // BPF expression; empty: none
	SnapLen int    // at most Config.SnapLen
}

// MaxSnapLen is the largest snap length libpcap takes.
const MaxSnapLen = 262144

// DefaultConfig returns the defaults, the only place they are written:
// OpenLive takes zero fields from it. It names no interface.
func DefaultConfig() Config {
	return Config{SnapLen: MaxSnapLen, BufferSize: 32 << 20, Hold: 250 * time.Millisecond, Timeout: time.Millisecond}
}

func (c *Config) setDefaults() {
	d := DefaultConfig()
	if c.SnapLen == 0 {
		c.SnapLen = d.SnapLen
	}
	if c.BufferSize == 0 {
		c.BufferSize = d.BufferSize
	}
	if c.InitialBufferSize == 0 {
		c.InitialBufferSize = StartFor(c.SnapLen)
	}
	if c.Hold == 0 {
		c.Hold = d.Hold
	}
	if c.Timeout == 0 {
		c.Timeout = d.Timeout
	}
}

// StartFor is a ring's default start for snapLen: minBlocks blocks, each
// holding the largest packet (32 MiB at MaxSnapLen, 4 MiB at 512 bytes).
func StartFor(snapLen int) int { return minBlocks * ringBlockSize(math.MaxInt, snapLen) }

// OpenLive opens a live capture on cfg.Interface ("any" for all), read
// from a TPACKET_V3 ring in Go (tpacket.go).
func OpenLive(cfg Config) (Source, error) {
	cfg.setDefaults()
	return openTPacket(cfg)
}

// OpenFile opens a pcap or pcapng file, applying filter if not empty.
func OpenFile(path, filter string) (Source, error) {
	h, err := pcap.OpenOffline(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if filter != "" {
		if err := h.SetBPFFilter(filter); err != nil {
			h.Close()
			return nil, fmt.Errorf("set filter %q: %w", filter, err)
		}
	}
	lt := h.LinkType()
	if _, ok := linkHeaderLen(lt, nil); !ok {
		h.Close()
		return nil, fmt.Errorf("unsupported link type %v", lt)
	}
	s := &pcapSource{h: h, link: lt}
	s.free = h.Close
	return s, nil
}

// pcapSource reads a capture file through libpcap.
type pcapSource struct {
	holder
	h     *pcap.Handle
	link  layers.LinkType
	read  atomic.Uint64
	nonIP atomic.Uint64
	other atomic.Uint64
}

func (s *pcapSource) Read() ([]byte, time.Time, error) {
	if !s.begin() {
		return nil, time.Time{}, io.EOF
	}
	for {
		data, ts, err := s.readFrame()
		if err != nil {
			return nil, time.Time{}, s.failed(err)
		}
		if otherHost(s.link, data) {
			s.other.Add(1)
			continue
		}
		off, ok := linkHeaderLen(s.link, data)
		if !ok || off >= len(data) {
			s.nonIP.Add(1)
			continue
		}
		s.read.Add(1)
		return data[off:], ts, nil
	}
}

// failed ends a Read that got err.
func (s *pcapSource) failed(err error) error {
	switch {
	case s.fail(), errors.Is(err, io.EOF), errors.Is(err, errClosed):
		return io.EOF
	case errors.Is(err, ErrTimeout):
		return ErrTimeout
	}
	return err
}

// readFrame returns the next link-layer frame.
func (s *pcapSource) readFrame() ([]byte, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return nil, time.Time{}, errClosed
	}
	data, ci, err := s.h.ZeroCopyReadPacketData()
	switch {
	case err == nil:
		return data, ci.Timestamp, nil
	case errors.Is(err, pcap.NextErrorTimeoutExpired):
		return nil, time.Time{}, ErrTimeout
	case errors.Is(err, io.EOF):
		return nil, time.Time{}, io.EOF
	}
	return nil, time.Time{}, fmt.Errorf("read packet: %w", err)
}

func (s *pcapSource) Stats() Stats {
	return Stats{Read: s.read.Load(), NonIP: s.nonIP.Load(), OtherHost: s.other.Load()}
}

// Close stops the source: a waiting Read returns io.EOF at once. The
// handle is released now, or by the reader once it is no longer busy.
func (s *pcapSource) Close() error {
	s.close(nil)
	return nil
}

// Link types libpcap reports that gopacket does not name. (gopacket's
// LinkType is 8 bits wide, so SLL2, 276, cannot be told apart; libpcap only
// uses it on request, and "any" defaults to SLL.)
const (
	linkTypeIPv6   layers.LinkType = 229
	linkTypeRawAlt layers.LinkType = 12 // DLT_RAW: live raw-IP devices (101 is its file form)
)

const (
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd
	etherTypeVLAN = 0x8100
	etherTypeQinQ = 0x88a8
)

// linkHeaderLen returns the offset of the IP header in frame for link type
// lt, and whether the frame carries IPv4 or IPv6. With a nil frame it only
// reports whether lt is supported.
func linkHeaderLen(lt layers.LinkType, frame []byte) (int, bool) {
	switch lt {
	case layers.LinkTypeEthernet:
		if frame == nil {
			return 0, true
		}
		off := 12
		for i := 0; i < 3; i++ {
			if len(frame) < off+2 {
				return 0, false
			}
			switch et := uint16(frame[off])<<8 | uint16(frame[off+1]); et {
			case etherTypeIPv4, etherTypeIPv6:
				return off + 2, true
			case etherTypeVLAN, etherTypeQinQ:
				off += 4
			default:
				return 0, false
			}
		}
		return 0, false
	case layers.LinkTypeLinuxSLL:
		return etherAt(frame, 14, 16)
	case layers.LinkTypeRaw, linkTypeRawAlt, layers.LinkTypeIPv4, linkTypeIPv6:
		if frame == nil {
			return 0, true
		}
		if len(frame) > 0 && (frame[0]>>4 == 4 || frame[0]>>4 == 6) {
			return 0, true
		}
		return 0, false
	case layers.LinkTypeNull, layers.LinkTypeLoop:
		// A 4-byte address family in host or network order; the IP
		// version nibble is the reliable tell.
		if frame == nil {
			return 0, true
		}
		if len(frame) > 4 && (frame[4]>>4 == 4 || frame[4]>>4 == 6) {
			return 4, true
		}
		return 0, false
	}
	return 0, false
}

// sllPacketTypeOtherHost is the Linux cooked header's packet type of a
// frame addressed to another host's link address (PACKET_OTHERHOST).
const sllPacketTypeOtherHost = 3

// otherHost reports whether a frame was addressed to another host: on
// "any" with a promiscuous interface, or a bridge port, traffic passing
// by is captured too, and it is not prod's to copy.
func otherHost(lt layers.LinkType, frame []byte) bool {
	return lt == layers.LinkTypeLinuxSLL && len(frame) >= 2 &&
		uint16(frame[0])<<8|uint16(frame[1]) == sllPacketTypeOtherHost
}

// etherAt reads a protocol type at off and returns hdr if it is IP.
func etherAt(frame []byte, off, hdr int) (int, bool) {
	if frame == nil {
		return 0, true
	}
	if len(frame) < hdr {
		return 0, false
	}
	switch uint16(frame[off])<<8 | uint16(frame[off+1]) {
	case etherTypeIPv4, etherTypeIPv6:
		return hdr, true
	}
	return 0, false
}
