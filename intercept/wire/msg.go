package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"unicode/utf8"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

var be = binary.BigEndian

// appendFrameHeader appends the length prefix and type byte of a frame whose
// payload is n bytes long.
func appendFrameHeader(dst []byte, typ MsgType, n int) []byte {
	dst = be.AppendUint32(dst, uint32(1+n))
	return append(dst, byte(typ))
}

// truncate cuts s to at most n bytes, backing off to a rune boundary so a
// truncated UTF-8 string stays valid.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Hello opens a connection, one from each side.
type Hello struct {
	Version uint16
	Role    Role
	Caps    uint32   // capability bits (CapAuth)
	Nonce   [32]byte // fresh random challenge; the peer's Auth covers it
	Name    string   // for logs; at most MaxNameLen bytes
}

// AppendHello appends a Hello frame to dst. A name longer than MaxNameLen
// bytes is truncated (at a rune boundary).
func AppendHello(dst []byte, h *Hello) []byte {
	name := truncate(h.Name, MaxNameLen)
	dst = appendFrameHeader(dst, TypeHello, helloFixed+len(name))
	dst = append(dst, magic...)
	dst = be.AppendUint16(dst, h.Version)
	dst = append(dst, byte(h.Role))
	dst = be.AppendUint32(dst, h.Caps)
	dst = append(dst, h.Nonce[:]...)
	dst = append(dst, byte(len(name)))
	return append(dst, name...)
}

// ParseHello decodes a Hello payload. The magic and the version lead the
// hello in every version: a wrong magic gives ErrBadMagic. A hello of
// Version must match the layout above exactly, else ErrMalformed. A hello
// of any other version is accepted so that the caller can report the
// mismatch (and answer with CodeVersion): its remaining fields are filled
// in if they fit the layout above (trailing bytes ignored), else left zero.
// Role and Caps are not checked; that is the caller's policy.
func ParseHello(p []byte) (Hello, error) {
	h, name, err := parseHello(p)
	h.Name = string(name)
	return h, err
}

func parseHello(p []byte) (Hello, []byte, error) {
	if len(p) >= len(magic) && string(p[:len(magic)]) != magic {
		return Hello{}, nil, fmt.Errorf("hello: %w", ErrBadMagic)
	}
	if len(p) < len(magic)+2 {
		return Hello{}, nil, fmt.Errorf("hello: length %d: %w", len(p), ErrMalformed)
	}
	h := Hello{Version: be.Uint16(p[4:])}
	n := -1
	if len(p) >= helloFixed {
		n = int(p[helloFixed-1])
	}
	fits := n >= 0 && n <= MaxNameLen && helloFixed+n <= len(p)
	if h.Version == Version && !(fits && helloFixed+n == len(p)) {
		return Hello{}, nil, fmt.Errorf("hello: length %d, name length %d: %w", len(p), n, ErrMalformed)
	}
	if !fits {
		return h, nil, nil
	}
	h.Role = Role(p[6])
	h.Caps = be.Uint32(p[7:])
	copy(h.Nonce[:], p[11:43])
	return h, p[helloFixed : helloFixed+n], nil
}

// AppendAuth appends an Auth frame carrying mac (see ComputeMAC).
func AppendAuth(dst []byte, mac [32]byte) []byte {
	dst = appendFrameHeader(dst, TypeAuth, len(mac))
	return append(dst, mac[:]...)
}

// ParseAuth decodes an Auth payload.
func ParseAuth(p []byte) ([32]byte, error) {
	var mac [32]byte
	if len(p) != len(mac) {
		return mac, fmt.Errorf("auth: length %d: %w", len(p), ErrMalformed)
	}
	copy(mac[:], p)
	return mac, nil
}

const macLabel = "tcpshadow-auth-v1"

// ComputeMAC returns the MAC a side sends in its Auth:
//
//	HMAC-SHA256(secret, "tcpshadow-auth-v1" || role || peerNonce || ownNonce)
//
// where role is the sender's own role, peerNonce the nonce from the other
// side's Hello and ownNonce the one from the sender's Hello. Binding the
// role and the order of the nonces means a MAC cannot be reflected back to
// the side that sent it.
func ComputeMAC(secret []byte, role Role, peerNonce, ownNonce [32]byte) [32]byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(macLabel))
	m.Write([]byte{byte(role)})
	m.Write(peerNonce[:])
	m.Write(ownNonce[:])
	var out [32]byte
	m.Sum(out[:0])
	return out
}

