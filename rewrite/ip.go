package rewrite

import (
	"encoding/binary"
	"net/netip"
)

// IP protocol numbers and IPv6 extension headers the decoder knows.
const (
	ProtoTCP      = 6
	protoHopByHop = 0
	protoRouting  = 43
	protoFragment = 44
	protoDestOpts = 60
)

// IPv4 header field offsets and lengths (RFC 791 §3.1).
const (
	IPv4VersionIHLOffset = 0
	IPv4TotalLenOffset   = 2
	IPv4IDOffset         = 4
	IPv4FragmentOffset   = 6 // flags and fragment offset
	IPv4TTLOffset        = 8
	IPv4ProtocolOffset   = 9
	IPv4ChecksumOffset   = 10
	IPv4SrcAddrOffset    = 12
	IPv4DstAddrOffset    = 16

	IPv4MinHeaderLen = 20
	IPv4MaxHeaderLen = 60

	ipv4MoreFragments = 0x2000 // in the 16 bits at IPv4FragmentOffset
	ipv4DontFragment  = 0x4000
	ipv4FragOffMask   = 0x1fff // in units of 8 bytes
)

// IPv6 fixed header field offsets and length (RFC 8200 §3).
const (
	IPv6PayloadLenOffset = 4
	IPv6NextHeaderOffset = 6
	IPv6HopLimitOffset   = 7
	IPv6SrcAddrOffset    = 8
	IPv6DstAddrOffset    = 24

	IPv6HeaderLen = 40
)

// MaxHeadersLen bounds the IP and TCP headers of a packet as relayed: an
// IPv4 header with options and a TCP header with options (an IPv6
// header, extension headers dropped, is shorter).
const MaxHeadersLen = IPv4MaxHeaderLen + TCPMaxHeaderLen

// IPv4 is a view of an IPv4 header at the start of a packet. Getters and
// setters assume the view is at least IPv4MinHeaderLen long (Packet.Decode
// checks that); setters keep the header checksum valid.
type IPv4 []byte

func (b IPv4) HeaderLen() int      { return int(b[IPv4VersionIHLOffset]&0x0f) * 4 }
func (b IPv4) TotalLen() int       { return int(binary.BigEndian.Uint16(b[IPv4TotalLenOffset:])) }
func (b IPv4) ID() uint16          { return binary.BigEndian.Uint16(b[IPv4IDOffset:]) }
func (b IPv4) TTL() uint8          { return b[IPv4TTLOffset] }
func (b IPv4) Protocol() uint8     { return b[IPv4ProtocolOffset] }
func (b IPv4) Checksum() uint16    { return binary.BigEndian.Uint16(b[IPv4ChecksumOffset:]) }
func (b IPv4) SrcAddr() netip.Addr { return netip.AddrFrom4([4]byte(b[IPv4SrcAddrOffset:])) }
func (b IPv4) DstAddr() netip.Addr { return netip.AddrFrom4([4]byte(b[IPv4DstAddrOffset:])) }
func (b IPv4) MoreFragments() bool {
	return binary.BigEndian.Uint16(b[IPv4FragmentOffset:])&ipv4MoreFragments != 0
}
func (b IPv4) FragmentOffset() int {
	return int(binary.BigEndian.Uint16(b[IPv4FragmentOffset:])&ipv4FragOffMask) * 8
}
func (b IPv4) SetChecksum(c uint16) { binary.BigEndian.PutUint16(b[IPv4ChecksumOffset:], c) }

// IsFragment reports whether the packet is any fragment of a larger datagram.
func (b IPv4) IsFragment() bool { return b.MoreFragments() || b.FragmentOffset() != 0 }

// ComputeChecksum returns the header checksum computed from scratch.
func (b IPv4) ComputeChecksum() uint16 {
	hl := b.HeaderLen()
	s := Sum(b[:IPv4ChecksumOffset], 0)
	s = Sum(b[IPv4ChecksumOffset+2:hl], s)
	return ^s
}

// setAddr writes a 4-byte address at off, updating the header checksum;
// the caller fixes the TCP checksum's pseudo-header part.
func (b IPv4) setAddr(off int, a [4]byte) {
	var old [4]byte
	copy(old[:], b[off:off+4])
	copy(b[off:off+4], a[:])
	b.SetChecksum(UpdateBytes(b.Checksum(), old[:], a[:]))
}

// IPv6 is a view of an IPv6 fixed header at the start of a packet.
type IPv6 []byte

func (b IPv6) PayloadLen() int     { return int(binary.BigEndian.Uint16(b[IPv6PayloadLenOffset:])) }
func (b IPv6) NextHeader() uint8   { return b[IPv6NextHeaderOffset] }
func (b IPv6) HopLimit() uint8     { return b[IPv6HopLimitOffset] }
func (b IPv6) SrcAddr() netip.Addr { return netip.AddrFrom16([16]byte(b[IPv6SrcAddrOffset:])) }
func (b IPv6) DstAddr() netip.Addr { return netip.AddrFrom16([16]byte(b[IPv6DstAddrOffset:])) }

// SetPayloadLen sets the payload length (IPv6 has no header checksum).
func (b IPv6) SetPayloadLen(n int) {
	binary.BigEndian.PutUint16(b[IPv6PayloadLenOffset:], uint16(n))
}
