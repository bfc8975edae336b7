package rewrite

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// This file holds the test suite's independent references: a naive 16-bit
// ones' complement sum, checksums recomputed from scratch with it, and a
// packet model built and decoded with gopacket. Nothing here calls the code
// under test, so the tests compare the package against something else.

// refSum is the textbook RFC 1071 sum: one 16-bit word at a time, folding
// the carry back in after every addition.
func refSum(b []byte, initial uint16) uint16 {
	s := uint32(initial)
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
		s = s&0xffff + s>>16
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// refIPv4Checksum returns the IPv4 header checksum of packet b computed
// from scratch.
func refIPv4Checksum(b []byte) uint16 {
	hl := int(b[0]&0x0f) * 4
	h := bytes.Clone(b[:hl])
	h[10], h[11] = 0, 0
	return ^refSum(h, 0)
}

// refTCPChecksum returns the TCP checksum of the segment seg (header and
// payload) computed from scratch over the pseudo header built here.
func refTCPChecksum(src, dst netip.Addr, seg []byte) uint16 {
	var ph []byte
	if src.Is4() {
		ph = append(ph, src.AsSlice()...)
		ph = append(ph, dst.AsSlice()...)
		ph = append(ph, 0, ProtoTCP)
		ph = binary.BigEndian.AppendUint16(ph, uint16(len(seg)))
	} else {
		ph = append(ph, src.AsSlice()...)
		ph = append(ph, dst.AsSlice()...)
		ph = binary.BigEndian.AppendUint32(ph, uint32(len(seg)))
		ph = append(ph, 0, 0, 0, ProtoTCP)
	}
	s := bytes.Clone(seg)
	s[16], s[17] = 0, 0
	return ^refSum(append(ph, s...), 0)
}

// tcpOpt is one TCP option of the model; NOP and EOL are a single byte.
type tcpOpt struct {
	kind uint8
	data []byte
}

func (o tcpOpt) len() int {
	if o.kind == OptNOP || o.kind == OptEnd {
		return 1
	}
	return 2 + len(o.data)
}

// pktSpec is an independent model of one IPv4 or IPv6 TCP packet.
type pktSpec struct {
	v6           bool
	src, dst     netip.Addr
	sport, dport uint16
	seq, ack     uint32
	flags        uint8
	ns           bool // the NS bit lives in the data offset byte
	window       uint16
	urgent       uint16
	ttl          uint8
	id           uint16
	df           bool
	ipOpts       []layers.IPv4Option
	hbh          int // IPv6 hop-by-hop header length, 0 for none
	opts         []tcpOpt
	payload      []byte
}

func (s *pktSpec) clone() *pktSpec {
	c := *s
	c.opts = make([]tcpOpt, len(s.opts))
	for i, o := range s.opts {
		c.opts[i] = tcpOpt{o.kind, bytes.Clone(o.data)}
	}
	c.ipOpts = append([]layers.IPv4Option(nil), s.ipOpts...)
	return &c
}

// rawOptions encodes the options as they appear on the wire, padded with
// end-of-list bytes to a multiple of 4.
func (s *pktSpec) rawOptions() []byte {
	var b []byte
	for _, o := range s.opts {
		b = append(b, o.kind)
		if o.len() > 1 {
			b = append(b, byte(o.len()))
			b = append(b, o.data...)
		}
	}
	for len(b)%4 != 0 {
		b = append(b, OptEnd)
	}
	return b
}

func (s *pktSpec) ipHeaderLen() int {
	if s.v6 {
		return IPv6HeaderLen + s.hbh
	}
	n := 0
	for _, o := range s.ipOpts {
		n += int(o.OptionLength)
	}
	return IPv4MinHeaderLen + (n+3)&^3
}

func (s *pktSpec) tcpHeaderLen() int { return TCPMinHeaderLen + len(s.rawOptions()) }

// find returns the index of the first option of kind k, or -1.
func (s *pktSpec) find(k uint8) int {
	for i, o := range s.opts {
		if o.kind == k {
			return i
		}
	}
	return -1
}

// build serializes the model with gopacket, which computes both checksums
// and all lengths itself.
func (s *pktSpec) build(tb testing.TB) []byte {
	tb.Helper()
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(s.sport), DstPort: layers.TCPPort(s.dport),
		Seq: s.seq, Ack: s.ack, Window: s.window, Urgent: s.urgent,
		FIN: s.flags&FlagFIN != 0, SYN: s.flags&FlagSYN != 0,
		RST: s.flags&FlagRST != 0, PSH: s.flags&FlagPSH != 0,
		ACK: s.flags&FlagACK != 0, URG: s.flags&FlagURG != 0,
		ECE: s.flags&FlagECE != 0, CWR: s.flags&FlagCWR != 0,
		NS: s.ns,
	}
	for _, o := range s.opts {
		tcp.Options = append(tcp.Options, layers.TCPOption{
			OptionType: layers.TCPOptionKind(o.kind), OptionData: o.data,
		})
	}
	var ip gopacket.SerializableLayer
	if s.v6 {
		ip6 := &layers.IPv6{
			Version: 6, NextHeader: layers.IPProtocolTCP, HopLimit: s.ttl,
			SrcIP: net.IP(s.src.AsSlice()), DstIP: net.IP(s.dst.AsSlice()),
		}
		if s.hbh > 0 {
			// One PadN option filling the header exactly: gopacket's own
			// padding of hop-by-hop options is unreliable.
			ip6.HopByHop = &layers.IPv6HopByHop{
				Options: []*layers.IPv6HopByHopOption{{OptionType: 1, OptionData: make([]byte, s.hbh-4)}},
			}
			ip6.HopByHop.NextHeader = layers.IPProtocolTCP
		}
		if err := tcp.SetNetworkLayerForChecksum(ip6); err != nil {
			tb.Fatal(err)
		}
		ip = ip6
	} else {
		ip4 := &layers.IPv4{
			Version: 4, TTL: s.ttl, Id: s.id, Protocol: layers.IPProtocolTCP,
			SrcIP: net.IP(s.src.AsSlice()), DstIP: net.IP(s.dst.AsSlice()),
			Options: s.ipOpts,
		}
		if s.df {
			ip4.Flags = layers.IPv4DontFragment
		}
		if err := tcp.SetNetworkLayerForChecksum(ip4); err != nil {
			tb.Fatal(err)
		}
		ip = ip4
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}
	if err := gopacket.SerializeLayers(buf, opts, ip, tcp, gopacket.Payload(s.payload)); err != nil {
		tb.Fatalf("gopacket serialize: %v", err)
	}
	return bytes.Clone(buf.Bytes())
}

