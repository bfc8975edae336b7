package capture

import "encoding/binary"

// This file is the first phase a mirrored packet meets: the tunnel
// headers around it come off. The parsers take the UDP payload of one
// datagram and return the inner frame as a subslice, never copying or
// allocating.
//
// What is understood, and why:
//   - VXLAN (RFC 7348), UDP 4789: an 8-byte header, the I flag set, a
//     24-bit VNI, an Ethernet frame after it. AWS VPC Traffic Mirroring and
//     most switches' mirror sessions send this.
//   - GENEVE (RFC 8926), UDP 6081: version 0, options of Opt Len 4-byte
//     words (each option's own length checked against them, their
//     contents ignored: a mirror target only observes, so a critical
//     option it does not know changes nothing of what it copies),
//     protocol type 0x6558 (an Ethernet frame; GCP Packet Mirroring) or
//     0x0800/0x86DD (an IP packet, as AWS Gateway Load Balancer sends).
//   - A tunnel inside the tunnel: when the inner IP packet is itself UDP
//     to port 4789 carrying VXLAN (AWS Traffic Mirroring toward a GWLB
//     wraps its VXLAN in GWLB's GENEVE), that comes off too, once. The
//     VNI filter applies to the innermost tunnel header, the mirror
//     session's.

// Tunnel header layout.
const (
	vxlanHeaderLen   = 8
	vxlanFlagsOffset = 0
	vxlanFlagVNI     = 0x08 // the I flag: the VNI is valid
	vxlanVNIOffset   = 4

	geneveHeaderLen     = 8
	geneveVerOptOffset  = 0 // Ver (2 bits), Opt Len (6 bits, 4-byte words)
	geneveProtoOffset   = 2
	geneveVNIOffset     = 4
	geneveOptHeaderLen  = 4 // class (16), type (8), R R R Length (5 bits, words)
	geneveOptLenOffset  = 3
	geneveOptLenMask    = 0x1f
	protoTransparentEth = 0x6558

	// DefaultVXLANPort and DefaultGenevePort are the IANA ports.
	DefaultVXLANPort  = 4789
	DefaultGenevePort = 6081
)

// decapResult says what a parser found.
type decapResult uint8

const (
	decapEthernet decapResult = iota // inner is an Ethernet frame
	decapIP                          // inner is an IP packet
	decapBad                         // malformed tunnel header
)

// vxlanDecap returns the Ethernet frame inside a VXLAN payload and its VNI.
func vxlanDecap(b []byte) (inner []byte, vni uint32, r decapResult) {
	if len(b) < vxlanHeaderLen || b[vxlanFlagsOffset]&vxlanFlagVNI == 0 {
		return nil, 0, decapBad
	}
	vni = binary.BigEndian.Uint32(b[vxlanVNIOffset:]) >> 8
	return b[vxlanHeaderLen:], vni, decapEthernet
}

// geneveDecap returns what a GENEVE payload carries and its VNI.
func geneveDecap(b []byte) (inner []byte, vni uint32, r decapResult) {
	if len(b) < geneveHeaderLen || b[geneveVerOptOffset]>>6 != 0 {
		return nil, 0, decapBad
	}
	optLen := int(b[geneveVerOptOffset]&0x3f) * 4
	if len(b) < geneveHeaderLen+optLen {
		return nil, 0, decapBad
	}
	// Each option must fit in the options area.
	opts := b[geneveHeaderLen : geneveHeaderLen+optLen]
	for len(opts) > 0 {
		if len(opts) < geneveOptHeaderLen {
			return nil, 0, decapBad
		}
		n := geneveOptHeaderLen + int(opts[geneveOptLenOffset]&geneveOptLenMask)*4
		if n > len(opts) {
			return nil, 0, decapBad
		}
		opts = opts[n:]
	}
	vni = binary.BigEndian.Uint32(b[geneveVNIOffset:]) >> 8
	inner = b[geneveHeaderLen+optLen:]
	switch binary.BigEndian.Uint16(b[geneveProtoOffset:]) {
	case protoTransparentEth:
		return inner, vni, decapEthernet
	case etherTypeIPv4, etherTypeIPv6:
		return inner, vni, decapIP
	}
	return nil, 0, decapBad
}

// innerVXLAN returns the UDP payload of ip if it is an unfragmented IPv4
// or IPv6 packet (no extension headers) to UDP port 4789: a VXLAN
// datagram inside the tunnel.
func innerVXLAN(ip []byte) ([]byte, bool) {
	var l4 []byte
	switch {
	case len(ip) >= 20 && ip[0]>>4 == 4:
		hl := int(ip[0]&0x0f) * 4
		// Protocol UDP, and neither more fragments nor an offset.
		if hl < 20 || len(ip) < hl || ip[9] != 17 || binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
			return nil, false
		}
		l4 = ip[hl:]
	case len(ip) >= 40 && ip[0]>>4 == 6:
		if ip[6] != 17 {
			return nil, false
		}
		l4 = ip[40:]
	default:
		return nil, false
	}
	if len(l4) < 8 || binary.BigEndian.Uint16(l4[2:]) != DefaultVXLANPort {
		return nil, false
	}
	return l4[8:], true
}

// ipTotalLen returns the length ip's header claims for the whole packet,
// and false if ip is not IPv4 or IPv6, too short to say, or claims less
// than its own header.
func ipTotalLen(ip []byte) (int, bool) {
	switch {
	case len(ip) >= 20 && ip[0]>>4 == 4:
		n := int(binary.BigEndian.Uint16(ip[2:]))
		return n, n >= max(20, int(ip[0]&0x0f)*4)
	case len(ip) >= 40 && ip[0]>>4 == 6:
		return 40 + int(binary.BigEndian.Uint16(ip[4:])), true
	}
	return 0, false
}