// VerifyMAC reports, in constant time, whether mac equals
// ComputeMAC(secret, role, peerNonce, ownNonce). The arguments are the
// sender's view: the copier checking the agent's Auth calls
//
//	VerifyMAC(secret, RoleAgent, copierNonce, agentNonce, mac)
func VerifyMAC(secret []byte, role Role, peerNonce, ownNonce, mac [32]byte) bool {
	want := ComputeMAC(secret, role, peerNonce, ownNonce)
	return hmac.Equal(want[:], mac[:])
}

// AppendError appends an Error frame. A message longer than
// MaxErrorMsgLen bytes is truncated (at a rune boundary).
func AppendError(dst []byte, code ErrorCode, msg string) []byte {
	msg = truncate(msg, MaxErrorMsgLen)
	dst = appendFrameHeader(dst, TypeError, 4+len(msg))
	dst = be.AppendUint16(dst, uint16(code))
	dst = be.AppendUint16(dst, uint16(len(msg)))
	return append(dst, msg...)
}

// ParseError decodes an Error payload into a *PeerError, which the caller
// may return as its error. Unknown codes are kept.
func ParseError(p []byte) (*PeerError, error) {
	code, msg, err := parseError(p)
	if err != nil {
		return nil, err
	}
	return &PeerError{Code: code, Msg: string(msg)}, nil
}

func parseError(p []byte) (ErrorCode, []byte, error) {
	if len(p) < 4 {
		return 0, nil, fmt.Errorf("error: length %d: %w", len(p), ErrMalformed)
	}
	n := int(be.Uint16(p[2:]))
	if n > MaxErrorMsgLen || len(p) != 4+n {
		return 0, nil, fmt.Errorf("error: length %d, message length %d: %w", len(p), n, ErrMalformed)
	}
	return ErrorCode(be.Uint16(p)), p[4:], nil
}

// AppendPing appends a Ping frame; the peer echoes token in a Pong.
func AppendPing(dst []byte, token uint64) []byte {
	return be.AppendUint64(appendFrameHeader(dst, TypePing, 8), token)
}

// AppendPong appends a Pong frame.
func AppendPong(dst []byte, token uint64) []byte {
	return be.AppendUint64(appendFrameHeader(dst, TypePong, 8), token)
}

// ParsePing decodes a Ping payload.
func ParsePing(p []byte) (uint64, error) {
	if len(p) != 8 {
		return 0, fmt.Errorf("ping: length %d: %w", len(p), ErrMalformed)
	}
	return be.Uint64(p), nil
}

// ParsePong decodes a Pong payload.
func ParsePong(p []byte) (uint64, error) {
	if len(p) != 8 {
		return 0, fmt.Errorf("pong: length %d: %w", len(p), ErrMalformed)
	}
	return be.Uint64(p), nil
}

// v4InV6 is the prefix of an IPv4-mapped IPv6 address.
const v4InV6 = "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff"

func isV4Mapped(a []byte) bool { return string(a[:len(v4InV6)]) == v4InV6 }

// FlowOK reports whether t can be sent in a Register or Deregister frame:
// both its addresses are IPv4 (stored IPv4-mapped) or both are IPv6.
func FlowOK(t rewrite.Tuple) bool { return isV4Mapped(t.Src[:]) == isV4Mapped(t.Dst[:]) }

func appendFlow(dst []byte, t *rewrite.Tuple) []byte {
	dst = append(dst, t.Src[:]...)
	dst = be.AppendUint16(dst, t.SrcPort)
	dst = append(dst, t.Dst[:]...)
	return be.AppendUint16(dst, t.DstPort)
}

func readFlow(b []byte) rewrite.Tuple {
	var t rewrite.Tuple
	copy(t.Src[:], b[0:16])
	t.SrcPort = be.Uint16(b[16:])
	copy(t.Dst[:], b[18:34])
	t.DstPort = be.Uint16(b[34:])
	return t
}

