package rewrite

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// Decoding errors; callers count them by reason.
var (
	ErrTruncated = errors.New("truncated packet")
	ErrVersion   = errors.New("not ipv4 or ipv6")
	ErrNotTCP    = errors.New("not tcp")
	ErrFragment  = errors.New("ip fragment")
	ErrHeader    = errors.New("bad header length")
	// ErrTooBig is a packet larger than an IP length field says: a GRO
	// or GSO super-packet past 64 KiB (BIG TCP: IPv4 total length 0,
	// an IPv6 jumbogram). Its length cannot be trusted.
	ErrTooBig = errors.New("packet larger than its ip length (big tcp or jumbogram)")
	// ErrMapped is an IPv6 packet with an IPv4-mapped address: on the
	// wire it is spoofed or misrouted, and it would make a session of
	// mixed families.
	ErrMapped = errors.New("ipv6 packet with an ipv4-mapped address")
)

// Packet is a decoded view of one IPv4 or IPv6 TCP packet held in a
// caller-owned buffer. Decoding allocates nothing. Setters rewrite fields in
// place and keep the IPv4 header checksum and the TCP checksum valid by
// incremental update (RFC 1624), so they are only as correct as the checksum
// the packet came with; RecomputeChecksums sets both from scratch.
type Packet struct {
	b      []byte // IP packet, cut to the IP length field
	ipLen  int    // bytes before the TCP header (IPv6 extension headers included)
	tcpLen int
	segLen int // TCP header + payload per the IP length field
	v6     bool
}

// Decode decodes b, which must hold a whole IPv4 or IPv6 packet carrying a
// TCP segment. Bytes past the IP length (link padding) are ignored.
func (p *Packet) Decode(b []byte) error { return p.decode(b, true) }

// DecodeHeader is Decode for a packet whose payload may be missing, such as
// a reply header relayed by the intercept agent; PayloadLen still reports
// the length the IP header announces.
func (p *Packet) DecodeHeader(b []byte) error { return p.decode(b, false) }

func (p *Packet) decode(b []byte, whole bool) error {
	*p = Packet{}
	if len(b) < 1 {
		return ErrTruncated
	}
	var total int
	switch b[0] >> 4 {
	case 4:
		if len(b) < IPv4MinHeaderLen {
			return ErrTruncated
		}
		ip := IPv4(b)
		hl := ip.HeaderLen()
		total = ip.TotalLen()
		if total == 0 && len(b) > 0xffff {
			return ErrTooBig
		}
		if hl < IPv4MinHeaderLen || total < hl {
			return ErrHeader
		}
		if hl > len(b) {
			return ErrTruncated
		}
		if ip.IsFragment() {
			return ErrFragment
		}
		if ip.Protocol() != ProtoTCP {
			return ErrNotTCP
		}
		p.ipLen = hl
	case 6:
		if len(b) < IPv6HeaderLen {
			return ErrTruncated
		}
		ip := IPv6(b)
		if ip.PayloadLen() == 0 {
			if len(b) > 0xffff {
				return ErrTooBig
			}
			return ErrHeader // a jumbogram's hop-by-hop length is not trusted
		}
		if ip.SrcAddr().Is4In6() || ip.DstAddr().Is4In6() {
			return ErrMapped
		}
		total = IPv6HeaderLen + ip.PayloadLen()
		next, off := ip.NextHeader(), IPv6HeaderLen
		for next != ProtoTCP {
			switch next {
			case protoHopByHop, protoRouting, protoDestOpts:
				if off+8 > total {
					return ErrHeader
				}
				if off+8 > len(b) {
					return ErrTruncated
				}
				next, off = b[off], off+(int(b[off+1])+1)*8
			case protoFragment:
				return ErrFragment
			default:
				return ErrNotTCP
			}
		}
		p.ipLen = off
		p.v6 = true
	default:
		return ErrVersion
	}
	if total < len(b) {
		b = b[:total]
	}
	if whole && total > len(b) {
		return ErrTruncated
	}
	if p.ipLen+TCPMinHeaderLen > total {
		return ErrHeader
	}
	if p.ipLen+TCPMinHeaderLen > len(b) {
		return ErrTruncated
	}
	tl := TCP(b[p.ipLen:]).HeaderLen()
	if tl < TCPMinHeaderLen || p.ipLen+tl > total {
		return ErrHeader
	}
	if p.ipLen+tl > len(b) {
		return ErrTruncated
	}
	p.b, p.tcpLen, p.segLen = b, tl, total-p.ipLen
	return nil
}

