package wire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// Test values.
var (
	flow4 = rewrite.TupleOf(netip.MustParseAddrPort("10.1.2.3:40000"), netip.MustParseAddrPort("192.0.2.7:80"))
	flow6 = rewrite.TupleOf(netip.MustParseAddrPort("[2001:db8::1]:51000"), netip.MustParseAddrPort("[2001:db8:1::7]:443"))
	// An IPv6 address whose last 4 bytes look like IPv4 but is not mapped.
	flow6b = rewrite.TupleOf(netip.MustParseAddrPort("[::1.2.3.4]:1"), netip.MustParseAddrPort("[::ffff:0:0:1]:2"))
	mixed  = rewrite.TupleOf(netip.MustParseAddrPort("10.1.2.3:40000"), netip.MustParseAddrPort("[2001:db8::7]:80"))
)

// Test pools.
var (
	pool4 = Pool{Prefix: netip.MustParsePrefix("198.19.0.0/16"), Slot: 1, Slots: 2}
	pool6 = Pool{Prefix: netip.MustParsePrefix("2001:2:0:ff::/64"), Slots: 1}
)

func maxPools() []Pool {
	var ps []Pool
	for i := range MaxPools {
		ps = append(ps, Pool{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16), Slot: uint16(i), Slots: 0xffff})
	}
	return ps
}

// testHeader returns n deterministic bytes standing in for a reply header.
func testHeader(n int, seed byte) []byte {
	h := make([]byte, n)
	for i := range h {
		h[i] = byte(i)*7 + seed
	}
	return h
}

func nonce(start byte) (n [32]byte) {
	for i := range n {
		n[i] = start + byte(i)
	}
	return n
}

// reply is a decoded Replies record in comparable form.
type reply struct {
	TS  int64
	Hdr string
}

// parse decodes p with the parser matching typ into a comparable value.
func parse(typ MsgType, p []byte) (any, error) {
	switch typ {
	case TypeHello:
		return ParseHello(p)
	case TypeAuth:
		return ParseAuth(p)
	case TypeError:
		return ParseError(p)
	case TypeRegister, TypeDeregister:
		var fs []rewrite.Tuple
		n, err := ForEachFlow(p, func(t rewrite.Tuple) { fs = append(fs, t) })
		if err == nil && n != len(fs) {
			return nil, fmt.Errorf("ForEachFlow returned %d, called fn %d times", n, len(fs))
		}
		if err != nil && len(fs) != 0 {
			return nil, fmt.Errorf("ForEachFlow called fn %d times before failing: %v", len(fs), err)
		}
		return fs, err
	case TypeReplies:
		var rs []reply
		n, err := ForEachReply(p, func(ts int64, hdr []byte) { rs = append(rs, reply{ts, string(hdr)}) })
		if err == nil && n != len(rs) {
			return nil, fmt.Errorf("ForEachReply returned %d, called fn %d times", n, len(rs))
		}
		if err != nil && len(rs) != 0 {
			return nil, fmt.Errorf("ForEachReply called fn %d times before failing: %v", len(rs), err)
		}
		return rs, err
	case TypePing:
		return ParsePing(p)
	case TypePong:
		return ParsePong(p)
	}
	return nil, Validate(typ, p)
}

// encode is the inverse of parse: it returns a whole frame.
func encode(tb testing.TB, typ MsgType, v any) []byte {
	tb.Helper()
	switch typ {
	case TypeHello:
		h := v.(Hello)
		return AppendHello(nil, &h)
	case TypeAuth:
		a := v.(Auth)
		return AppendAuth(nil, a.MAC, a.Name)
	case TypeError:
		e := v.(*PeerError)
		return AppendError(nil, e.Code, e.Msg)
	case TypeRegister, TypeDeregister:
		return AppendFlows(nil, typ, v.([]rewrite.Tuple))
	case TypeReplies:
		var b ReplyBatch
		for _, r := range v.([]reply) {
			if !b.Add(r.TS, []byte(r.Hdr)) {
				tb.Fatalf("ReplyBatch.Add refused record %d", b.Len())
			}
		}
		return b.Frame()
	case TypePing:
		return AppendPing(nil, v.(uint64))
	case TypePong:
		return AppendPong(nil, v.(uint64))
	}
	tb.Fatalf("encode: no encoder for %v", typ)
	return nil
}

