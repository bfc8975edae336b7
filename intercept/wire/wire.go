// Package wire owns the byte format of the control channel between the copy
// daemon and the intercept agent: frames, messages, their limits, and the
// per-frame authentication of a session. It encodes, decodes, seals and
// opens, and nothing else: no sockets, no goroutines, no policy (which
// versions, roles, capabilities, pools or peers to accept is decided by the
// caller).
//
// Every frame is
//
//	u32 L          length of what follows (type byte + payload [+ tag]), 1 ≤ L ≤ the reader's limit
//	u8  type       MsgType
//	[..] payload
//	[16] tag       sealed sessions only (Sealer, Opener)
//
// with all integers big-endian. The payloads are (version 4)
//
//	Hello       "TSHD" | version u16 | role u8 | caps u32 | nonce [32] | name len u8 (≤ 64) | name
//	            | flow idle ms u32 | reply prefix u16 | pool count u8 (≤ MaxPools) | count × pool
//	            | h2 port count u8 (≤ MaxH2Ports) | count × port u16
//	  pool      family u8 (4 or 6) | bits u8 | addr [16] (IPv4 in the first 4, zeros after) | slot u16 | slots u16
//	Auth        mac [32] (ComputeMAC) | name len u8 (≤ 64) | name
//	Error       code u16 | msg len u16 (≤ 1024) | msg
//	Register,
//	Deregister  count u16 (1..MaxFlowsPerFrame) | count × (src addr [16] | src port u16 | dst addr [16] | dst port u16)
//	Replies     count u16 (1..MaxRepliesPerFrame) | count × (ts i64 | len u16 (MinReplyHeader..MaxReplyLen) | reply [len])
//	  reply     the reply's IP and TCP headers, then the first bytes of its TCP payload:
//	            as many as it has, up to the copier's reply prefix (none when 0);
//	            (from one of the copier's HTTP/2 ports, its frame records: H2 records, below)
//	Ping, Pong  token u64
//
// A reply record does not say where its headers end: the IP and TCP
// headers' own lengths do (rewrite.Packet.DecodeHeader), and the IP header
// keeps the payload length the shadow sent, so a receiver knows how much
// of the payload it was not sent. The reply prefix is a copier's to ask
// for (Hello.ReplyPrefix) and the agent's to refuse above MaxReplyPrefix.
//
// H2 records: for replies from a source port the copier named in
// Hello.H2Ports, the agent walks the HTTP/2 frames of the flow's whole
// payloads and relays, in place of the payload prefix, one record per
// HEADERS or RST_STREAM frame that ends in the reply, each a frame the
// copier's classifiers read (compare.H2StatusFrame): a 9-byte frame header
// on the frame's stream, then the :status alone (a RST_STREAM frame for a
// reset). As many whole records as fit MaxReplyPrefix, whatever prefix
// was asked for (the rest are counted by the agent); a flow whose walk
// lost sync (a gap in the capture) relays from then on a lost record
// alone (compare.H2LostRecord: a bodiless GOAWAY on stream 0); a flow whose
// reply does not begin like HTTP/2 (a SETTINGS frame) is relayed as any.
// Records are read after the TCP header up to the reply record's end: they
// may run past the payload length the IP header keeps (a frame's record
// is relayed with the segment it ends in, which may hold its last byte
// only).
//
// A connection opens with a Hello from each side; the magic and the version
// lead the Hello in every version, so a peer of another version is told so
// (CodeVersion) by both sides. While the handshake runs a reader takes
// frames of at most MaxHandshakeFrameLen bytes (NewHandshakeReader); only
// then does it grow to MaxFrameLen (Reader.Resize).
//
// When either side sets CapAuth, the copier sends an Auth over the
// transcript of both hellos (Transcript, which also binds a TLS channel's
// exported keying material), the agent checks it and only then answers
// with its own, carrying its name: the shared secret never crosses the
// wire, and the agent tells nothing about itself to a peer that has not
// proved the secret. On plain TCP every later frame, in both directions, is
// then sealed: SessionKeys derives one AES-256-GCM key per direction from
// the secret and the transcript, the nonce is the frame's index in its
// direction (never on the wire), and the tag covers the type byte and the
// payload. A frame that fails to open is reported (ErrBadMAC) and skipped:
// an injected frame costs the receiver nothing but a count. Under TLS the
// record layer already authenticates every byte, so frames are not sealed.
//
// Reader splits a stream into frames without allocating; the Parse and
// ForEach functions decode one payload; the Append functions and the
// ReplyBatch and FlowBatch types encode whole frames into caller-owned
// buffers. Payloads and headers handed out alias the buffer they were read
// from: copy them to keep them.
package wire

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