// Layout is where a decoded packet's headers lie. It lets a copy of the
// packet's bytes be viewed again without decoding them twice: the capture
// side decodes and copies, the worker views the copy.
type Layout struct {
	segLen uint32
	ipLen  uint16
	tcpLen uint8
	v6     bool
}

// Layout returns the packet's layout.
func (p *Packet) Layout() Layout {
	return Layout{segLen: uint32(p.segLen), ipLen: uint16(p.ipLen), tcpLen: uint8(p.tcpLen), v6: p.v6}
}

// View returns the decoded packet held in b, which must be a copy of the
// Bytes of the packet l came from (same length): nothing is checked again.
func (l Layout) View(b []byte) Packet {
	return Packet{b: b, ipLen: int(l.ipLen), tcpLen: int(l.tcpLen), segLen: int(l.segLen), v6: l.v6}
}

// Bytes returns the packet, starting at the IP header.
func (p *Packet) Bytes() []byte { return p.b }

// IsV6 reports whether the packet is IPv6.
func (p *Packet) IsV6() bool { return p.v6 }

// IPHeaderLen returns the bytes before the TCP header.
func (p *Packet) IPHeaderLen() int { return p.ipLen }

// TCP returns the TCP header (options included) as a view.
func (p *Packet) TCP() TCP { return TCP(p.b[p.ipLen : p.ipLen+p.tcpLen]) }

// Headers returns the IP and TCP headers: what the intercept agent relays.
func (p *Packet) Headers() []byte { return p.b[:p.ipLen+p.tcpLen] }

// Normalize rebuilds the IP header the way a fresh sender would: IPv4
// options and IPv6 extension headers (source routes, hop-by-hop options)
// are removed, moving the TCP segment up, and the TTL or hop limit is set
// to ttl. A captured packet's route and age are prod's, not the copy's.
// The IPv4 header checksum is recomputed; the TCP checksum does not cover
// what changed. It returns the packet's new length: the buffer keeps its
// length, the packet's view shrinks.
func (p *Packet) Normalize(ttl uint8) int {
	min := IPv4MinHeaderLen
	if p.v6 {
		min = IPv6HeaderLen
	}
	if cut := p.ipLen - min; cut > 0 {
		copy(p.b[min:], p.b[p.ipLen:])
		p.b = p.b[:len(p.b)-cut]
		p.ipLen = min
		if p.v6 {
			p.b[IPv6NextHeaderOffset] = ProtoTCP
			IPv6(p.b).SetPayloadLen(p.segLen)
		} else {
			p.b[IPv4VersionIHLOffset] = 0x45
			binary.BigEndian.PutUint16(p.b[IPv4TotalLenOffset:], uint16(min+p.segLen))
		}
	}
	if p.v6 {
		p.b[IPv6HopLimitOffset] = ttl
	} else {
		p.b[IPv4TTLOffset] = ttl
		ip := IPv4(p.b)
		ip.SetChecksum(ip.ComputeChecksum())
	}
	return len(p.b)
}

// TrimPayload drops the payload, keeping the headers, with the IP length
// fixed to match and both checksums recomputed: a TCP Fast Open SYN
// without its data. The whole payload must have been present.
func (p *Packet) TrimPayload() {
	n := p.ipLen + p.tcpLen
	p.b = p.b[:n]
	p.segLen = p.tcpLen
	if p.v6 {
		IPv6(p.b).SetPayloadLen(n - IPv6HeaderLen)
	} else {
		binary.BigEndian.PutUint16(p.b[IPv4TotalLenOffset:], uint16(n))
	}
	p.RecomputeChecksums()
}

// PayloadLen returns the payload length announced by the IP header.
func (p *Packet) PayloadLen() int { return p.segLen - p.tcpLen }

// Payload returns the payload bytes present in the buffer.
func (p *Packet) Payload() []byte { return p.b[p.ipLen+p.tcpLen:] }

// SrcAddr and DstAddr return the IP addresses.
func (p *Packet) SrcAddr() netip.Addr {
	if p.v6 {
		return IPv6(p.b).SrcAddr()
	}
	return IPv4(p.b).SrcAddr()
}

func (p *Packet) DstAddr() netip.Addr {
	if p.v6 {
		return IPv6(p.b).DstAddr()
	}
	return IPv4(p.b).DstAddr()
}

