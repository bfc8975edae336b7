package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"time"
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
	Nonce   [32]byte // fresh random challenge; the transcript covers it
	Name    string   // for logs; at most MaxNameLen bytes
	// FlowIdle is, from a copier, the longest one of its flows goes
	// without a reply while it lives: the agent forgets flows idle for
	// longer (twice as long). Encoded in milliseconds; 0: not announced.
	FlowIdle time.Duration
	// ReplyPrefix is, from a copier, how many bytes of each reply's TCP
	// payload it wants relayed after the reply's headers (as many as the
	// reply has, up to this); 0: the headers alone. The agent refuses a
	// hello asking for more than MaxReplyPrefix; an agent's own says 0.
	ReplyPrefix uint16
	// Pools are, from a copier, the client pools it forges addresses
	// from: the agent refuses registrations outside them.
	Pools []Pool
	// H2Ports are, from a copier, the shadow ports it compares as
	// HTTP/2: replies from them carry H2 records instead of a payload
	// prefix. Ports beyond MaxH2Ports, and 0, are left out on encoding.
	H2Ports []uint16
}

// Pool is one announced client pool: Prefix, of which the copier uses only
// the host offsets congruent to Slot modulo Slots (rewrite.Pool's slots).
type Pool struct {
	Prefix      netip.Prefix // masked
	Slot, Slots uint16       // 0 ≤ Slot < Slots
}

// Contains reports whether a lies in the pool's prefix.
func (p Pool) Contains(a netip.Addr) bool { return p.Prefix.Contains(a.Unmap()) }

func (p Pool) String() string {
	if p.Slots <= 1 {
		return p.Prefix.String()
	}
	return p.Prefix.String() + " slot " + strconv.Itoa(int(p.Slot)) + "/" + strconv.Itoa(int(p.Slots))
}

// maxFlowIdleMs is the largest FlowIdle a Hello carries.
const maxFlowIdleMs = 1<<32 - 1

// AppendHello appends a Hello frame to dst. A name longer than MaxNameLen
// bytes is truncated (at a rune boundary), FlowIdle saturates at 2^32-1
// ms, and pools beyond MaxPools, or not valid (an invalid prefix, Slot ≥
// Slots), are left out. An empty Slots is sent as 1.
func AppendHello(dst []byte, h *Hello) []byte {
	name := truncate(h.Name, MaxNameLen)
	pools := 0
	for _, p := range h.Pools {
		if poolOK(p) && pools < MaxPools {
			pools++
		}
	}
	ports := 0
	for _, p := range h.H2Ports {
		if p != 0 && ports < MaxH2Ports {
			ports++
		}
	}
	dst = appendFrameHeader(dst, TypeHello, helloFixed+len(name)+helloTail+pools*poolLen+1+2*ports)
	dst = append(dst, magic...)
	dst = be.AppendUint16(dst, h.Version)
	dst = append(dst, byte(h.Role))
	dst = be.AppendUint32(dst, h.Caps)
	dst = append(dst, h.Nonce[:]...)
	dst = append(dst, byte(len(name)))
	dst = append(dst, name...)
	ms := min(max(h.FlowIdle.Milliseconds(), 0), maxFlowIdleMs)
	dst = be.AppendUint32(dst, uint32(ms))
	dst = be.AppendUint16(dst, h.ReplyPrefix)
	dst = append(dst, byte(pools))
	for _, p := range h.Pools {
		if pools == 0 {
			break
		}
		if !poolOK(p) {
			continue
		}
		pools--
		dst = appendPool(dst, p)
	}
	dst = append(dst, byte(ports))
	for _, p := range h.H2Ports {
		if ports == 0 {
			break
		}
		if p != 0 {
			ports--
			dst = be.AppendUint16(dst, p)
		}
	}
	return dst
}

func poolOK(p Pool) bool {
	slots := max(p.Slots, 1)
	return p.Prefix.IsValid() && !p.Prefix.Addr().Is4In6() && p.Slot < slots
}

func appendPool(dst []byte, p Pool) []byte {
	pfx := p.Prefix.Masked()
	var addr [16]byte
	fam := byte(6)
	if pfx.Addr().Is4() {
		fam = 4
		a4 := pfx.Addr().As4()
		copy(addr[:], a4[:])
	} else {
		addr = pfx.Addr().As16()
	}
	dst = append(dst, fam, byte(pfx.Bits()))
	dst = append(dst, addr[:]...)
	dst = be.AppendUint16(dst, p.Slot)
	return be.AppendUint16(dst, max(p.Slots, 1))
}