const (
	// Version is the protocol version sent in Hello. Version 2 added the
	// announced pools and flow idle time to Hello, the name to Auth, the
	// transcript binding and per-frame sealing; version 3 the reply
	// prefix in Hello and the payload bytes after each relayed header;
	// version 4 the HTTP/2 ports in Hello and their frame records.
	Version = 4
	// DefaultPort is the agent's default listening port (the old tool's).
	DefaultPort = 36524
	// MaxFrameLen bounds L, the length of type byte plus payload.
	MaxFrameLen = 1 << 20
	// MaxFlowsPerFrame bounds the count of a Register or Deregister frame.
	MaxFlowsPerFrame = 4096
	// MaxRepliesPerFrame bounds the count of a Replies frame.
	MaxRepliesPerFrame = 1024
	// MinReplyHeader and MaxReplyHeader bound a relayed reply header (IP
	// header + TCP header with options): at least a bare IPv4 and TCP
	// header (20+20), at most an IPv4 header with options and a TCP header
	// with options (60+60). An IPv6 header with a full TCP header takes
	// 100; IPv6 extension headers may not fit.
	MinReplyHeader = rewrite.IPv4MinHeaderLen + rewrite.TCPMinHeaderLen
	MaxReplyHeader = rewrite.MaxHeadersLen
	// MaxReplyPrefix bounds the payload bytes a copier may ask to have
	// relayed after each reply's headers (Hello.ReplyPrefix): enough for
	// a status line, a Redis reply's type, a PostgreSQL ErrorResponse's
	// SQLSTATE, while a batch of replies stays a few hundred KiB.
	MaxReplyPrefix = 256
	// MaxReplyLen bounds a reply record's length: its headers and its
	// prefix of payload.
	MaxReplyLen = MaxReplyHeader + MaxReplyPrefix
	// FlowLen is the encoded size of one flow.
	FlowLen = 36
	// MaxNameLen bounds Hello.Name; longer names are truncated on encoding.
	MaxNameLen = 64
	// MaxErrorMsgLen bounds an Error message; longer ones are truncated on
	// encoding.
	MaxErrorMsgLen = 1024
	// MaxPools bounds the pools a Hello announces.
	MaxPools = 8
	// MaxH2Ports bounds the HTTP/2 ports a Hello names.
	MaxH2Ports = 16
	// TagLen is the length of a sealed frame's tag.
	TagLen = 16
	// MaxHandshakeFrameLen bounds L while the handshake runs: the largest
	// Hello, Auth or Error.
	MaxHandshakeFrameLen = 1 + max(helloMax, authMax, errorMax)
)

const (
	lenPrefix   = 4                      // u32 L
	frameHeader = lenPrefix + 1          // L and type
	countLen    = 2                      // u16 count of Register, Deregister, Replies
	replyRecHdr = 8 + 2                  // ts and len before each reply
	helloFixed  = 4 + 2 + 1 + 4 + 32 + 1 // magic to name length: every version's prefix
	helloTail   = 4 + 2 + 1              // flow idle ms, reply prefix and pool count
	poolLen     = 1 + 1 + 16 + 2 + 2
	helloMax    = helloFixed + MaxNameLen + helloTail + MaxPools*poolLen + 1 + 2*MaxH2Ports
	authMax     = 32 + 1 + MaxNameLen
	errorMax    = 4 + MaxErrorMsgLen
	magic       = "TSHD"
)

// Both batch kinds fit a frame at their maximum count, so the count is the
// only limit a sender meets in practice (these fail to compile otherwise).
const (
	_ = uint(MaxFrameLen - 1 - countLen - MaxFlowsPerFrame*FlowLen - TagLen)
	_ = uint(MaxFrameLen - 1 - countLen - MaxRepliesPerFrame*(replyRecHdr+MaxReplyLen) - TagLen)
)

