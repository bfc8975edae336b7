package divert

import (
	"encoding/binary"
	"errors"
)

// This file is the NFQUEUE netlink message format: the messages the agent
// sends (configuration and verdicts) and the ones it reads (packets and
// acknowledgements). The numbers are the kernel's uapi
// (linux/netfilter/nfnetlink_queue.h, linux/netlink.h).

// Netlink message header (struct nlmsghdr), in host byte order.
const (
	nlLen    = 0  // u32: the message's length, header included
	nlType   = 4  // u16
	nlFlags  = 6  // u16
	nlSeq    = 8  // u32
	nlPortID = 12 // u32
	nlHdrLen = 16

	nlmsgError = 2 // an acknowledgement or an error: struct nlmsgerr follows
	nlmsgDone  = 3

	nlmFRequest = 0x1
	nlmFAck     = 0x4
)

// Netfilter message header (struct nfgenmsg), after the netlink header.
const (
	nfgFamily  = 0 // u8
	nfgVersion = 1 // u8: always 0
	nfgResID   = 2 // be16: the queue number
	nfgHdrLen  = 4
)

// Attribute header (struct nlattr), in host byte order; attributes are
// padded to 4 bytes.
const (
	attrLen     = 0 // u16: header included, padding not
	attrType    = 2 // u16: low 14 bits; the top two are flags
	attrHdrLen  = 4
	attrTypeBit = 0x3fff
)

// NFQUEUE message types (the low byte; the high byte is the subsystem).
const (
	subsysQueue     = 3
	msgPacket       = 0
	msgVerdict      = 1
	msgConfig       = 2
	typePacket      = subsysQueue<<8 | msgPacket
	typeVerdict     = subsysQueue<<8 | msgVerdict
	typeConfig      = subsysQueue<<8 | msgConfig
	verdictDrop     = 0 // NF_DROP
	verdictHdrLen   = 8 // struct nfqnl_msg_verdict_hdr: be32 verdict, be32 id
	verdictMsgLen   = nlHdrLen + nfgHdrLen + attrHdrLen + verdictHdrLen
	packetHdrMinLen = 7 // struct nfqnl_msg_packet_hdr: be32 id, be16 hw_protocol, u8 hook
)

// Packet attributes (enum nfqnl_attr_type).
const (
	attrPacketHdr  = 1
	attrVerdictHdr = 2
	attrPayload    = 10
	attrCapLen     = 13
)

// Configuration attributes and values (enum nfqnl_attr_config).
const (
	cfgCmd      = 1 // struct nfqnl_msg_config_cmd: u8 command, u8 pad, be16 pf
	cfgParams   = 2 // struct nfqnl_msg_config_params: be32 copy_range, u8 copy_mode
	cfgQueueMax = 3 // be32
	cfgMask     = 4 // be32
	cfgFlags    = 5 // be32

	cmdBind    = 1
	copyPacket = 2   // NFQNL_COPY_PACKET
	flagGSO    = 0x4 // NFQA_CFG_F_GSO: large segments are queued whole, not split for us
)

// Parse errors: declared once, so that a malformed message costs no
// allocation.
var (
	errShort      = errors.New("message shorter than its headers")
	errBadLen     = errors.New("message length out of bounds")
	errBadAttr    = errors.New("attribute length out of bounds")
	errNoPacketID = errors.New("packet message without its packet header")
	errNoPayload  = errors.New("packet message without payload")
)

// splitMessage returns the first netlink message of b and what follows
// it (after the message's padding).
func splitMessage(b []byte) (msg, rest []byte, err error) {
	if len(b) < nlHdrLen {
		return nil, nil, errShort
	}
	n := int(binary.NativeEndian.Uint32(b[nlLen:]))
	if n < nlHdrLen || n > len(b) {
		return nil, nil, errBadLen
	}
	next := min(align4(n), len(b))
	return b[:n], b[next:], nil
}

func align4(n int) int { return (n + 3) &^ 3 }

// msgType is a message's netlink type.
func msgType(msg []byte) uint16 { return binary.NativeEndian.Uint16(msg[nlType:]) }

// packet is what a packet message carries that the agent needs.
type packet struct {
	id      uint32 // for the verdict
	hwProto uint16 // ethertype: 0x0800 or 0x86dd
	hook    uint8
	payload []byte // the packet from its IP header, at most the copy range
	capLen  uint32 // the packet's length when payload is shorter; 0: payload is whole
	hasID   bool
}

