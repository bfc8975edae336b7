package rewrite

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// Segment describes a TCP segment the copier originates itself: synthetic
// handshake packets, ACKs, RSTs and the pieces of split oversized packets.
type Segment struct {
	Src, Dst netip.AddrPort // same family
	Seq, Ack uint32
	Flags    uint8
	Window   uint16
	Options  []byte // encoded options; padded here to a multiple of 4
	Payload  []byte
	TTL      uint8 // IPv4 TTL or IPv6 hop limit; 0 means 64
	ID       uint16
}

var (
	errFamily     = errors.New("segment addresses of different families")
	errOptionsLen = errors.New("tcp options longer than 40 bytes")
	errShortBuf   = errors.New("buffer too small for segment")
	errTooLong    = errors.New("segment too long for the ip length field")
)

// Len returns the length of the IP packet Put writes.
func (s *Segment) Len() int {
	n := TCPMinHeaderLen + (len(s.Options)+3)&^3 + len(s.Payload)
	if s.Src.Addr().Is4() {
		return IPv4MinHeaderLen + n
	}
	return IPv6HeaderLen + n
}

// Put writes the segment into dst as an IP packet with valid checksums and
// returns its length.
func (s *Segment) Put(dst []byte) (int, error) {
	src, dstAddr := s.Src.Addr(), s.Dst.Addr()
	if src.Is4() != dstAddr.Is4() {
		return 0, errFamily
	}
	optLen := (len(s.Options) + 3) &^ 3
	if optLen > TCPMaxHeaderLen-TCPMinHeaderLen {
		return 0, errOptionsLen
	}
	n := s.Len()
	maxLen := 0xffff // IPv4 total length
	if !src.Is4() {
		maxLen += IPv6HeaderLen // IPv6 payload length
	}
	if n > maxLen {
		return 0, errTooLong
	}
	if len(dst) < n {
		return 0, errShortBuf
	}
	ttl := s.TTL
	if ttl == 0 {
		ttl = 64
	}
	b := dst[:n]
	var ipLen int
	if src.Is4() {
		ipLen = IPv4MinHeaderLen
		ip := IPv4(b)
		ip[IPv4VersionIHLOffset], ip[IPv4VersionIHLOffset+1] = 4<<4|IPv4MinHeaderLen/4, 0
		binary.BigEndian.PutUint16(ip[IPv4TotalLenOffset:], uint16(n))
		binary.BigEndian.PutUint16(ip[IPv4IDOffset:], s.ID)
		binary.BigEndian.PutUint16(ip[IPv4FragmentOffset:], ipv4DontFragment)
		ip[IPv4TTLOffset], ip[IPv4ProtocolOffset] = ttl, ProtoTCP
		a, d := src.As4(), dstAddr.As4()
		copy(ip[IPv4SrcAddrOffset:], a[:])
		copy(ip[IPv4DstAddrOffset:], d[:])
		ip.SetChecksum(0)
		ip.SetChecksum(ip.ComputeChecksum())
	} else {
		ipLen = IPv6HeaderLen
		ip := IPv6(b)
		binary.BigEndian.PutUint32(ip[0:], 6<<28) // version; traffic class and flow label 0
		ip.SetPayloadLen(n - IPv6HeaderLen)
		ip[IPv6NextHeaderOffset], ip[IPv6HopLimitOffset] = ProtoTCP, ttl
		a, d := src.As16(), dstAddr.As16()
		copy(ip[IPv6SrcAddrOffset:], a[:])
		copy(ip[IPv6DstAddrOffset:], d[:])
	}
	t := TCP(b[ipLen:])
	binary.BigEndian.PutUint16(t[TCPSrcPortOffset:], s.Src.Port())
	binary.BigEndian.PutUint16(t[TCPDstPortOffset:], s.Dst.Port())
	binary.BigEndian.PutUint32(t[TCPSeqNumOffset:], s.Seq)
	binary.BigEndian.PutUint32(t[TCPAckNumOffset:], s.Ack)
	t[TCPDataOffset] = byte((TCPMinHeaderLen+optLen)/4) << 4
	t[TCPFlagsOffset] = s.Flags
	binary.BigEndian.PutUint16(t[TCPWindowOffset:], s.Window)
	binary.BigEndian.PutUint32(t[TCPChecksumOffset:], 0) // checksum and urgent pointer
	o := t[TCPMinHeaderLen : TCPMinHeaderLen+optLen]
	copy(o, s.Options)
	clear(o[len(s.Options):]) // end-of-list padding
	copy(t[TCPMinHeaderLen+optLen:], s.Payload)
	var p Packet
	p.b, p.ipLen, p.tcpLen, p.segLen, p.v6 = b, ipLen, TCPMinHeaderLen+optLen, n-ipLen, !src.Is4()
	t.SetChecksum(^Sum(t, p.pseudoSum()))
	return n, nil
}