// readOne reads exactly one frame from frame and checks nothing follows.
func readOne(tb testing.TB, frame []byte) (MsgType, []byte) {
	tb.Helper()
	r := NewReader(bytes.NewReader(frame))
	typ, p, err := r.Next()
	if err != nil {
		tb.Fatalf("Next: %v", err)
	}
	p = bytes.Clone(p)
	if _, _, err := r.Next(); err != io.EOF {
		tb.Fatalf("second Next: %v, want EOF", err)
	}
	return typ, p
}

type sample struct {
	name string
	typ  MsgType
	val  any
}

func samples() []sample {
	var maxReplies, mixedReplies []reply
	for i := range MaxRepliesPerFrame {
		maxReplies = append(maxReplies, reply{int64(i) << 20, string(testHeader(MaxReplyLen, byte(i)))})
		mixedReplies = append(mixedReplies, reply{-int64(i), string(testHeader(MinReplyHeader+i%(MaxReplyLen-MinReplyHeader+1), byte(i)))})
	}
	var maxFlows []rewrite.Tuple
	for i := range MaxFlowsPerFrame {
		t := flow4
		if i%2 == 1 {
			t = flow6
		}
		t.SrcPort = uint16(i)
		maxFlows = append(maxFlows, t)
	}
	return []sample{
		{"hello copier", TypeHello, Hello{Version: Version, Role: RoleCopier, Caps: CapAuth, Nonce: nonce(1), Name: "prod-1",
			FlowIdle: 150 * time.Second, ReplyPrefix: 64, Pools: []Pool{pool4, pool6}}},
		{"hello copier max prefix", TypeHello, Hello{Version: Version, Role: RoleCopier, ReplyPrefix: MaxReplyPrefix}},
		{"hello copier h2 ports", TypeHello, Hello{Version: Version, Role: RoleCopier, ReplyPrefix: 64, H2Ports: []uint16{80, 8080}}},
		// The wire carries any prefix; refusing one is the agent's policy.
		{"hello copier prefix beyond max", TypeHello, Hello{Version: Version, Role: RoleCopier, ReplyPrefix: 0xffff}},
		{"hello agent empty name", TypeHello, Hello{Version: Version, Role: RoleAgent, Nonce: nonce(100)}},
		{"hello max name", TypeHello, Hello{Version: Version, Role: RoleAgent, Caps: 0xffffffff, Name: strings.Repeat("n", MaxNameLen)}},
		{"hello max pools", TypeHello, Hello{Version: Version, Role: RoleCopier, FlowIdle: maxFlowIdleMs * time.Millisecond, Pools: maxPools()}},
		{"hello other version", TypeHello, Hello{Version: 7, Role: RoleCopier, Name: "future"}},
		{"auth", TypeAuth, Auth{MAC: nonce(9)}},
		{"auth with name", TypeAuth, Auth{MAC: nonce(3), Name: strings.Repeat("a", MaxNameLen)}},
		{"error", TypeError, &PeerError{Code: CodeNotAllowed, Msg: "flow 10.1.2.3:4->192.0.2.7:80 not in port map"}},
		{"error empty", TypeError, &PeerError{Code: CodeOverload}},
		{"error max", TypeError, &PeerError{Code: CodeProtocol, Msg: strings.Repeat("x", MaxErrorMsgLen)}},
		{"error unknown code", TypeError, &PeerError{Code: 999, Msg: "?"}},
		{"register v4", TypeRegister, []rewrite.Tuple{flow4}},
		{"register v6", TypeRegister, []rewrite.Tuple{flow6, flow6b}},
		{"deregister mixed families", TypeDeregister, []rewrite.Tuple{flow4, flow6, flow6b, flow4.Reverse()}},
		{"register max", TypeRegister, maxFlows},
		{"replies min header", TypeReplies, []reply{{1, string(testHeader(MinReplyHeader, 1))}}},
		{"replies max header", TypeReplies, []reply{{-1, string(testHeader(MaxReplyHeader, 2))}}},
		{"replies max header and prefix", TypeReplies, []reply{{-1, string(testHeader(MaxReplyLen, 3))}}},
		{"replies max count", TypeReplies, maxReplies},
		{"replies all lengths", TypeReplies, mixedReplies},
		{"ping", TypePing, uint64(0x0102030405060708)},
		{"ping zero", TypePing, uint64(0)},
		{"pong", TypePong, ^uint64(0)},
	}
}