// parsePacket reads packet message msg (splitMessage's msg, of type
// typePacket) into p. p.payload aliases msg. A message with a packet
// header but no payload fills p.id and p.hasID before it fails, so the
// caller can still give its verdict.
func parsePacket(msg []byte, p *packet) error {
	*p = packet{}
	if len(msg) < nlHdrLen+nfgHdrLen {
		return errShort
	}
	b := msg[nlHdrLen+nfgHdrLen:]
	for len(b) >= attrHdrLen {
		n := int(binary.NativeEndian.Uint16(b[attrLen:]))
		if n < attrHdrLen || n > len(b) {
			return errBadAttr
		}
		v := b[attrHdrLen:n]
		switch binary.NativeEndian.Uint16(b[attrType:]) & attrTypeBit {
		case attrPacketHdr:
			if len(v) < packetHdrMinLen {
				return errBadAttr
			}
			p.id = binary.BigEndian.Uint32(v[0:])
			p.hwProto = binary.BigEndian.Uint16(v[4:])
			p.hook = v[6]
			p.hasID = true
		case attrPayload:
			p.payload = v
		case attrCapLen:
			if len(v) < 4 {
				return errBadAttr
			}
			p.capLen = binary.BigEndian.Uint32(v)
		}
		b = b[min(align4(n), len(b)):]
	}
	if !p.hasID {
		return errNoPacketID
	}
	if len(p.payload) == 0 {
		return errNoPayload
	}
	return nil
}

// parseAck returns the error an acknowledgement (type nlmsgError)
// carries: 0 for success, else a positive errno.
func parseAck(msg []byte) (errno int32, err error) {
	if len(msg) < nlHdrLen+4 {
		return 0, errShort
	}
	return -int32(binary.NativeEndian.Uint32(msg[nlHdrLen:])), nil
}

// putVerdict writes into b (verdictMsgLen bytes) the verdict message that
// drops packet id of queue num.
func putVerdict(b []byte, seq uint32, num uint16, id uint32) {
	putHeaders(b, verdictMsgLen, typeVerdict, nlmFRequest, seq, num)
	a := b[nlHdrLen+nfgHdrLen:]
	binary.NativeEndian.PutUint16(a[attrLen:], attrHdrLen+verdictHdrLen)
	binary.NativeEndian.PutUint16(a[attrType:], attrVerdictHdr)
	binary.BigEndian.PutUint32(a[attrHdrLen:], verdictDrop)
	binary.BigEndian.PutUint32(a[attrHdrLen+4:], id)
}

// putHeaders writes the netlink and netfilter headers of a message of
// length n to queue num.
func putHeaders(b []byte, n int, typ, flags uint16, seq uint32, num uint16) {
	binary.NativeEndian.PutUint32(b[nlLen:], uint32(n))
	binary.NativeEndian.PutUint16(b[nlType:], typ)
	binary.NativeEndian.PutUint16(b[nlFlags:], flags)
	binary.NativeEndian.PutUint32(b[nlSeq:], seq)
	binary.NativeEndian.PutUint32(b[nlPortID:], 0)
	b[nlHdrLen+nfgFamily] = 0 // AF_UNSPEC
	b[nlHdrLen+nfgVersion] = 0
	binary.BigEndian.PutUint16(b[nlHdrLen+nfgResID:], num)
}

// configMsg builds a configuration message for queue num, asking for an
// acknowledgement; attrs are (type, value) pairs.
func configMsg(seq uint32, num uint16, attrs ...[]byte) []byte {
	n := nlHdrLen + nfgHdrLen
	for _, a := range attrs {
		n += align4(len(a))
	}
	b := make([]byte, n)
	putHeaders(b, n, typeConfig, nlmFRequest|nlmFAck, seq, num)
	off := nlHdrLen + nfgHdrLen
	for _, a := range attrs {
		copy(b[off:], a)
		off += align4(len(a))
	}
	return b
}

// attr encodes one attribute (header and value; padding is the caller's).
func attr(typ uint16, v ...byte) []byte {
	b := make([]byte, attrHdrLen+len(v))
	binary.NativeEndian.PutUint16(b[attrLen:], uint16(len(b)))
	binary.NativeEndian.PutUint16(b[attrType:], typ)
	copy(b[attrHdrLen:], v)
	return b
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
