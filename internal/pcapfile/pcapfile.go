// Package pcapfile reads capture files, pcap and pcapng, whatever wrote
// them (tcpdump, Wireshark, tcpshadow copy --record), and writes pcap and
// pcapng files of IP packets.
//
// It owns the files' framing: the file and section headers, each record's
// length and timestamp, the interfaces of a pcapng section with their link
// types and timestamp resolutions, and the link headers in front of the IP
// packet (Ethernet with VLAN tags, Linux cooked v1 and v2, raw IP, BSD
// loopback). It reads its own way rather than with gopacket's pcapgo,
// whose 8-bit link type cannot name Linux cooked v2 (276), and so that
// every error names the file and the byte offset it is at.
//
// It must not interpret anything past the IP header's first byte: what
// the packets hold is the caller's (tcpstate). Malformed framing is an
// error (*FormatError), never a panic and never a silent stop; frames that
// are well framed but not IP are counted (Stats) and skipped. A Reader
// reuses one buffer: a record's bytes are valid until the next call.
package pcapfile

import (
	"errors"
	"fmt"
)

// LinkType is a LINKTYPE_ value (tcpdump.org/linktypes.html): pcap keeps
// it in 16 bits of its header, pcapng in each interface block.
type LinkType uint16

// The link types a Reader decodes.
const (
	LinkNull     LinkType = 0   // BSD loopback: a 4-byte address family in host order
	LinkEthernet LinkType = 1   // Ethernet II, 802.1Q and 802.1ad tags skipped
	LinkRawAlt   LinkType = 12  // DLT_RAW as some systems write it
	LinkRaw      LinkType = 101 // raw IPv4 or IPv6
	LinkLoop     LinkType = 108 // OpenBSD loopback: the family in network order
	LinkSLL      LinkType = 113 // Linux cooked capture v1 (tcpdump -i any before libpcap 1.10)
	LinkIPv4     LinkType = 228
	LinkIPv6     LinkType = 229
	LinkSLL2     LinkType = 276 // Linux cooked capture v2 (tcpdump -i any with libpcap 1.10)
)

var linkNames = map[LinkType]string{
	LinkNull: "BSD loopback", LinkEthernet: "Ethernet", LinkRawAlt: "raw IP", LinkRaw: "raw IP",
	LinkLoop: "OpenBSD loopback", LinkSLL: "Linux cooked v1", LinkIPv4: "raw IPv4",
	LinkIPv6: "raw IPv6", LinkSLL2: "Linux cooked v2",
}

func (l LinkType) String() string {
	if n, ok := linkNames[l]; ok {
		return fmt.Sprintf("%s (%d)", n, uint16(l))
	}
	return fmt.Sprintf("link type %d", uint16(l))
}

// Supported reports whether a Reader can find IP packets in frames of l.
func (l LinkType) Supported() bool {
	_, ok := linkNames[l]
	return ok
}

// supportedHint is what an unsupported link type's error suggests.
const supportedHint = "want Ethernet (1), Linux cooked v1 (113) or v2 (276), raw IP (101, 12, 228, 229) or loopback (0, 108)"

// FormatError is a file that is not a capture, or not a well-formed one:
// the file, the byte offset of what is wrong, and what is.
type FormatError struct {
	File   string
	Offset int64
	Err    error
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("%s: offset %d: %v", e.File, e.Offset, e.Err)
}

func (e *FormatError) Unwrap() error { return e.Err }

// Sentinels a FormatError wraps, for errors.Is.
var (
	// ErrNotCapture: the file starts with neither pcap's nor pcapng's magic.
	ErrNotCapture = errors.New("not a pcap or pcapng file")
	// ErrTruncated: the file ends inside a header or a record, as one
	// still being written, or cut short, does.
	ErrTruncated = errors.New("file ends inside a record")
	// ErrLinkType: a link type the Reader cannot find IP packets in.
	ErrLinkType = errors.New("unsupported link type")
	// ErrMalformed: a length or field no writer produces.
	ErrMalformed = errors.New("malformed")
)

// MaxRecordLen bounds a record's captured length (libpcap's own bound on
// a snap length): a larger claim is a corrupt file, not a packet.
const MaxRecordLen = 262144

// Record is one captured frame: its link type, capture time and lengths.
// Frame is valid until the Reader's next call.
type Record struct {
	Link    LinkType
	Time    int64 // nanoseconds since the Unix epoch
	Frame   []byte
	OrigLen int // on the wire; at least len(Frame)
}