// Tuple returns the packet's flow tuple in its direction of travel.
func (p *Packet) Tuple() Tuple {
	var t Tuple
	if p.v6 {
		copy(t.Src[:], p.b[IPv6SrcAddrOffset:IPv6SrcAddrOffset+16])
		copy(t.Dst[:], p.b[IPv6DstAddrOffset:IPv6DstAddrOffset+16])
	} else {
		t.Src[10], t.Src[11] = 0xff, 0xff // IPv4-mapped
		t.Dst[10], t.Dst[11] = 0xff, 0xff
		copy(t.Src[12:], p.b[IPv4SrcAddrOffset:IPv4SrcAddrOffset+4])
		copy(t.Dst[12:], p.b[IPv4DstAddrOffset:IPv4DstAddrOffset+4])
	}
	tcp := p.TCP()
	t.SrcPort, t.DstPort = tcp.SrcPort(), tcp.DstPort()
	return t
}

// SetSrc rewrites the source address and port. It returns false, changing
// nothing, if addr is not of the packet's family.
func (p *Packet) SetSrc(addr netip.Addr, port uint16) bool {
	if !p.setAddr(addr, p.srcAddrOff()) {
		return false
	}
	p.put16(TCPSrcPortOffset, port)
	return true
}

// Retarget rewrites both endpoints and sets both checksums from scratch in
// one pass: the way to rewrite a captured packet, whose checksum cannot be
// trusted (offloads leave partial checksums on virtual links). The whole
// payload must be present. It returns false, changing nothing, if an
// address is not of the packet's family.
func (p *Packet) Retarget(src, dst netip.AddrPort) bool {
	if !p.sameFamily(src.Addr()) || !p.sameFamily(dst.Addr()) {
		return false
	}
	off, n := p.srcAddrOff(), p.addrLen()
	putAddr(p.b[off:off+n], src.Addr())
	putAddr(p.b[off+n:off+2*n], dst.Addr())
	tcp := p.TCP()
	binary.BigEndian.PutUint16(tcp[TCPSrcPortOffset:], src.Port())
	binary.BigEndian.PutUint16(tcp[TCPDstPortOffset:], dst.Port())
	p.RecomputeChecksums()
	return true
}

func (p *Packet) sameFamily(a netip.Addr) bool {
	if p.v6 {
		return a.Is6() && !a.Is4In6()
	}
	return a.Is4() || a.Is4In6()
}

// putAddr writes a into b, which is 4 or 16 bytes long.
func putAddr(b []byte, a netip.Addr) {
	if len(b) == 4 {
		v4 := a.Unmap().As4()
		copy(b, v4[:])
		return
	}
	v6 := a.As16()
	copy(b, v6[:])
}

func (p *Packet) srcAddrOff() int {
	if p.v6 {
		return IPv6SrcAddrOffset
	}
	return IPv4SrcAddrOffset
}

func (p *Packet) addrLen() int {
	if p.v6 {
		return 16
	}
	return 4
}

func (p *Packet) setAddr(addr netip.Addr, off int) bool {
	var buf [16]byte
	var a []byte
	switch {
	case p.v6 && addr.Is6() && !addr.Is4In6():
		buf = addr.As16()
		a = buf[:16]
	case !p.v6 && (addr.Is4() || addr.Is4In6()):
		v4 := addr.Unmap().As4()
		copy(buf[:], v4[:])
		a = buf[:4]
	default:
		return false
	}
	old := p.b[off : off+len(a)]
	tcp := p.TCP()
	tcp.SetChecksum(UpdateBytes(tcp.Checksum(), old, a))
	if !p.v6 {
		IPv4(p.b).setAddr(off, [4]byte(a))
		return true
	}
	copy(old, a)
	return true
}

// put16 writes a 16-bit TCP header field at an even offset.
func (p *Packet) put16(off int, v uint16) {
	tcp := p.TCP()
	old := binary.BigEndian.Uint16(tcp[off:])
	binary.BigEndian.PutUint16(tcp[off:], v)
	tcp.SetChecksum(Update16(tcp.Checksum(), old, v))
}

func (p *Packet) put32(off int, v uint32) {
	tcp := p.TCP()
	old := binary.BigEndian.Uint32(tcp[off:])
	binary.BigEndian.PutUint32(tcp[off:], v)
	tcp.SetChecksum(Update32(tcp.Checksum(), old, v))
}

// SetAck rewrites the acknowledgement number.
func (p *Packet) SetAck(v uint32) { p.put32(TCPAckNumOffset, v) }

// SetFlags rewrites the flags, keeping the data offset that shares their
// 16-bit word.
func (p *Packet) SetFlags(f uint8) {
	tcp := p.TCP()
	p.put16(TCPDataOffset, uint16(tcp[TCPDataOffset])<<8|uint16(f))
}