// Errors returned by Reader and the parsers, wrapped with context; test
// them with errors.Is.
var (
	ErrFrameTooLarge = errors.New("frame too large")
	ErrMalformed     = errors.New("malformed message")
	ErrBadMagic      = errors.New("bad hello magic")
	ErrUnknownType   = errors.New("unknown message type")
	// ErrBadMAC is returned by a sealed Reader for a frame whose tag does
	// not verify. Unlike the others it is not sticky: the frame is
	// skipped and the next one can be read.
	ErrBadMAC = errors.New("frame authentication failed")
)

// MsgType is the type byte of a frame.
type MsgType uint8

const (
	TypeHello      MsgType = 1
	TypeAuth       MsgType = 2
	TypeError      MsgType = 3
	TypeRegister   MsgType = 4
	TypeDeregister MsgType = 5
	TypeReplies    MsgType = 6
	TypePing       MsgType = 7
	TypePong       MsgType = 8
)

var typeNames = [...]string{
	TypeHello:      "hello",
	TypeAuth:       "auth",
	TypeError:      "error",
	TypeRegister:   "register",
	TypeDeregister: "deregister",
	TypeReplies:    "replies",
	TypePing:       "ping",
	TypePong:       "pong",
}

// Known reports whether t is a message type of this version.
func (t MsgType) Known() bool { return t >= TypeHello && t <= TypePong }

func (t MsgType) String() string {
	if t.Known() {
		return typeNames[t]
	}
	return "type(" + strconv.Itoa(int(t)) + ")"
}

// Role says which end of the channel a Hello comes from.
type Role uint8

const (
	RoleCopier Role = 1
	RoleAgent  Role = 2
)

func (r Role) String() string {
	switch r {
	case RoleCopier:
		return "copier"
	case RoleAgent:
		return "agent"
	}
	return "role(" + strconv.Itoa(int(r)) + ")"
}

// Capability bits of Hello.Caps. Unknown bits are carried, not rejected.
const (
	// CapAuth means "this peer requires authentication": both sides must
	// then exchange Auth messages before anything else.
	CapAuth uint32 = 1 << 0
)

// ErrorCode classifies an Error message.
type ErrorCode uint16

const (
	CodeVersion    ErrorCode = 1 // unsupported protocol version
	CodeAuth       ErrorCode = 2 // authentication missing or failed
	CodeNotAllowed ErrorCode = 3 // the peer may not do what it asked
	CodeProtocol   ErrorCode = 4 // malformed or unexpected message
	CodeOverload   ErrorCode = 5 // the sender is shedding load
)

func (c ErrorCode) String() string {
	switch c {
	case CodeVersion:
		return "version"
	case CodeAuth:
		return "auth"
	case CodeNotAllowed:
		return "not allowed"
	case CodeProtocol:
		return "protocol"
	case CodeOverload:
		return "overload"
	}
	return "code(" + strconv.Itoa(int(c)) + ")"
}

// PeerError is an Error message received from the peer.
type PeerError struct {
	Code ErrorCode
	Msg  string
}

func (e *PeerError) Error() string {
	return "peer error: " + e.Code.String() + ": " + e.Msg
}

// Validate checks that p is a well-formed payload of type typ, without
// allocating when it is. An unknown type gives ErrUnknownType. A Hello of
// another version is valid (see ParseHello).
func Validate(typ MsgType, p []byte) error {
	var err error
	switch typ {
	case TypeHello:
		_, err = checkHello(p)
	case TypeAuth:
		_, _, err = parseAuth(p)
	case TypeError:
		_, _, err = parseError(p)
	case TypeRegister, TypeDeregister:
		_, err = checkFlows(p)
	case TypeReplies:
		_, err = checkReplies(p)
	case TypePing:
		_, err = ParsePing(p)
	case TypePong:
		_, err = ParsePong(p)
	default:
		err = fmt.Errorf("%v: %w", typ, ErrUnknownType)
	}
	return err
}