// gpPacket is a packet as gopacket decodes it.
type gpPacket struct {
	ip4 layers.IPv4
	ip6 layers.IPv6
	tcp layers.TCP
	v6  bool
}

// gpDecode decodes b with gopacket, failing the test if it cannot.
func gpDecode(tb testing.TB, b []byte) *gpPacket {
	tb.Helper()
	g := &gpPacket{}
	var pl gopacket.Payload
	first := layers.LayerTypeIPv4
	if b[0]>>4 == 6 {
		first, g.v6 = layers.LayerTypeIPv6, true
	}
	parser := gopacket.NewDecodingLayerParser(first, &g.ip4, &g.ip6, &g.tcp, &pl)
	parser.IgnoreUnsupported = true
	var decoded []gopacket.LayerType
	if err := parser.DecodeLayers(b, &decoded); err != nil {
		tb.Fatalf("gopacket decode: %v\n% x", err, b)
	}
	for _, lt := range decoded {
		if lt == layers.LayerTypeTCP {
			return g
		}
	}
	tb.Fatalf("gopacket decode: no tcp layer in %v\n% x", decoded, b)
	return nil
}

func (g *gpPacket) flags() uint8 {
	var f uint8
	for _, x := range []struct {
		set bool
		f   uint8
	}{
		{g.tcp.FIN, FlagFIN}, {g.tcp.SYN, FlagSYN}, {g.tcp.RST, FlagRST}, {g.tcp.PSH, FlagPSH},
		{g.tcp.ACK, FlagACK}, {g.tcp.URG, FlagURG}, {g.tcp.ECE, FlagECE}, {g.tcp.CWR, FlagCWR},
	} {
		if x.set {
			f |= x.f
		}
	}
	return f
}

