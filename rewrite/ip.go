package rewrite

import (
	"encoding/binary"
	"net/netip"
)

// IP protocol numbers and IPv6 extension headers the decoder knows.
const (
	ProtoTCP         = 6
	protoHopByHop    = 0
	protoRouting     = 43
	protoFragment    = 44
	protoDestOpts    = 60
	IPv4MinHeaderLen = 20
	IPv6HeaderLen    = 40
)

// IPv4 is a view of an IPv4 header at the start of a packet. Getters and
// setters assume the view is at least IPv4MinHeaderLen long (Packet.Decode
// checks that); setters keep the header checksum valid.
type IPv4 []byte

func (b IPv4) HeaderLen() int       { return int(b[0]&0x0f) * 4 }
func (b IPv4) TotalLen() int        { return int(binary.BigEndian.Uint16(b[2:])) }
func (b IPv4) ID() uint16           { return binary.BigEndian.Uint16(b[4:]) }
func (b IPv4) TTL() uint8           { return b[8] }
func (b IPv4) Protocol() uint8      { return b[9] }
func (b IPv4) Checksum() uint16     { return binary.BigEndian.Uint16(b[10:]) }
func (b IPv4) SrcAddr() netip.Addr  { return netip.AddrFrom4([4]byte(b[12:16])) }
func (b IPv4) DstAddr() netip.Addr  { return netip.AddrFrom4([4]byte(b[16:20])) }
func (b IPv4) MoreFragments() bool  { return b[6]&0x20 != 0 }
func (b IPv4) FragmentOffset() int  { return int(binary.BigEndian.Uint16(b[6:])&0x1fff) * 8 }
func (b IPv4) SetChecksum(c uint16) { binary.BigEndian.PutUint16(b[10:], c) }

// IsFragment reports whether the packet is any fragment of a larger datagram.
func (b IPv4) IsFragment() bool { return b.MoreFragments() || b.FragmentOffset() != 0 }

// ComputeChecksum returns the header checksum computed from scratch.
func (b IPv4) ComputeChecksum() uint16 {
	hl := b.HeaderLen()
	s := Sum(b[:10], 0)
	s = Sum(b[12:hl], s)
	return ^s
}

// SetTotalLen sets the total length, updating the header checksum.
func (b IPv4) SetTotalLen(n int) {
	old := binary.BigEndian.Uint16(b[2:])
	binary.BigEndian.PutUint16(b[2:], uint16(n))
	b.SetChecksum(Update16(b.Checksum(), old, uint16(n)))
}

// SetID sets the identification field, updating the header checksum.
func (b IPv4) SetID(id uint16) {
	old := b.ID()
	binary.BigEndian.PutUint16(b[4:], id)
	b.SetChecksum(Update16(b.Checksum(), old, id))
}

// setAddr writes a 4-byte address at off and returns the old and new bytes'
// effect on the header checksum; the caller fixes the pseudo-header sum.
func (b IPv4) setAddr(off int, a [4]byte) {
	var old [4]byte
	copy(old[:], b[off:off+4])
	copy(b[off:off+4], a[:])
	b.SetChecksum(UpdateBytes(b.Checksum(), old[:], a[:]))
}

// IPv6 is a view of an IPv6 fixed header at the start of a packet.
type IPv6 []byte

func (b IPv6) PayloadLen() int     { return int(binary.BigEndian.Uint16(b[4:])) }
func (b IPv6) NextHeader() uint8   { return b[6] }
func (b IPv6) HopLimit() uint8     { return b[7] }
func (b IPv6) SrcAddr() netip.Addr { return netip.AddrFrom16([16]byte(b[8:24])) }
func (b IPv6) DstAddr() netip.Addr { return netip.AddrFrom16([16]byte(b[24:40])) }

// SetPayloadLen sets the payload length (IPv6 has no header checksum).
func (b IPv6) SetPayloadLen(n int) { binary.BigEndian.PutUint16(b[4:], uint16(n)) }