// readPool decodes one pool record; ok is false if it is not canonical
// (family, prefix length, bytes past an IPv4 address, host bits set, slot).
func readPool(b []byte) (Pool, bool) {
	fam, bits := b[0], int(b[1])
	var a netip.Addr
	switch fam {
	case 4:
		if bits > 32 || string(b[6:18]) != "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" {
			return Pool{}, false
		}
		a = netip.AddrFrom4([4]byte(b[2:6]))
	case 6:
		if bits > 128 {
			return Pool{}, false
		}
		a = netip.AddrFrom16([16]byte(b[2:18]))
	default:
		return Pool{}, false
	}
	pfx := netip.PrefixFrom(a, bits)
	slot, slots := be.Uint16(b[18:]), be.Uint16(b[20:])
	if pfx.Masked().Addr() != a || slots == 0 || slot >= slots {
		return Pool{}, false
	}
	return Pool{Prefix: pfx, Slot: slot, Slots: slots}, true
}

// ParseHello decodes a Hello payload. The magic and the version lead the
// hello in every version: a wrong magic gives ErrBadMagic. A hello of
// Version must match the layout above exactly, else ErrMalformed. A hello
// of any other version is accepted so that the caller can report the
// mismatch (and answer with CodeVersion): its fields up to the name are
// filled in if they fit the layout above (the rest ignored), else left
// zero. Role, Caps, ReplyPrefix and Pools are not checked against
// anything; that is the caller's policy.
func ParseHello(p []byte) (Hello, error) {
	n, err := checkHello(p)
	if err != nil || n < 0 {
		h := Hello{}
		if len(p) >= len(magic)+2 && err == nil {
			h.Version = be.Uint16(p[4:])
		}
		return h, err
	}
	h := Hello{Version: be.Uint16(p[4:]), Role: Role(p[6]), Caps: be.Uint32(p[7:])}
	copy(h.Nonce[:], p[11:43])
	h.Name = string(p[helloFixed : helloFixed+n])
	if h.Version != Version {
		return h, nil
	}
	off := helloFixed + n
	h.FlowIdle = time.Duration(be.Uint32(p[off:])) * time.Millisecond
	h.ReplyPrefix = be.Uint16(p[off+4:])
	count := int(p[off+helloTail-1])
	if count > 0 {
		h.Pools = make([]Pool, 0, count)
	}
	off += helloTail
	for range count {
		pl, _ := readPool(p[off : off+poolLen])
		h.Pools = append(h.Pools, pl)
		off += poolLen
	}
	if ports := int(p[off]); ports > 0 {
		h.H2Ports = make([]uint16, ports)
		for i := range h.H2Ports {
			h.H2Ports[i] = be.Uint16(p[off+1+2*i:])
		}
	}
	return h, nil
}

// checkHello validates a Hello payload without allocating and returns the
// length of its name, or -1 for a hello of another version whose fields do
// not fit the common prefix.
func checkHello(p []byte) (int, error) {
	if len(p) >= len(magic) && string(p[:len(magic)]) != magic {
		return 0, fmt.Errorf("hello: %w", ErrBadMagic)
	}
	if len(p) < len(magic)+2 {
		return 0, fmt.Errorf("hello: length %d: %w", len(p), ErrMalformed)
	}
	version := be.Uint16(p[4:])
	n := -1
	if len(p) >= helloFixed {
		n = int(p[helloFixed-1])
	}
	fits := n >= 0 && n <= MaxNameLen && helloFixed+n <= len(p)
	if version != Version {
		if !fits {
			return -1, nil
		}
		return n, nil
	}
	if !fits || len(p) < helloFixed+n+helloTail {
		return 0, fmt.Errorf("hello: length %d, name length %d: %w", len(p), n, ErrMalformed)
	}
	off := helloFixed + n
	count := int(p[off+helloTail-1])
	portsAt := off + helloTail + count*poolLen
	if count > MaxPools || len(p) <= portsAt {
		return 0, fmt.Errorf("hello: length %d, %d pools: %w", len(p), count, ErrMalformed)
	}
	if ports := int(p[portsAt]); ports > MaxH2Ports || len(p) != portsAt+1+2*ports {
		return 0, fmt.Errorf("hello: length %d, %d HTTP/2 ports: %w", len(p), ports, ErrMalformed)
	}
	for i := portsAt + 1; i < len(p); i += 2 {
		if be.Uint16(p[i:]) == 0 {
			return 0, fmt.Errorf("hello: HTTP/2 port 0: %w", ErrMalformed)
		}
	}
	for i, o := 0, off+helloTail; i < count; i, o = i+1, o+poolLen {
		if _, ok := readPool(p[o : o+poolLen]); !ok {
			return 0, fmt.Errorf("hello: pool %d: %w", i, ErrMalformed)
		}
	}
	return n, nil
}