func TestRoundTrip(t *testing.T) {
	for _, s := range samples() {
		t.Run(s.name, func(t *testing.T) {
			frame := encode(t, s.typ, s.val)
			typ, p := readOne(t, frame)
			if typ != s.typ {
				t.Fatalf("type %v, want %v", typ, s.typ)
			}
			if err := Validate(typ, p); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			got, err := parse(typ, p)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if !reflect.DeepEqual(got, s.val) {
				t.Fatalf("got %+v\nwant %+v", got, s.val)
			}
		})
	}
}

// TestGolden pins the byte format against frames written out by hand, which
// a round trip through a symmetric bug would not catch.
func TestGolden(t *testing.T) {
	aa := strings.Repeat("aa", 32)
	hello := Hello{Version: 4, Role: RoleCopier, Caps: CapAuth, Name: "ag", FlowIdle: 2*time.Second + 7*time.Microsecond, ReplyPrefix: 0x140,
		Pools:   []Pool{{Prefix: netip.MustParsePrefix("198.19.0.0/16"), Slot: 1, Slots: 3}, {Prefix: netip.MustParsePrefix("2001:2:0:ff::/64")}},
		H2Ports: []uint16{8080, 0, 443}}
	for i := range hello.Nonce {
		hello.Nonce[i] = 0xaa
	}
	var rb ReplyBatch
	rb.Add(1, bytes.Repeat([]byte{0x45}, 40))
	rb.Add(2, append(bytes.Repeat([]byte{0x46}, 40), "HTTP"...)) // headers and a 4-byte prefix
	var fb FlowBatch
	fb.Reset(TypeDeregister)
	fb.Add(flow6)
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"ping", AppendPing(nil, 0x0102030405060708), "00000009 07 0102030405060708"},
		{"pong", AppendPong(nil, 1), "00000009 08 0000000000000001"},
		{"auth", AppendAuth(nil, nonce(0), "ab"), "00000024 02 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f 02 6162"},
		{"error", AppendError(nil, CodeNotAllowed, "no"), "00000007 03 0003 0002 6e6f"},
		{"hello", AppendHello(nil, &hello), "00000067 01 54534844 0004 01 00000001" + aa + "02 6167 000007d0 0140 02" +
			" 04 10 c6130000000000000000000000000000 0001 0003" +
			" 06 40 20010002000000ff0000000000000000 0000 0001" +
			" 02 1f90 01bb"},
		{"register", AppendFlows(nil, TypeRegister, []rewrite.Tuple{rewrite.TupleOf(
			netip.MustParseAddrPort("10.0.0.1:1000"), netip.MustParseAddrPort("192.0.2.7:80"))}),
			"00000027 04 0001 00000000000000000000ffff0a000001 03e8 00000000000000000000ffffc0000207 0050"},
		{"deregister batch", fb.Frame(),
			"00000027 05 0001 20010db8000000000000000000000001 c738 20010db8000100000000000000000007 01bb"},
		{"replies", rb.Frame(), "0000006b 06 0002 0000000000000001 0028" + strings.Repeat("45", 40) +
			" 0000000000000002 002c" + strings.Repeat("46", 40) + "48545450"},
	}
	for _, tt := range tests {
		want, err := hex.DecodeString(strings.ReplaceAll(tt.want, " ", ""))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(tt.got, want) {
			t.Errorf("%s:\n got %x\nwant %x", tt.name, tt.got, want)
		}
	}
}

