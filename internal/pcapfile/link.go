package pcapfile

import "encoding/binary"

// This file is the phase after a record's framing: the link header in
// front of the IP packet comes off.

// Link header layout.
const (
	ethTypeOffset = 12 // after the destination and source MACs
	ethTagLen     = 4  // an 802.1Q or 802.1ad tag
	ethMaxTags    = 2

	sllHeaderLen    = 16
	sllPktTypeOff   = 0  // PACKET_HOST, _BROADCAST, _MULTICAST, _OTHERHOST, _OUTGOING
	sllProtocolOff  = 14 // an EtherType
	sll2HeaderLen   = 20
	sll2ProtocolOff = 0
	sll2PktTypeOff  = 10

	loopHeaderLen = 4

	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd
	etherTypeVLAN = 0x8100
	etherTypeQinQ = 0x88a8

	// sllOtherHost is PACKET_OTHERHOST: a frame to another host's link
	// address, seen by a promiscuous "any" capture; not the server's.
	sllOtherHost = 3
)

// Kind says what a frame holds.
type Kind uint8

const (
	KindIP        Kind = iota // an IPv4 or IPv6 packet at the offset
	KindNonIP                 // ARP, another protocol, or too short to say
	KindOtherHost             // a cooked frame addressed to another host
)

// IPOffset returns where frame's IP packet starts for link type l, and
// what the frame holds; the offset means something only with KindIP.
// It reads the link header and the IP version nibble, nothing more.
func IPOffset(l LinkType, frame []byte) (int, Kind) {
	off := -1
	switch l {
	case LinkEthernet:
		off = ethernetIP(frame)
	case LinkSLL:
		if len(frame) >= sllHeaderLen {
			if binary.BigEndian.Uint16(frame[sllPktTypeOff:]) == sllOtherHost {
				return 0, KindOtherHost
			}
			off = etherIP(binary.BigEndian.Uint16(frame[sllProtocolOff:]), sllHeaderLen)
		}
	case LinkSLL2:
		if len(frame) >= sll2HeaderLen {
			if frame[sll2PktTypeOff] == sllOtherHost {
				return 0, KindOtherHost
			}
			off = etherIP(binary.BigEndian.Uint16(frame[sll2ProtocolOff:]), sll2HeaderLen)
		}
	case LinkRaw, LinkRawAlt, LinkIPv4, LinkIPv6:
		off = 0
	case LinkNull, LinkLoop:
		// The family's byte order varies with the writer; the version
		// nibble after it does not.
		off = loopHeaderLen
	}
	if off < 0 || off >= len(frame) {
		return 0, KindNonIP
	}
	if v := frame[off] >> 4; v != 4 && v != 6 {
		return 0, KindNonIP
	}
	return off, KindIP
}

// ethernetIP returns the IP header's offset in an Ethernet frame, past
// up to ethMaxTags VLAN tags, or -1.
func ethernetIP(frame []byte) int {
	off := ethTypeOffset
	for range ethMaxTags + 1 {
		if len(frame) < off+2 {
			return -1
		}
		switch et := binary.BigEndian.Uint16(frame[off:]); et {
		case etherTypeVLAN, etherTypeQinQ:
			off += ethTagLen
		default:
			return etherIP(et, off+2)
		}
	}
	return -1
}

func etherIP(etherType uint16, hdr int) int {
	if etherType == etherTypeIPv4 || etherType == etherTypeIPv6 {
		return hdr
	}
	return -1
}