// checkAgainstSpec verifies packet b field by field against the model,
// through gopacket's decoding, then verifies both checksums against a
// recomputation from scratch, then compares every byte with gopacket's
// serialization of the model.
func checkAgainstSpec(tb testing.TB, b []byte, s *pktSpec) {
	tb.Helper()
	g := gpDecode(tb, b)
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	var src, dst netip.Addr
	if g.v6 != s.v6 {
		tb.Fatalf("decoded v6=%v, want %v", g.v6, s.v6)
	}
	if s.v6 {
		src, _ = netip.AddrFromSlice(g.ip6.SrcIP)
		dst, _ = netip.AddrFromSlice(g.ip6.DstIP)
		if g.ip6.HopLimit != s.ttl {
			fail("hop limit %d, want %d", g.ip6.HopLimit, s.ttl)
		}
	} else {
		src, _ = netip.AddrFromSlice(g.ip4.SrcIP)
		dst, _ = netip.AddrFromSlice(g.ip4.DstIP)
		if g.ip4.TTL != s.ttl || g.ip4.Id != s.id {
			fail("ttl/id %d/%d, want %d/%d", g.ip4.TTL, g.ip4.Id, s.ttl, s.id)
		}
		if got, want := g.ip4.Checksum, refIPv4Checksum(b); got != want {
			fail("ipv4 header checksum %#04x, recomputed %#04x", got, want)
		}
	}
	if src != s.src || dst != s.dst {
		fail("addresses %v->%v, want %v->%v", src, dst, s.src, s.dst)
	}
	if uint16(g.tcp.SrcPort) != s.sport || uint16(g.tcp.DstPort) != s.dport {
		fail("ports %d->%d, want %d->%d", g.tcp.SrcPort, g.tcp.DstPort, s.sport, s.dport)
	}
	if g.tcp.Seq != s.seq || g.tcp.Ack != s.ack {
		fail("seq/ack %d/%d, want %d/%d", g.tcp.Seq, g.tcp.Ack, s.seq, s.ack)
	}
	if g.tcp.Window != s.window || g.tcp.Urgent != s.urgent {
		fail("window/urgent %d/%d, want %d/%d", g.tcp.Window, g.tcp.Urgent, s.window, s.urgent)
	}
	if f := g.flags(); f != s.flags || g.tcp.NS != s.ns {
		fail("flags %#02x ns=%v, want %#02x ns=%v", f, g.tcp.NS, s.flags, s.ns)
	}
	if got, want := g.tcp.Contents[TCPMinHeaderLen:], s.rawOptions(); !bytes.Equal(got, want) {
		fail("options\n% x, want\n% x", got, want)
	}
	if !bytes.Equal(g.tcp.Payload, s.payload) {
		fail("payload differs (%d bytes, want %d)", len(g.tcp.Payload), len(s.payload))
	}
	seg := b[s.ipHeaderLen():]
	if got, want := g.tcp.Checksum, refTCPChecksum(s.src, s.dst, seg); got != want {
		fail("tcp checksum %#04x, recomputed %#04x", got, want)
	}
	if want := s.build(tb); !bytes.Equal(b, want) {
		fail("bytes differ from gopacket's build of the model:\n got % x\nwant % x", b, want)
	}
	if len(errs) > 0 {
		tb.Fatalf("packet does not match model:\n%s", joinLines(errs))
	}
}

func joinLines(s []string) string {
	var b bytes.Buffer
	for _, l := range s {
		b.WriteString("\t" + l + "\n")
	}
	return b.String()
}

