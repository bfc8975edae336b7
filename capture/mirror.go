package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"
)

// A mirror source reads a traffic-mirroring session: a switch or a cloud
// (AWS VPC Traffic Mirroring, GCP Packet Mirroring, AWS Gateway Load
// Balancer) sends copies of prod's frames, both directions, wrapped in
// VXLAN or GENEVE over UDP to the host the copy daemon runs on; nothing
// of tcpshadow runs on prod.
//
// It reads with a plain UDP socket, not libpcap: the kernel checks the
// UDP checksum, reassembles outer IP fragments (a 1500-byte frame wrapped
// for a 1500-byte path is fragmented) and delivers only the session's
// port, and the socket needs no privilege and no promiscuous interface.
// The host must not have a VXLAN or GENEVE device bound to that port,
// which would take the datagrams first.
//
// Mirrors reorder and truncate. Truncated frames (the IP header claims
// more bytes than arrived: AWS cuts frames to the target's MTU) are
// counted and handed on cut: the engine never copies a client segment
// whose payload is short (events{ignored_truncated}), and still learns
// prod's sequence numbers from a cut one of prod's. Reordering is the
// engine's to absorb: out-of-order client data waits in its session's
// queue up to GapTimeout, a packet of prod's that beats its session is
// remembered a second. The source only counts segments that arrive below
// the highest sequence already seen in their flow (OutOfOrder: reordered
// by the mirror, or retransmitted), in a fixed table of flows.

// MirrorProto is a mirror session's encapsulation.
type MirrorProto string

// The encapsulations understood.
const (
	MirrorVXLAN  MirrorProto = "vxlan"
	MirrorGeneve MirrorProto = "geneve"
)

// AnyVNI accepts every VNI.
const AnyVNI = -1

// MirrorConfig configures a mirror source.
type MirrorConfig struct {
	Proto MirrorProto
	Addr  netip.AddrPort // where the datagrams arrive; unspecified address: all
	// VNI keeps only frames whose innermost tunnel header carries it;
	// AnyVNI keeps all.
	VNI int
	// BufferSize is the socket's receive buffer in bytes (SO_RCVBUFFORCE,
	// else SO_RCVBUF up to rmem_max).
	BufferSize int
}

// ParseMirrorURL parses vxlan://ADDR[:PORT][?vni=N] or
// geneve://ADDR[:PORT][?vni=N]; the port defaults to the IANA one.
func ParseMirrorURL(s string) (MirrorConfig, error) {
	u, err := url.Parse(s)
	if err != nil {
		return MirrorConfig{}, fmt.Errorf("parse mirror address: %w", err)
	}
	c := MirrorConfig{Proto: MirrorProto(u.Scheme), VNI: AnyVNI}
	var port uint16
	switch c.Proto {
	case MirrorVXLAN:
		port = DefaultVXLANPort
	case MirrorGeneve:
		port = DefaultGenevePort
	default:
		return MirrorConfig{}, fmt.Errorf("mirror %q: want vxlan://ADDR[:PORT] or geneve://ADDR[:PORT]", s)
	}
	if u.Path != "" || u.User != nil || u.Fragment != "" {
		return MirrorConfig{}, fmt.Errorf("mirror %q: want only an address, a port and ?vni=N", s)
	}
	host := u.Hostname()
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return MirrorConfig{}, fmt.Errorf("mirror %q: want an IP address to listen on: %w", s, err)
	}
	if p := u.Port(); p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return MirrorConfig{}, fmt.Errorf("mirror %q: port %q: want 1..65535", s, p)
		}
		port = uint16(n)
	}
	c.Addr = netip.AddrPortFrom(addr.Unmap(), port)
	for k, vs := range u.Query() {
		if k != "vni" || len(vs) != 1 {
			return MirrorConfig{}, fmt.Errorf("mirror %q: the only parameter is one vni=N", s)
		}
		n, err := strconv.ParseUint(vs[0], 10, 32)
		if err != nil || n >= 1<<24 {
			return MirrorConfig{}, fmt.Errorf("mirror %q: vni %q: want 0..16777215", s, vs[0])
		}
		c.VNI = int(n)
	}
	return c, nil
}

// String returns the URL form ParseMirrorURL reads.
func (c MirrorConfig) String() string {
	s := string(c.Proto) + "://" + c.Addr.String()
	if c.VNI != AnyVNI {
		s += "?vni=" + strconv.Itoa(c.VNI)
	}
	return s
}