// patch overwrites the TCP header bytes at off with v, at any alignment,
// and updates the checksum by the difference of the covering 16-bit words.
func (p *Packet) patch(off int, v []byte) {
	tcp := p.TCP()
	start, end := off&^1, (off+len(v)+1)&^1
	oldSum := Sum(tcp[start:end], 0)
	copy(tcp[off:], v)
	newSum := Sum(tcp[start:end], 0)
	tcp.SetChecksum(^add16(add16(^tcp.Checksum(), ^oldSum), newSum))
}

// SetTimestamps rewrites TSval and TSecr in place. It returns false if the
// packet carries no timestamps option (o must come from ParseOptions on
// this packet).
func (p *Packet) SetTimestamps(o *Options, val, ecr uint32) bool {
	if o.tsOff == 0 {
		return false
	}
	if off := o.tsOff + 2; off%2 == 0 {
		// The usual layout (NOP NOP TS): both values on 16-bit words,
		// updated as such.
		p.put32(off, val)
		p.put32(off+4, ecr)
	} else {
		var v [8]byte
		binary.BigEndian.PutUint32(v[0:], val)
		binary.BigEndian.PutUint32(v[4:], ecr)
		p.patch(off, v[:])
	}
	o.TSVal, o.TSEcr = val, ecr
	return true
}

// ClearOptions overwrites every option of the given kinds with NOPs, which
// keeps the header length and the other options' offsets. It returns the
// number of options cleared.
func (p *Packet) ClearOptions(kinds ...uint8) int {
	tcp := p.TCP()
	var nops [TCPMaxHeaderLen]byte
	for i := range nops {
		nops[i] = OptNOP
	}
	cleared := 0
	for i := TCPMinHeaderLen; i < len(tcp); {
		kind := tcp[i]
		if kind == OptEnd {
			break
		}
		if kind == OptNOP {
			i++
			continue
		}
		if i+1 >= len(tcp) || tcp[i+1] < 2 || i+int(tcp[i+1]) > len(tcp) {
			break
		}
		n := int(tcp[i+1])
		for _, k := range kinds {
			if k == kind {
				p.patch(i, nops[:n])
				cleared++
				break
			}
		}
		i += n
	}
	return cleared
}

// RecomputeChecksums sets the IPv4 header checksum and the TCP checksum
// from scratch. The whole payload must be present. Packets captured from a
// virtual interface often carry a partial checksum (offload), so the copier
// calls this once before relying on incremental updates.
func (p *Packet) RecomputeChecksums() {
	if !p.v6 {
		ip := IPv4(p.b)
		ip.SetChecksum(ip.ComputeChecksum())
	}
	tcp := p.b[p.ipLen:]
	TCP(tcp).SetChecksum(0)
	TCP(tcp).SetChecksum(^Sum(tcp, p.pseudoSum()))
}

// ChecksumValid reports whether the TCP checksum verifies. The whole
// payload must be present.
func (p *Packet) ChecksumValid() bool {
	return Sum(p.b[p.ipLen:], p.pseudoSum()) == 0xffff
}

func (p *Packet) pseudoSum() uint16 {
	off, n := p.srcAddrOff(), p.addrLen()
	return PseudoHeaderSum(ProtoTCP, p.b[off:off+n], p.b[off+n:off+2*n], uint32(len(p.b)-p.ipLen))
}

// Tuple identifies one direction of a TCP flow. It is comparable and holds
// no pointers, so it serves as a map key without burdening the collector.
// IPv4 addresses are stored IPv4-mapped.
type Tuple struct {
	Src, Dst         [16]byte
	SrcPort, DstPort uint16
}

// TupleOf builds a tuple from two endpoints.
func TupleOf(src, dst netip.AddrPort) Tuple {
	return Tuple{
		Src: src.Addr().As16(), Dst: dst.Addr().As16(),
		SrcPort: src.Port(), DstPort: dst.Port(),
	}
}

// Reverse returns the tuple of the opposite direction.
func (t Tuple) Reverse() Tuple {
	return Tuple{Src: t.Dst, Dst: t.Src, SrcPort: t.DstPort, DstPort: t.SrcPort}
}

// Is4 reports whether the tuple holds IPv4 addresses.
func (t Tuple) Is4() bool { return netip.AddrFrom16(t.Src).Is4In6() }

func (t Tuple) SrcAddrPort() netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(t.Src).Unmap(), t.SrcPort)
}

func (t Tuple) DstAddrPort() netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(t.Dst).Unmap(), t.DstPort)
}

func (t Tuple) String() string {
	return t.SrcAddrPort().String() + "->" + t.DstAddrPort().String()
}