// AppendFlows appends a Register or Deregister frame (typ) of flows, each
// a tuple in the copier→shadow direction: Src is the forged client
// endpoint, Dst the shadow endpoint.
//
// It panics, as for a programming error, if typ is neither TypeRegister
// nor TypeDeregister, if len(flows) is not within 1..MaxFlowsPerFrame, or
// if a flow fails FlowOK (the peer would reject the whole frame). Callers
// that cannot guarantee this use a FlowBatch, which reports instead.
func AppendFlows(dst []byte, typ MsgType, flows []rewrite.Tuple) []byte {
	if typ != TypeRegister && typ != TypeDeregister {
		panic("wire: AppendFlows with message type " + typ.String())
	}
	if len(flows) < 1 || len(flows) > MaxFlowsPerFrame {
		panic(fmt.Sprintf("wire: AppendFlows with %d flows, want 1..%d", len(flows), MaxFlowsPerFrame))
	}
	for i := range flows {
		if !FlowOK(flows[i]) {
			panic("wire: AppendFlows with mixed-family flow " + flows[i].String())
		}
	}
	dst = appendFrameHeader(dst, typ, countLen+len(flows)*FlowLen)
	dst = be.AppendUint16(dst, uint16(len(flows)))
	for i := range flows {
		dst = appendFlow(dst, &flows[i])
	}
	return dst
}

// checkFlows validates a whole Register or Deregister payload and returns
// its count.
func checkFlows(p []byte) (int, error) {
	if len(p) < countLen {
		return 0, fmt.Errorf("flows: length %d: %w", len(p), ErrMalformed)
	}
	n := int(be.Uint16(p))
	if n < 1 || n > MaxFlowsPerFrame {
		return 0, fmt.Errorf("flows: count %d: %w", n, ErrMalformed)
	}
	if len(p) != countLen+n*FlowLen {
		return 0, fmt.Errorf("flows: count %d, length %d: %w", n, len(p), ErrMalformed)
	}
	for i, off := 0, countLen; i < n; i, off = i+1, off+FlowLen {
		if isV4Mapped(p[off:]) != isV4Mapped(p[off+18:]) {
			return 0, fmt.Errorf("flows: flow %d mixes address families: %w", i, ErrMalformed)
		}
	}
	return n, nil
}

// ForEachFlow validates a whole Register or Deregister payload and then,
// only if it is entirely valid, calls fn for each flow in order. It returns
// the number of flows. It allocates nothing unless fn escapes.
func ForEachFlow(p []byte, fn func(rewrite.Tuple)) (int, error) {
	n, err := checkFlows(p)
	if err != nil {
		return 0, err
	}
	for off := countLen; off < len(p); off += FlowLen {
		fn(readFlow(p[off : off+FlowLen]))
	}
	return n, nil
}

// checkReplies validates a whole Replies payload and returns its count.
func checkReplies(p []byte) (int, error) {
	if len(p) < countLen {
		return 0, fmt.Errorf("replies: length %d: %w", len(p), ErrMalformed)
	}
	n := int(be.Uint16(p))
	if n < 1 || n > MaxRepliesPerFrame {
		return 0, fmt.Errorf("replies: count %d: %w", n, ErrMalformed)
	}
	off := countLen
	for i := 0; i < n; i++ {
		if len(p)-off < replyRecHdr {
			return 0, fmt.Errorf("replies: record %d of %d truncated: %w", i, n, ErrMalformed)
		}
		hl := int(be.Uint16(p[off+8:]))
		if hl < MinReplyHeader || hl > MaxReplyHeader {
			return 0, fmt.Errorf("replies: record %d: header length %d: %w", i, hl, ErrMalformed)
		}
		off += replyRecHdr + hl
		if off > len(p) {
			return 0, fmt.Errorf("replies: record %d of %d truncated: %w", i, n, ErrMalformed)
		}
	}
	if off != len(p) {
		return 0, fmt.Errorf("replies: %d bytes after %d records: %w", len(p)-off, n, ErrMalformed)
	}
	return n, nil
}

// ForEachReply validates a whole Replies payload and then, only if it is
// entirely valid, calls fn for each record in order with its capture time
// (unix nanoseconds) and its IP+TCP header. hdr aliases p, with its
// capacity cut to its length; copy it to keep it. It returns the number of
// records and allocates nothing unless fn escapes.
func ForEachReply(p []byte, fn func(ts int64, hdr []byte)) (int, error) {
	n, err := checkReplies(p)
	if err != nil {
		return 0, err
	}
	for off := countLen; off < len(p); {
		ts := int64(be.Uint64(p[off:]))
		end := off + replyRecHdr + int(be.Uint16(p[off+8:]))
		fn(ts, p[off+replyRecHdr:end:end])
		off = end
	}
	return n, nil
}