// MirrorStats counts what a mirror source saw; every datagram lands in
// exactly one of Frames, BadTunnel, OtherVNI, NonIP.
type MirrorStats struct {
	Datagrams  uint64 // UDP datagrams read
	Frames     uint64 // inner IP packets returned by Read
	BadTunnel  uint64 // malformed tunnel header (short, wrong flags or version, unknown protocol)
	OtherVNI   uint64 // a VNI other than the one asked for
	NonIP      uint64 // the inner frame is not IP (ARP, unknown EtherType, runt, a total length below its header)
	Nested     uint64 // frames that were VXLAN inside the outer tunnel
	Truncated  uint64 // frames cut short of their IP total length
	OutOfOrder uint64 // TCP segments below the highest sequence seen in their flow
	Oversize   uint64 // datagrams larger than the read buffer (read cut, counted Truncated too)
}

// MirrorStatser is a Source with mirror counters.
type MirrorStatser interface {
	MirrorStats() MirrorStats
}

// mirrorBufSize holds any UDP datagram.
const mirrorBufSize = 65536

// mirrorWait bounds one wait: Read returns ErrTimeout after it, as the
// pcap source does.
const mirrorWait = 250 * time.Millisecond

// orderSlots is the number of flows whose highest sequence is tracked.
const orderSlots = 4096

type mirrorSource struct {
	cfg    MirrorConfig
	conn   *net.UDPConn
	buf    []byte
	closed atomic.Bool
	order  [orderSlots]orderSlot // the reader's alone
	stats  struct {
		datagrams, frames, badTunnel, otherVNI, nonIP, nested, truncated, outOfOrder, oversize atomic.Uint64
	}
}

// orderSlot holds one flow's highest sequence end seen; key 0 is empty.
type orderSlot struct {
	key uint64
	end uint32
}

// OpenMirror opens a mirror source listening on cfg.Addr.
func OpenMirror(cfg MirrorConfig) (Source, error) {
	if cfg.Proto != MirrorVXLAN && cfg.Proto != MirrorGeneve {
		return nil, fmt.Errorf("mirror protocol %q: want vxlan or geneve", cfg.Proto)
	}
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(cfg.Addr))
	if err != nil {
		return nil, fmt.Errorf("listen for %s mirror on %s: %w", cfg.Proto, cfg.Addr, err)
	}
	if cfg.BufferSize > 0 {
		setRcvBuf(conn, cfg.BufferSize)
	}
	return newMirrorSource(cfg, conn), nil
}

func newMirrorSource(cfg MirrorConfig, conn *net.UDPConn) *mirrorSource {
	return &mirrorSource{cfg: cfg, conn: conn, buf: make([]byte, mirrorBufSize+1)}
}

func (s *mirrorSource) Read() ([]byte, time.Time, error) {
	for {
		if s.closed.Load() {
			return nil, time.Time{}, io.EOF
		}
		if err := s.conn.SetReadDeadline(time.Now().Add(mirrorWait)); err != nil {
			return nil, time.Time{}, io.EOF
		}
		n, err := s.conn.Read(s.buf)
		if err != nil {
			switch {
			case s.closed.Load(), errors.Is(err, net.ErrClosed):
				return nil, time.Time{}, io.EOF
			case errors.Is(err, os.ErrDeadlineExceeded):
				return nil, time.Time{}, ErrTimeout
			}
			// ICMP errors surfacing on the socket and the like: the next
			// datagram is unaffected.
			continue
		}
		if pkt, ok := s.handle(s.buf[:n]); ok {
			return pkt, time.Now(), nil
		}
	}
}

// handle takes one datagram's payload and returns the IP packet inside,
// counting what it is.
func (s *mirrorSource) handle(d []byte) ([]byte, bool) {
	st := &s.stats
	st.datagrams.Add(1)
	cut := false
	if len(d) > mirrorBufSize {
		st.oversize.Add(1)
		d, cut = d[:mirrorBufSize], true
	}
	ip, vni, nested, r := decapsulate(s.cfg.Proto, d)
	switch r {
	case decapBad:
		st.badTunnel.Add(1)
		return nil, false
	}
	if s.cfg.VNI != AnyVNI && uint32(s.cfg.VNI) != vni {
		st.otherVNI.Add(1) // another session's, whatever it carries
		return nil, false
	}
	if r == decapEthernet {
		off, ok := linkHeaderLen(linkEthernet, ip)
		if !ok || off >= len(ip) {
			st.nonIP.Add(1)
			return nil, false
		}
		ip = ip[off:]
	}
	total, ok := ipTotalLen(ip)
	if !ok {
		st.nonIP.Add(1)
		return nil, false
	}
	if nested {
		st.nested.Add(1)
	}
	switch {
	case total > len(ip) || cut:
		st.truncated.Add(1)
	case total < len(ip):
		ip = ip[:total] // Ethernet padding
	}
	s.trackOrder(ip)
	st.frames.Add(1)
	return ip, true
}

