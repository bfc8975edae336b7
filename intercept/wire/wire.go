// Package wire owns the byte format of the control channel between the copy
// daemon and the intercept agent: frames, messages and their limits. It
// encodes and decodes, and nothing else: no sockets, no goroutines, no
// policy (which versions, roles, capabilities or peers to accept is decided
// by the caller).
//
// Every frame is
//
//	u32 L          length of what follows (type byte + payload), 1 ≤ L ≤ MaxFrameLen
//	u8  type       MsgType
//	[L-1] payload
//
// with all integers big-endian. The payloads are
//
//	Hello       "TSHD" | version u16 | role u8 | caps u32 | nonce [32] | name len u8 (≤ 64) | name
//	Auth        mac [32]  (ComputeMAC)
//	Error       code u16 | msg len u16 (≤ 1024) | msg
//	Register,
//	Deregister  count u16 (1..MaxFlowsPerFrame) | count × (src addr [16] | src port u16 | dst addr [16] | dst port u16)
//	Replies     count u16 (1..MaxRepliesPerFrame) | count × (ts i64 | hlen u16 (MinReplyHeader..MaxReplyHeader) | header [hlen])
//	Ping, Pong  token u64
//
// A connection opens with a Hello from each side. When either side sets
// CapAuth, each side then sends an Auth computed over the other side's
// nonce, so the shared secret never crosses the wire.
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
	// Version is the protocol version sent in Hello.
	Version = 1
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
	// FlowLen is the encoded size of one flow.
	FlowLen = 36
	// MaxNameLen bounds Hello.Name; longer names are truncated on encoding.
	MaxNameLen = 64
	// MaxErrorMsgLen bounds an Error message; longer ones are truncated on
	// encoding.
	MaxErrorMsgLen = 1024
)

const (
	lenPrefix   = 4             // u32 L
	frameHeader = lenPrefix + 1 // L and type
	countLen    = 2             // u16 count of Register, Deregister, Replies
	replyRecHdr = 8 + 2         // ts and hlen before each reply header
	helloFixed  = 4 + 2 + 1 + 4 + 32 + 1
	magic       = "TSHD"
)

// Both batch kinds fit a frame at their maximum count, so the count is the
// only limit a sender meets in practice (these fail to compile otherwise).
const (
	_ = uint(MaxFrameLen - 1 - countLen - MaxFlowsPerFrame*FlowLen)
	_ = uint(MaxFrameLen - 1 - countLen - MaxRepliesPerFrame*(replyRecHdr+MaxReplyHeader))
)

// Errors returned by Reader and the parsers, wrapped with context; test
// them with errors.Is.
var (
	ErrFrameTooLarge = errors.New("frame too large")
	ErrMalformed     = errors.New("malformed message")
	ErrBadMagic      = errors.New("bad hello magic")
	ErrUnknownType   = errors.New("unknown message type")
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
		_, _, err = parseHello(p)
	case TypeAuth:
		_, err = ParseAuth(p)
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