func TestHelloVersions(t *testing.T) {
	// A hello of another version in this version's layout gives the
	// fields up to the name; the rest is not read.
	h := Hello{Version: 5, Role: RoleAgent, Caps: 6, Nonce: nonce(3), Name: "x", FlowIdle: time.Second, ReplyPrefix: 9, Pools: []Pool{pool4}}
	frame := AppendHello(nil, &h)
	want := Hello{Version: 5, Role: RoleAgent, Caps: 6, Nonce: nonce(3), Name: "x"}
	got, err := ParseHello(frame[frameHeader:])
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("version 5: %+v, %v", got, err)
	}
	// Version 2's hello (no reply prefix) is read up to its name, so that
	// the mismatch can be reported; it is not misread as version 3's.
	v2 := v2HelloBytes(RoleCopier, "prod-v2", time.Minute, pool4)
	got, err = ParseHello(v2)
	if err != nil || !reflect.DeepEqual(got, Hello{Version: 2, Role: RoleCopier, Name: "prod-v2"}) {
		t.Fatalf("version 2: %+v, %v", got, err)
	}
	if err := Validate(TypeHello, v2); err != nil {
		t.Fatalf("version 2: Validate %v", err)
	}
	// Version 1's hello (no flow idle, no pools) is read as far as it goes,
	// so that the version mismatch can be reported.
	v1 := helloBytes(1, 2, "v1")
	if got, err := ParseHello(v1); err != nil || got.Version != 1 || got.Name != "v1" || got.Role != RoleAgent {
		t.Fatalf("version 1: %+v, %v", got, err)
	}
	// Another version may change it entirely: magic and version are still reported.
	for _, p := range [][]byte{[]byte("TSHD\x00\x02"), []byte("TSHD\xff\xff\x01\x02")} {
		got, err := ParseHello(p)
		if err != nil || !reflect.DeepEqual(got, Hello{Version: be.Uint16(p[4:])}) {
			t.Fatalf("%q: %+v, %v", p, got, err)
		}
	}
	// This version must be exact.
	h.Version = Version
	frame = AppendHello(nil, &h)
	if _, err := ParseHello(append(bytes.Clone(frame[frameHeader:]), 0)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("version %d with a trailing byte: %v", Version, err)
	}
	// Bad magic wins over anything else.
	if _, err := ParseHello([]byte("TSHX")); !errors.Is(err, ErrBadMagic) {
		t.Fatalf("short bad magic: %v", err)
	}
}

// TestHelloH2Ports: a copier's HTTP/2 ports go through, 0 and those
// beyond MaxH2Ports left out; a parser refuses port 0, a count past the
// bytes or past MaxH2Ports.
func TestHelloH2Ports(t *testing.T) {
	var ports []uint16
	for i := range MaxH2Ports + 2 {
		ports = append(ports, uint16(8000+i))
	}
	h := Hello{Version: Version, Role: RoleCopier, H2Ports: append([]uint16{0}, ports...)}
	p := AppendHello(nil, &h)[frameHeader:]
	got, err := ParseHello(p)
	if err != nil || !reflect.DeepEqual(got.H2Ports, ports[:MaxH2Ports]) {
		t.Fatalf("ports %v, %v; want the first %d", got.H2Ports, err, MaxH2Ports)
	}
	for name, mutate := range map[string]func(p []byte) []byte{
		"port 0":         func(p []byte) []byte { p[len(p)-1], p[len(p)-2] = 0, 0; return p },
		"count too high": func(p []byte) []byte { p[len(p)-1-2*MaxH2Ports]++; return p },
		"count too many": func(p []byte) []byte {
			p[len(p)-1-2*MaxH2Ports] = MaxH2Ports + 1
			return append(p, 0x1f, 0x90)
		},
		"no count": func(p []byte) []byte { return p[:len(p)-1-2*MaxH2Ports] },
	} {
		q := mutate(bytes.Clone(p))
		if _, err := ParseHello(q); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
		if err := Validate(TypeHello, q); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Validate %v, want ErrMalformed", name, err)
		}
	}
}