// linkEthernet is the link type of every inner frame.
const linkEthernet = layers.LinkTypeEthernet

// decapsulate strips the outer tunnel of proto and, once, a VXLAN inside
// it; ip is an IP packet when r is decapIP, an Ethernet frame when
// decapEthernet. vni is the innermost tunnel's.
func decapsulate(proto MirrorProto, d []byte) (inner []byte, vni uint32, nested bool, r decapResult) {
	if proto == MirrorGeneve {
		inner, vni, r = geneveDecap(d)
	} else {
		inner, vni, r = vxlanDecap(d)
	}
	if r == decapBad {
		return nil, 0, false, r
	}
	ip := inner
	if r == decapEthernet {
		off, ok := linkHeaderLen(linkEthernet, inner)
		if !ok || off >= len(inner) {
			return inner, vni, false, r // not IP: the caller counts it
		}
		ip = inner[off:]
	}
	vx, ok := innerVXLAN(ip)
	if !ok {
		return inner, vni, false, r
	}
	inner, vni, r = vxlanDecap(vx)
	return inner, vni, true, r
}

// trackOrder counts a TCP segment that starts below the highest sequence
// end already seen in its direction of its flow.
func (s *mirrorSource) trackOrder(ip []byte) {
	var key uint64
	var l4 []byte
	var payload int
	switch {
	case ip[0]>>4 == 4:
		hl := int(ip[0]&0x0f) * 4
		if ip[9] != 6 || hl < 20 || len(ip) < hl+20 {
			return
		}
		key = uint64(binary.BigEndian.Uint32(ip[12:]))<<32 | uint64(binary.BigEndian.Uint32(ip[16:]))
		l4 = ip[hl:]
		payload = int(binary.BigEndian.Uint16(ip[2:])) - hl
	case ip[6] == 6 && len(ip) >= 60:
		key = binary.BigEndian.Uint64(ip[8:]) ^ binary.BigEndian.Uint64(ip[16:]) ^
			binary.BigEndian.Uint64(ip[24:])*31 ^ binary.BigEndian.Uint64(ip[32:])*17
		l4 = ip[40:]
		payload = int(binary.BigEndian.Uint16(ip[4:]))
	default:
		return
	}
	key = key*0x9e3779b97f4a7c15 ^ uint64(binary.BigEndian.Uint32(l4[0:]))
	key |= 1 // never the empty key
	doff := int(l4[12]>>4) * 4
	flags := l4[13]
	seq := binary.BigEndian.Uint32(l4[4:])
	segLen := uint32(max(payload-doff, 0))
	if flags&0x03 != 0 { // SYN or FIN take a sequence number
		segLen++
	}
	if segLen == 0 {
		return // pure ACKs carry no order worth checking
	}
	slot := &s.order[(key>>20)%orderSlots]
	end := seq + segLen
	if slot.key != key || flags&0x06 != 0 { // a new flow, a SYN or an RST
		slot.key, slot.end = key, end
		return
	}
	if int32(seq-slot.end) < 0 {
		s.stats.outOfOrder.Add(1)
	}
	if int32(end-slot.end) > 0 {
		slot.end = end
	}
}

func (s *mirrorSource) Stats() Stats {
	return Stats{Read: s.stats.frames.Load(), NonIP: s.stats.nonIP.Load(), KernelRecv: s.stats.datagrams.Load()}
}

func (s *mirrorSource) MirrorStats() MirrorStats {
	st := &s.stats
	return MirrorStats{
		Datagrams: st.datagrams.Load(), Frames: st.frames.Load(), BadTunnel: st.badTunnel.Load(),
		OtherVNI: st.otherVNI.Load(), NonIP: st.nonIP.Load(), Nested: st.nested.Load(),
		Truncated: st.truncated.Load(), OutOfOrder: st.outOfOrder.Load(), Oversize: st.oversize.Load(),
	}
}

// Close stops the source; a waiting Read returns io.EOF at once.
func (s *mirrorSource) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	return s.conn.Close()
}

// setRcvBuf asks for a receive buffer of n bytes: past rmem_max with
// CAP_NET_ADMIN, else as much as rmem_max allows.
func setRcvBuf(conn *net.UDPConn, n int) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, n)
		}
	})
}