func randAddr(r *rand.Rand, v6 bool) netip.Addr {
	if !v6 {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], r.Uint32())
		return netip.AddrFrom4(a)
	}
	var a [16]byte
	binary.BigEndian.PutUint64(a[:8], r.Uint64())
	binary.BigEndian.PutUint64(a[8:], r.Uint64())
	a[0] |= 0x20 // never v4-mapped
	return netip.AddrFrom16(a)
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// randOptions picks a random order of options that fits in 40 bytes. The
// window scale option is sometimes emitted without NOP padding, so the
// options after it, timestamps included, land at odd offsets.
func randOptions(r *rand.Rand) []tcpOpt {
	var pool []tcpOpt
	if r.IntN(3) > 0 {
		pool = append(pool, tcpOpt{OptMSS, randBytes(r, 2)})
	}
	if r.IntN(3) > 0 {
		pool = append(pool, tcpOpt{OptWindowScale, randBytes(r, 1)})
	}
	if r.IntN(3) > 0 {
		pool = append(pool, tcpOpt{OptTimestamps, randBytes(r, 8)})
	}
	if r.IntN(3) == 0 {
		pool = append(pool, tcpOpt{OptSACKPermitted, nil})
	}
	if r.IntN(3) == 0 {
		pool = append(pool, tcpOpt{OptSACK, randBytes(r, 8*(1+r.IntN(3)))})
	}
	if r.IntN(5) == 0 {
		pool = append(pool, tcpOpt{253, randBytes(r, r.IntN(5))}) // RFC 4727 experiment
	}
	for range r.IntN(4) {
		pool = append(pool, tcpOpt{OptNOP, nil})
	}
	r.Shuffle(len(pool), func(i, j int) { pool[i], pool[j] = pool[j], pool[i] })
	var opts []tcpOpt
	n := 0
	for _, o := range pool {
		if n+o.len() <= TCPMaxHeaderLen-TCPMinHeaderLen {
			opts = append(opts, o)
			n += o.len()
		}
	}
	return opts
}

func randSpec(r *rand.Rand) *pktSpec {
	s := &pktSpec{
		v6:    r.IntN(2) == 0,
		sport: uint16(r.Uint32()), dport: uint16(r.Uint32()),
		seq: r.Uint32(), ack: r.Uint32(),
		flags: uint8(r.Uint32()), ns: r.IntN(4) == 0,
		window: uint16(r.Uint32()), urgent: uint16(r.Uint32()),
		ttl: uint8(r.Uint32()), id: uint16(r.Uint32()), df: r.IntN(2) == 0,
		opts: randOptions(r),
	}
	s.src, s.dst = randAddr(r, s.v6), randAddr(r, s.v6)
	switch r.IntN(4) {
	case 0:
		s.payload = nil
	case 1:
		s.payload = randBytes(r, 1460)
	default:
		s.payload = randBytes(r, r.IntN(1461))
	}
	if s.v6 {
		if r.IntN(3) == 0 {
			s.hbh = 8 * (1 + r.IntN(3))
		}
	} else if r.IntN(3) == 0 {
		// Router alert (RFC 2113) and sometimes a record route option.
		s.ipOpts = append(s.ipOpts, layers.IPv4Option{OptionType: 0x94, OptionLength: 4, OptionData: []byte{0, 0}})
		if r.IntN(2) == 0 {
			n := 1 + r.IntN(4)
			s.ipOpts = append(s.ipOpts, layers.IPv4Option{
				OptionType: 7, OptionLength: uint8(3 + 4*n), OptionData: append([]byte{4}, randBytes(r, 4*n)...),
			})
		}
	}
	return s
}

// v4Spec and v6Spec are fixed packets for table tests.
func v4Spec() *pktSpec {
	return &pktSpec{
		src: netip.MustParseAddr("192.0.2.1"), dst: netip.MustParseAddr("198.51.100.7"),
		sport: 40000, dport: 8080, seq: 0x01020304, ack: 0xa0b0c0d0,
		flags: FlagACK | FlagPSH, window: 502, ttl: 63, id: 0x1234, df: true,
		opts: []tcpOpt{
			{OptNOP, nil}, {OptNOP, nil},
			{OptTimestamps, []byte{0, 0, 0, 1, 0, 0, 0, 2}},
		},
		payload: []byte("GET / HTTP/1.1\r\nHost: example\r\n\r\n"),
	}
}

func v6Spec() *pktSpec {
	return &pktSpec{
		v6:  true,
		src: netip.MustParseAddr("2001:db8::1"), dst: netip.MustParseAddr("2001:db8:1::2"),
		sport: 51000, dport: 443, seq: 0xfffffff0, ack: 17,
		flags: FlagACK, window: 65535, ttl: 64, hbh: 8,
		opts: []tcpOpt{
			{OptMSS, []byte{0x05, 0xb4}}, {OptWindowScale, []byte{7}},
			{OptTimestamps, []byte{1, 2, 3, 4, 5, 6, 7, 8}},
		},
		payload: []byte("hello, world"),
	}
}