// TestHelloPools: what AppendHello leaves out, and the pool records a
// parser refuses.
func TestHelloPools(t *testing.T) {
	invalid := []Pool{
		{}, // invalid prefix
		{Prefix: netip.MustParsePrefix("10.8.0.0/16"), Slot: 2, Slots: 2}, // bad slot
		{Prefix: netip.MustParsePrefix("::ffff:10.0.0.0/104")},            // IPv4-mapped IPv6
	}
	beyond := Pool{Prefix: netip.MustParsePrefix("10.9.0.0/16")}
	h := Hello{Version: Version, Pools: slices.Concat(invalid, maxPools(), []Pool{beyond})}
	got, err := ParseHello(AppendHello(nil, &h)[frameHeader:])
	if err != nil || !reflect.DeepEqual(got.Pools, maxPools()) {
		t.Fatalf("pools %v, %v; want the %d valid ones", got.Pools, err, MaxPools)
	}
	// Slots 0 is sent as 1; host bits are masked.
	h = Hello{Version: Version, Pools: []Pool{{Prefix: netip.MustParsePrefix("198.19.7.9/16")}}}
	got, err = ParseHello(AppendHello(nil, &h)[frameHeader:])
	if err != nil || !reflect.DeepEqual(got.Pools, []Pool{{Prefix: netip.MustParsePrefix("198.19.0.0/16"), Slots: 1}}) {
		t.Fatalf("pools %v, %v", got.Pools, err)
	}
	good := AppendHello(nil, &Hello{Version: Version, Pools: []Pool{pool4}})[frameHeader:]
	rec := len(good) - 1 - poolLen // the pool, then an empty list of HTTP/2 ports
	for name, mutate := range map[string]func(p []byte){
		"family 5":       func(p []byte) { p[rec] = 5 },
		"bits 33":        func(p []byte) { p[rec+1] = 33 },
		"v4 tail":        func(p []byte) { p[rec+2+15] = 1 },
		"host bits":      func(p []byte) { p[rec+2+3] = 1 },
		"slots 0":        func(p []byte) { p[rec+20], p[rec+21] = 0, 0 },
		"slot ≥ slots":   func(p []byte) { p[rec+19] = 9 },
		"count too high": func(p []byte) { p[rec-1] = 2 },
		"count too many": func(p []byte) { p[rec-1] = MaxPools + 1 },
	} {
		p := bytes.Clone(good)
		mutate(p)
		if _, err := ParseHello(p); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
		if err := Validate(TypeHello, p); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Validate %v, want ErrMalformed", name, err)
		}
	}
	if !pool4.Contains(netip.MustParseAddr("::ffff:198.19.3.4")) || pool4.Contains(netip.MustParseAddr("198.18.0.1")) {
		t.Error("Pool.Contains")
	}
	if pool4.String() != "198.19.0.0/16 slot 1/2" || pool6.String() != "2001:2:0:ff::/64" {
		t.Errorf("Pool.String: %q, %q", pool4, pool6)
	}
}

func TestTruncateOnEncode(t *testing.T) {
	h := Hello{Version: Version, Name: strings.Repeat("a", 100)}
	got, err := ParseHello(AppendHello(nil, &h)[frameHeader:])
	if err != nil || got.Name != strings.Repeat("a", MaxNameLen) {
		t.Fatalf("long name: %q, %v", got.Name, err)
	}
	// 63 ASCII bytes then a 3-byte rune: cut before the rune.
	h.Name = strings.Repeat("a", 63) + "€"
	got, err = ParseHello(AppendHello(nil, &h)[frameHeader:])
	if err != nil || got.Name != strings.Repeat("a", 63) {
		t.Fatalf("long UTF-8 name: %q, %v", got.Name, err)
	}
	pe, err := ParseError(AppendError(nil, CodeAuth, strings.Repeat("m", 5000))[frameHeader:])
	if err != nil || pe.Msg != strings.Repeat("m", MaxErrorMsgLen) || pe.Code != CodeAuth {
		t.Fatalf("long error: %d bytes, %v", len(pe.Msg), err)
	}
}

// TestParseTruncated gives every proper prefix of every valid payload to its
// parser.
func TestParseTruncated(t *testing.T) {
	for _, s := range samples() {
		_, p := readOne(t, encode(t, s.typ, s.val))
		if s.typ == TypeHello {
			if h, _ := ParseHello(p); h.Version != Version {
				continue // other versions are parsed leniently, by design
			}
		}
		step := 1
		if len(p) > 20000 {
			step = 7
		}
		for k := 0; k < len(p); k += step {
			if _, err := parse(s.typ, p[:k]); !errors.Is(err, ErrMalformed) {
				t.Fatalf("%s: prefix %d of %d: %v, want ErrMalformed", s.name, k, len(p), err)
			}
			if err := Validate(s.typ, p[:k]); !errors.Is(err, ErrMalformed) {
				t.Fatalf("%s: Validate prefix %d of %d: %v, want ErrMalformed", s.name, k, len(p), err)
			}
		}
	}
}

func flowBytes(ts ...rewrite.Tuple) []byte {
	p := be.AppendUint16(nil, uint16(len(ts)))
	for i := range ts {
		p = appendFlow(p, &ts[i])
	}
	return p
}

