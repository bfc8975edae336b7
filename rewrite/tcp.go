package rewrite

import "encoding/binary"

// TCP header field offsets (RFC 9293 §3.1).
const (
	TCPSrcPortOffset  = 0
	TCPDstPortOffset  = 2
	TCPSeqNumOffset   = 4
	TCPAckNumOffset   = 8
	TCPDataOffset     = 12 // header length in 32-bit words, high nibble
	TCPFlagsOffset    = 13
	TCPWindowOffset   = 14
	TCPChecksumOffset = 16
	TCPUrgentOffset   = 18

	TCPMinHeaderLen = 20
	TCPMaxHeaderLen = 60
)

// TCP header flags.
const (
	FlagFIN uint8 = 1 << iota
	FlagSYN
	FlagRST
	FlagPSH
	FlagACK
	FlagURG
	FlagECE
	FlagCWR
)

// TCP option kinds (RFC 9293 §3.2, RFC 7323, RFC 2018).
const (
	OptEnd           = 0
	OptNOP           = 1
	OptMSS           = 2
	OptWindowScale   = 3
	OptSACKPermitted = 4
	OptSACK          = 5
	OptTimestamps    = 8
	OptFastOpen      = 34 // RFC 7413
)

// TCP protocol limits and defaults.
const (
	// MaxWindowScale is the largest shift a window scale option may ask
	// for; larger values are treated as 14 (RFC 7323 §2.3).
	MaxWindowScale = 14
	// DefaultMSS4 is the MSS an IPv4 peer assumes when the other side
	// sends no MSS option (RFC 9293 §3.7.1), and the smallest the copier
	// sends with: a smaller MSS only multiplies packets.
	DefaultMSS4 = 536
	// DefaultMSS6 is IPv6's: the minimum MTU, 1280, less the IPv6 and TCP
	// headers (RFC 8200 §5, RFC 9293 §3.7.1).
	DefaultMSS6 = 1220
	// MaxMSS is the largest MSS an IP packet can carry: IPv4's 65535-byte
	// total length less the minimal IPv4 and TCP headers.
	MaxMSS = 65535 - IPv4MinHeaderLen - TCPMinHeaderLen
)

// TCP is a view of a TCP header. Setters write the raw field only; use
// Packet's setters to keep the checksum valid.
type TCP []byte

func (t TCP) SrcPort() uint16      { return binary.BigEndian.Uint16(t[TCPSrcPortOffset:]) }
func (t TCP) DstPort() uint16      { return binary.BigEndian.Uint16(t[TCPDstPortOffset:]) }
func (t TCP) Seq() uint32          { return binary.BigEndian.Uint32(t[TCPSeqNumOffset:]) }
func (t TCP) Ack() uint32          { return binary.BigEndian.Uint32(t[TCPAckNumOffset:]) }
func (t TCP) HeaderLen() int       { return int(t[TCPDataOffset]>>4) * 4 }
func (t TCP) Flags() uint8         { return t[TCPFlagsOffset] }
func (t TCP) Window() uint16       { return binary.BigEndian.Uint16(t[TCPWindowOffset:]) }
func (t TCP) Checksum() uint16     { return binary.BigEndian.Uint16(t[TCPChecksumOffset:]) }
func (t TCP) Options() []byte      { return t[TCPMinHeaderLen:t.HeaderLen()] }
func (t TCP) Has(f uint8) bool     { return t[TCPFlagsOffset]&f != 0 }
func (t TCP) SetChecksum(c uint16) { binary.BigEndian.PutUint16(t[TCPChecksumOffset:], c) }

// Options holds the TCP options the copier acts on. Offsets are from the
// start of the TCP header and are 0 when the option is absent.
type Options struct {
	MSS           uint16
	WindowScale   uint8
	SACKPermitted bool
	SACK          bool // the segment carries SACK blocks
	TSVal, TSEcr  uint32

	mssOff, wsOff, tsOff int
}

func (o *Options) HasMSS() bool         { return o.mssOff != 0 }
func (o *Options) HasWindowScale() bool { return o.wsOff != 0 }
func (o *Options) HasTimestamps() bool  { return o.tsOff != 0 }

// ParseOptions decodes the options of TCP header t. It returns false if the
// option list is malformed (a length running past the header or below 2);
// options decoded before the fault are kept.
func ParseOptions(t TCP, o *Options) bool {
	*o = Options{}
	hl := t.HeaderLen()
	for i := TCPMinHeaderLen; i < hl; {
		kind := t[i]
		switch kind {
		case OptEnd:
			return true
		case OptNOP:
			i++
			continue
		}
		if i+1 >= hl {
			return false
		}
		n := int(t[i+1])
		if n < 2 || i+n > hl {
			return false
		}
		switch {
		case kind == OptMSS && n == 4:
			o.MSS = binary.BigEndian.Uint16(t[i+2:])
			o.mssOff = i
		case kind == OptWindowScale && n == 3:
			o.WindowScale = t[i+2]
			o.wsOff = i
		case kind == OptSACKPermitted && n == 2:
			o.SACKPermitted = true
		case kind == OptSACK:
			o.SACK = true
		case kind == OptTimestamps && n == 10:
			o.TSVal = binary.BigEndian.Uint32(t[i+2:])
			o.TSEcr = binary.BigEndian.Uint32(t[i+6:])
			o.tsOff = i
		}
		i += n
	}
	return true
}

// AppendMSS appends an MSS option.
func AppendMSS(b []byte, mss uint16) []byte {
	return append(b, OptMSS, 4, byte(mss>>8), byte(mss))
}

// AppendWindowScale appends a NOP-padded window scale option (4 bytes).
func AppendWindowScale(b []byte, shift uint8) []byte {
	return append(b, OptNOP, OptWindowScale, 3, shift)
}

// AppendTimestamps appends a NOP-padded timestamps option (12 bytes), the
// layout Linux uses.
func AppendTimestamps(b []byte, val, ecr uint32) []byte {
	b = append(b, OptNOP, OptNOP, OptTimestamps, 10)
	b = binary.BigEndian.AppendUint32(b, val)
	return binary.BigEndian.AppendUint32(b, ecr)
}