// AppendAuth appends an Auth frame carrying mac (see ComputeMAC) and the
// sender's name (truncated to MaxNameLen bytes, at a rune boundary; the
// agent sends its name here rather than in its Hello).
func AppendAuth(dst []byte, mac [32]byte, name string) []byte {
	name = truncate(name, MaxNameLen)
	dst = appendFrameHeader(dst, TypeAuth, len(mac)+1+len(name))
	dst = append(dst, mac[:]...)
	dst = append(dst, byte(len(name)))
	return append(dst, name...)
}

// Auth is a decoded Auth payload.
type Auth struct {
	MAC  [32]byte
	Name string
}

// ParseAuth decodes an Auth payload.
func ParseAuth(p []byte) (Auth, error) {
	mac, name, err := parseAuth(p)
	return Auth{MAC: mac, Name: string(name)}, err
}

func parseAuth(p []byte) ([32]byte, []byte, error) {
	var mac [32]byte
	if len(p) < len(mac)+1 || int(p[len(mac)]) > MaxNameLen || len(p) != len(mac)+1+int(p[len(mac)]) {
		return mac, nil, fmt.Errorf("auth: length %d: %w", len(p), ErrMalformed)
	}
	copy(mac[:], p)
	return mac, p[len(mac)+1:], nil
}

// The labels name the authentication scheme, which version 2 introduced
// and version 3 keeps: the version itself is bound by the transcript,
// which covers both hellos.
const (
	macLabel        = "tcpshadow-auth-v2"
	transcriptLabel = "tcpshadow-transcript-v2"
)

// Transcript returns what binds a handshake's Auths and session keys to
// its connection:
//
//	SHA-256("tcpshadow-transcript-v2" || u16 len || copier's Hello payload
//	        || u16 len || agent's Hello payload || u8 len || channel)
//
// where channel is the TLS connection's exported keying material (empty on
// plain TCP): both nonces, names, pools and capabilities are covered, and
// under TLS an Auth cannot be relayed from one TLS session into another.
func Transcript(copierHello, agentHello, channel []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(transcriptLabel))
	for _, b := range [][]byte{copierHello, agentHello} {
		h.Write(be.AppendUint16(nil, uint16(len(b))))
		h.Write(b)
	}
	h.Write([]byte{byte(len(channel))})
	h.Write(channel)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// ComputeMAC returns the MAC a side sends in its Auth:
//
//	HMAC-SHA256(secret, "tcpshadow-auth-v2" || role || transcript || u8 len || name)
//
// where role is the sender's own role and name the one its Auth carries.
// Binding the role means a MAC cannot be reflected back to the side that
// sent it; binding the transcript, that it cannot be replayed on another
// connection.
func ComputeMAC(secret []byte, role Role, transcript [32]byte, name string) [32]byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(macLabel))
	m.Write([]byte{byte(role)})
	m.Write(transcript[:])
	m.Write([]byte{byte(len(name))})
	m.Write([]byte(name))
	var out [32]byte
	m.Sum(out[:0])
	return out
}

// VerifyMAC reports, in constant time, whether mac equals
// ComputeMAC(secret, role, transcript, name), role being the sender's.
func VerifyMAC(secret []byte, role Role, transcript [32]byte, name string, mac [32]byte) bool {
	want := ComputeMAC(secret, role, transcript, name)
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
		if hl < MinReplyHeader || hl > MaxReplyLen {
			return 0, fmt.Errorf("replies: record %d: length %d: %w", i, hl, ErrMalformed)
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
// (unix nanoseconds) and the reply: its IP and TCP headers, followed by
// the first bytes of its payload when the copier asked for a prefix.
// reply aliases p, with its capacity cut to its length; copy it to keep
// it. It returns the number of records and allocates nothing unless fn
// escapes.
func ForEachReply(p []byte, fn func(ts int64, reply []byte)) (int, error) {
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