func replyBytes(count int, hlens ...int) []byte {
	p := be.AppendUint16(nil, uint16(count))
	for i, n := range hlens {
		p = be.AppendUint64(p, uint64(i))
		p = be.AppendUint16(p, uint16(n))
		p = append(p, testHeader(n, 0)...)
	}
	return p
}

func helloBytes(version uint16, nameLen byte, name string) []byte {
	p := []byte(magic)
	p = be.AppendUint16(p, version)
	p = append(p, byte(RoleAgent), 0, 0, 0, 0)
	p = append(p, make([]byte, 32)...)
	p = append(p, nameLen)
	return append(p, name...)
}

// v2HelloBytes returns a Hello payload as version 2 wrote it: no reply
// prefix between the flow idle time and the pool count.
func v2HelloBytes(role Role, name string, idle time.Duration, pools ...Pool) []byte {
	p := helloBytes(2, byte(len(name)), name)
	p[6] = byte(role)
	p = be.AppendUint32(p, uint32(idle.Milliseconds()))
	p = append(p, byte(len(pools)))
	for _, pl := range pools {
		p = appendPool(p, pl)
	}
	return p
}

func errorBytes(msgLen int, msg string) []byte {
	p := be.AppendUint16(nil, uint16(CodeProtocol))
	p = be.AppendUint16(p, uint16(msgLen))
	return append(p, msg...)
}

func TestBadValues(t *testing.T) {
	tooManyFlows := make([]rewrite.Tuple, MaxFlowsPerFrame+1)
	for i := range tooManyFlows {
		tooManyFlows[i] = flow4
	}
	tooManyReplies := make([]int, MaxRepliesPerFrame+1)
	for i := range tooManyReplies {
		tooManyReplies[i] = 52
	}
	tests := []struct {
		name string
		typ  MsgType
		p    []byte
		want error
	}{
		{"flows empty", TypeRegister, nil, ErrMalformed},
		{"flows count 0", TypeRegister, []byte{0, 0}, ErrMalformed},
		{"flows count 0 with a flow", TypeRegister, append([]byte{0, 0}, flowBytes(flow4)[2:]...), ErrMalformed},
		{"flows count above max", TypeRegister, flowBytes(tooManyFlows...), ErrMalformed},
		{"flows count above data", TypeDeregister, append([]byte{0, 2}, flowBytes(flow4)[2:]...), ErrMalformed},
		{"flows trailing byte", TypeRegister, append(flowBytes(flow4), 0), ErrMalformed},
		{"flow v4 to v6", TypeRegister, flowBytes(mixed), ErrMalformed},
		{"flow v6 to v4", TypeRegister, flowBytes(mixed.Reverse()), ErrMalformed},
		{"second flow mixed", TypeDeregister, flowBytes(flow4, mixed, flow6), ErrMalformed},
		{"replies empty", TypeReplies, nil, ErrMalformed},
		{"replies count 0", TypeReplies, replyBytes(0), ErrMalformed},
		{"replies count 0 with a record", TypeReplies, replyBytes(0, 40), ErrMalformed},
		{"replies count above max", TypeReplies, replyBytes(MaxRepliesPerFrame+1, tooManyReplies...), ErrMalformed},
		{"replies hlen 0", TypeReplies, replyBytes(1, 0), ErrMalformed},
		{"replies hlen below min", TypeReplies, replyBytes(1, MinReplyHeader-1), ErrMalformed},
		{"replies len above max", TypeReplies, replyBytes(1, MaxReplyLen+1), ErrMalformed},
		{"replies second len bad", TypeReplies, replyBytes(3, 40, MaxReplyLen+1, 40), ErrMalformed},
		{"replies count above data", TypeReplies, replyBytes(2, 40), ErrMalformed},
		{"replies count below data", TypeReplies, replyBytes(1, 40, 40), ErrMalformed},
		{"replies hlen beyond end", TypeReplies, replyBytes(1, 60)[:2+10+50], ErrMalformed},
		{"hello bad magic", TypeHello, append([]byte("tshd"), helloBytes(Version, 0, "")[4:]...), ErrBadMagic},
		{"hello bad magic other version", TypeHello, append([]byte("XSHD"), helloBytes(9, 0, "")[4:]...), ErrBadMagic},
		{"hello name length beyond end", TypeHello, helloBytes(Version, 5, "abcd"), ErrMalformed},
		{"hello name length 255", TypeHello, helloBytes(Version, 255, "abc"), ErrMalformed},
		{"hello name length 65", TypeHello, helloBytes(Version, 65, strings.Repeat("a", 65)), ErrMalformed},
		{"hello without its tail", TypeHello, helloBytes(Version, 2, "ab"), ErrMalformed},
		{"hello tail short", TypeHello, append(helloBytes(Version, 2, "ab"), 0, 0, 0, 0, 0, 0), ErrMalformed},
		{"hello pool missing", TypeHello, append(helloBytes(Version, 2, "ab"), 0, 0, 0, 0, 0, 0, 1), ErrMalformed},
		// Version 2's layout under version 3's number: the pool count is
		// read from the reply prefix's place.
		{"hello v2 layout as v3", TypeHello, func() []byte { p := v2HelloBytes(RoleCopier, "ab", 0, pool4); p[5] = Version; return p }(), ErrMalformed},
		{"hello 5 bytes", TypeHello, []byte("TSHD\x00"), ErrMalformed},
		{"error message too long", TypeError, errorBytes(MaxErrorMsgLen+1, strings.Repeat("e", MaxErrorMsgLen+1)), ErrMalformed},
		{"error message length 0xffff", TypeError, errorBytes(0xffff, "e"), ErrMalformed},
		{"error message length beyond end", TypeError, errorBytes(10, "short"), ErrMalformed},
		{"error message length short", TypeError, errorBytes(2, "long"), ErrMalformed},
		{"auth 32", TypeAuth, make([]byte, 32), ErrMalformed},
		{"auth name beyond end", TypeAuth, append(make([]byte, 32), 2, 'a'), ErrMalformed},
		{"auth name short", TypeAuth, append(make([]byte, 32), 0, 'a'), ErrMalformed},
		{"auth name 65", TypeAuth, append(append(make([]byte, 32), 65), strings.Repeat("a", 65)...), ErrMalformed},
		{"ping 9", TypePing, make([]byte, 9), ErrMalformed},
		{"pong 7", TypePong, make([]byte, 7), ErrMalformed},
		{"type 0", 0, nil, ErrUnknownType},
		{"type 9", 9, []byte{1, 2, 3}, ErrUnknownType},
		{"type 255", 255, nil, ErrUnknownType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(tt.typ, tt.p)
			if !errors.Is(err, tt.want) {
				t.Fatalf("parse: %v, want %v", err, tt.want)
			}
			if err := Validate(tt.typ, tt.p); !errors.Is(err, tt.want) {
				t.Fatalf("Validate: %v, want %v", err, tt.want)
			}
		})
	}
}

func TestErrorContext(t *testing.T) {
	_, err := ForEachReply(replyBytes(2, 40, MaxReplyLen+1), func(int64, []byte) {})
	if err == nil || !strings.Contains(err.Error(), "replies: record 1: length 377") {
		t.Fatalf("error %q lacks context", err)
	}
	_, err = ForEachFlow(flowBytes(flow6, mixed), func(rewrite.Tuple) {})
	if err == nil || !strings.Contains(err.Error(), "flow 1 mixes address families") {
		t.Fatalf("error %q lacks context", err)
	}
}

func TestReplyHeaderAliasing(t *testing.T) {
	p := replyBytes(2, 40, 41)
	var first []byte
	ForEachReply(p, func(ts int64, hdr []byte) {
		if first == nil {
			first = hdr
		}
	})
	if cap(first) != 40 {
		t.Fatalf("hdr capacity %d, want 40: appending to it would overwrite the next record", cap(first))
	}
}

func TestMAC(t *testing.T) {
	secret := []byte("s3cret")
	tr := Transcript([]byte("copier hello"), []byte("agent hello"), nil)
	// Known answers, from Python's hashlib and hmac modules.
	if got := hex.EncodeToString(tr[:]); got != "d76ee25f6ddba16aa6b248badc76044efb7919c038e22bd26c9e1601d6aad046" {
		t.Fatalf("Transcript = %s", got)
	}
	mac := ComputeMAC(secret, RoleCopier, tr, "prod-1")
	if got := hex.EncodeToString(mac[:]); got != "bb4dbfb69a165cfc3cbbae48fc9fc8ed27f205ba6ffee1742fc81512421be500" {
		t.Fatalf("ComputeMAC = %s", got)
	}
	if ComputeMAC(secret, RoleCopier, tr, "prod-1") != mac {
		t.Fatal("same inputs, different MAC")
	}
	for name, other := range map[string][32]byte{
		"secret":     ComputeMAC([]byte("s3creT"), RoleCopier, tr, "prod-1"),
		"empty":      ComputeMAC(nil, RoleCopier, tr, "prod-1"),
		"role":       ComputeMAC(secret, RoleAgent, tr, "prod-1"),
		"name":       ComputeMAC(secret, RoleCopier, tr, "prod-2"),
		"transcript": ComputeMAC(secret, RoleCopier, Transcript([]byte("copier hello"), []byte("agent hellO"), nil), "prod-1"),
		"swapped":    ComputeMAC(secret, RoleCopier, Transcript([]byte("agent hello"), []byte("copier hello"), nil), "prod-1"),
		"channel":    ComputeMAC(secret, RoleCopier, Transcript([]byte("copier hello"), []byte("agent hello"), []byte{1}), "prod-1"),
		// Lengths are prefixed: moving a byte from one hello to the other changes it.
		"boundary": ComputeMAC(secret, RoleCopier, Transcript([]byte("copier hell"), []byte("oagent hello"), nil), "prod-1"),
	} {
		if other == mac {
			t.Errorf("another %s gives the same MAC", name)
		}
	}
	if !VerifyMAC(secret, RoleCopier, tr, "prod-1", mac) {
		t.Fatal("VerifyMAC rejects a good MAC")
	}
	for i := range len(mac) * 8 {
		bad := mac
		bad[i/8] ^= 1 << (i % 8)
		if VerifyMAC(secret, RoleCopier, tr, "prod-1", bad) {
			t.Fatalf("VerifyMAC accepts bit %d flipped", i)
		}
	}
	if VerifyMAC([]byte("other"), RoleCopier, tr, "prod-1", mac) || VerifyMAC(secret, RoleAgent, tr, "prod-1", mac) {
		t.Fatal("VerifyMAC accepts a MAC for another secret or role")
	}
}

// TestHandshakeMAC plays the mutual challenge–response as the doc comments
// describe it: an Auth reflected back is refused.
func TestHandshakeMAC(t *testing.T) {
	secret := []byte("shared")
	tr := Transcript([]byte("c"), []byte("a"), nil)
	fromCopier := ComputeMAC(secret, RoleCopier, tr, "")
	fromAgent := ComputeMAC(secret, RoleAgent, tr, "assist")
	if !VerifyMAC(secret, RoleCopier, tr, "", fromCopier) || !VerifyMAC(secret, RoleAgent, tr, "assist", fromAgent) {
		t.Fatal("a good Auth is refused")
	}
	if VerifyMAC(secret, RoleAgent, tr, "", fromCopier) {
		t.Fatal("copier accepts its own MAC reflected")
	}
}

func TestStrings(t *testing.T) {
	tests := []struct{ got, want string }{
		{TypeHello.String(), "hello"},
		{TypeReplies.String(), "replies"},
		{TypePong.String(), "pong"},
		{MsgType(0).String(), "type(0)"},
		{MsgType(200).String(), "type(200)"},
		{RoleCopier.String(), "copier"},
		{RoleAgent.String(), "agent"},
		{Role(0).String(), "role(0)"},
		{CodeVersion.String(), "version"},
		{CodeNotAllowed.String(), "not allowed"},
		{CodeOverload.String(), "overload"},
		{ErrorCode(77).String(), "code(77)"},
		{(&PeerError{CodeAuth, "bad mac"}).Error(), "peer error: auth: bad mac"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
	for typ := MsgType(0); typ < 255; typ++ {
		if typ.Known() != (typ >= 1 && typ <= 8) || typ.String() == "" {
			t.Errorf("type %d: Known %v, String %q", typ, typ.Known(), typ.String())
		}
	}
	var err error = &PeerError{CodeVersion, "want 1"}
	var pe *PeerError
	if !errors.As(fmt.Errorf("handshake: %w", err), &pe) || pe.Code != CodeVersion {
		t.Fatal("PeerError does not survive wrapping")
	}
}
