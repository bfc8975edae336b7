package capture

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

// tcp4 builds an IPv4 TCP segment from src:sport to dst:dport with seq
// and payload; checksums are left zero (the source does not check them).
func tcp4(src, dst string, sport, dport uint16, seq uint32, flags byte, payload []byte) []byte {
	ip := make([]byte, 40+len(payload))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	ip[8], ip[9] = 64, 6
	copy(ip[12:16], netip.MustParseAddr(src).AsSlice())
	copy(ip[16:20], netip.MustParseAddr(dst).AsSlice())
	t := ip[20:]
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], dport)
	binary.BigEndian.PutUint32(t[4:], seq)
	t[12], t[13] = 5<<4, flags
	copy(t[20:], payload)
	return ip
}

func ether(ip []byte) []byte {
	f := make([]byte, 14, 14+len(ip))
	copy(f, []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2})
	if ip[0]>>4 == 6 {
		f[12], f[13] = 0x86, 0xdd
	} else {
		f[12], f[13] = 0x08, 0x00
	}
	return append(f, ip...)
}

func vxlan(vni uint32, frame []byte) []byte {
	h := make([]byte, 8, 8+len(frame))
	h[0] = vxlanFlagVNI
	binary.BigEndian.PutUint32(h[4:], vni<<8)
	return append(h, frame...)
}

// geneve wraps inner (of protocol type proto) with opts option words.
func geneve(vni uint32, proto uint16, opts []byte, inner []byte) []byte {
	h := make([]byte, 8, 8+len(opts)+len(inner))
	h[0] = byte(len(opts) / 4)
	binary.BigEndian.PutUint16(h[2:], proto)
	binary.BigEndian.PutUint32(h[4:], vni<<8)
	h = append(h, opts...)
	return append(h, inner...)
}

// udp4 wraps payload in IPv4 + UDP to dport.
func udp4(dport uint16, payload []byte) []byte {
	ip := make([]byte, 28, 28+len(payload))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(28+len(payload)))
	ip[8], ip[9] = 64, 17
	copy(ip[12:16], []byte{198, 18, 9, 1})
	copy(ip[16:20], []byte{198, 18, 9, 2})
	binary.BigEndian.PutUint16(ip[20:], 40000)
	binary.BigEndian.PutUint16(ip[22:], dport)
	binary.BigEndian.PutUint16(ip[24:], uint16(8+len(payload)))
	return append(ip, payload...)
}

// gwlbOpt is one 8-byte option, as AWS GWLB sends (class 0x0108).
var gwlbOpt = []byte{0x01, 0x08, 0x01, 1, 0xde, 0xad, 0xbe, 0xef}

func TestMirrorDecapsulates(t *testing.T) {
	seg := tcp4("198.18.0.2", "198.18.0.1", 40000, 80, 1000, 0x18, []byte("GET / HTTP/1.1\r\n\r\n"))
	padded := append(ether(tcp4("198.18.0.1", "198.18.0.2", 80, 40000, 5, 0x10, nil)), make([]byte, 6)...)
	cut := ether(seg)[:14+45]
	tests := []struct {
		name  string
		proto MirrorProto
		vni   int
		d     []byte
		want  []byte // nil: dropped
		check func(MirrorStats) bool
	}{
		{"vxlan", MirrorVXLAN, AnyVNI, vxlan(7, ether(seg)), seg, func(s MirrorStats) bool { return s.Frames == 1 }},
		{"vxlan vni kept", MirrorVXLAN, 7, vxlan(7, ether(seg)), seg, func(s MirrorStats) bool { return s.Frames == 1 }},
		{"vxlan other vni", MirrorVXLAN, 8, vxlan(7, ether(seg)), nil, func(s MirrorStats) bool { return s.OtherVNI == 1 }},
		{"vxlan no I flag", MirrorVXLAN, AnyVNI, append([]byte{0, 0, 0, 0, 0, 0, 7, 0}, ether(seg)...), nil, func(s MirrorStats) bool { return s.BadTunnel == 1 }},
		{"vxlan short", MirrorVXLAN, AnyVNI, []byte{8, 0, 0}, nil, func(s MirrorStats) bool { return s.BadTunnel == 1 }},
		{"vxlan other vni not ip", MirrorVXLAN, 8, vxlan(7, make([]byte, 60)), nil, func(s MirrorStats) bool { return s.OtherVNI == 1 }},
		{"vxlan arp", MirrorVXLAN, AnyVNI, vxlan(7, append(make([]byte, 12), 0x08, 0x06, 0, 1)), nil, func(s MirrorStats) bool { return s.NonIP == 1 }},
		{"padding trimmed", MirrorVXLAN, AnyVNI, vxlan(7, padded), padded[14 : len(padded)-6], func(s MirrorStats) bool { return s.Truncated == 0 }},
		{"truncated", MirrorVXLAN, AnyVNI, vxlan(7, cut), cut[14:], func(s MirrorStats) bool { return s.Truncated == 1 && s.Frames == 1 }},
		{"geneve ethernet", MirrorGeneve, AnyVNI, geneve(3, protoTransparentEth, nil, ether(seg)), seg, func(s MirrorStats) bool { return s.Frames == 1 }},
		{"geneve options", MirrorGeneve, 3, geneve(3, protoTransparentEth, append(gwlbOpt, gwlbOpt...), ether(seg)), seg, func(s MirrorStats) bool { return s.Frames == 1 }},
		{"geneve ip", MirrorGeneve, AnyVNI, geneve(3, etherTypeIPv4, gwlbOpt, seg), seg, func(s MirrorStats) bool { return s.Frames == 1 }},
		{"geneve vxlan inside", MirrorGeneve, 9, geneve(3, etherTypeIPv4, gwlbOpt, udp4(4789, vxlan(9, ether(seg)))), seg,
			func(s MirrorStats) bool { return s.Nested == 1 && s.Frames == 1 }},
		{"geneve vxlan inside other vni", MirrorGeneve, 3, geneve(3, etherTypeIPv4, nil, udp4(4789, vxlan(9, ether(seg)))), nil,
			func(s MirrorStats) bool { return s.OtherVNI == 1 }},
		{"geneve ethernet vxlan inside", MirrorGeneve, AnyVNI, geneve(3, protoTransparentEth, nil, ether(udp4(4789, vxlan(9, ether(seg))))), seg,
			func(s MirrorStats) bool { return s.Nested == 1 }},
		{"geneve version 1", MirrorGeneve, AnyVNI, append([]byte{0x40}, geneve(3, protoTransparentEth, nil, ether(seg))[1:]...), nil, func(s MirrorStats) bool { return s.BadTunnel == 1 }},
		{"geneve options overrun", MirrorGeneve, AnyVNI, geneve(3, protoTransparentEth, []byte{1, 8, 1, 5, 0, 0, 0, 0}, ether(seg)), nil, func(s MirrorStats) bool { return s.BadTunnel == 1 }},
		{"geneve opt len past end", MirrorGeneve, AnyVNI, []byte{0x3f, 0, 0x65, 0x58, 0, 0, 3, 0}, nil, func(s MirrorStats) bool { return s.BadTunnel == 1 }},
		{"geneve unknown protocol", MirrorGeneve, AnyVNI, geneve(3, 0x88cc, nil, ether(seg)), nil, func(s MirrorStats) bool { return s.BadTunnel == 1 }},
		{"udp not vxlan stays", MirrorGeneve, AnyVNI, geneve(3, etherTypeIPv4, nil, udp4(53, []byte("dns"))), udp4(53, []byte("dns")), func(s MirrorStats) bool { return s.Nested == 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newMirrorSource(MirrorConfig{Proto: tt.proto, VNI: tt.vni}, nil)
			got, ok := s.handle(tt.d)
			if ok != (tt.want != nil) || string(got) != string(tt.want) {
				t.Fatalf("got %x (%v), want %x", got, ok, tt.want)
			}
			st := s.MirrorStats()
			if st.Datagrams != 1 || !tt.check(st) {
				t.Fatalf("stats %+v", st)
			}
			if st.Frames+st.BadTunnel+st.OtherVNI+st.NonIP != 1 {
				t.Fatalf("datagram counted %d times: %+v", st.Frames+st.BadTunnel+st.OtherVNI+st.NonIP, st)
			}
		})
	}
}

func TestMirrorCountsOutOfOrder(t *testing.T) {
	s := newMirrorSource(MirrorConfig{Proto: MirrorVXLAN, VNI: AnyVNI}, nil)
	send := func(seq uint32, flags byte, n int) {
		t.Helper()
		if _, ok := s.handle(vxlan(1, ether(tcp4("198.18.0.2", "198.18.0.1", 40000, 80, seq, flags, make([]byte, n))))); !ok {
			t.Fatal("dropped")
		}
	}
	send(99, 0x02, 0)    // SYN
	send(100, 0x18, 100) // 100..200
	send(300, 0x18, 100) // 300..400: a gap, not out of order itself
	send(200, 0x18, 100) // 200..300 late
	send(400, 0x10, 0)   // a pure ACK: not tracked
	send(400, 0x18, 10)
	if got := s.MirrorStats().OutOfOrder; got != 1 {
		t.Fatalf("out of order %d, want 1", got)
	}
	// The reverse direction is a flow of its own.
	if _, ok := s.handle(vxlan(1, ether(tcp4("198.18.0.1", "198.18.0.2", 80, 40000, 5, 0x18, make([]byte, 10))))); !ok {
		t.Fatal("dropped")
	}
	if got := s.MirrorStats().OutOfOrder; got != 1 {
		t.Fatalf("out of order %d after the reverse direction, want 1", got)
	}
}

func TestParseMirrorURL(t *testing.T) {
	good := map[string]MirrorConfig{
		"vxlan://198.18.1.3":             {Proto: MirrorVXLAN, Addr: netip.MustParseAddrPort("198.18.1.3:4789"), VNI: AnyVNI},
		"vxlan://0.0.0.0:4790?vni=42":    {Proto: MirrorVXLAN, Addr: netip.MustParseAddrPort("0.0.0.0:4790"), VNI: 42},
		"geneve://[2001:2::3]":           {Proto: MirrorGeneve, Addr: netip.MustParseAddrPort("[2001:2::3]:6081"), VNI: AnyVNI},
		"geneve://198.18.1.3:6081?vni=0": {Proto: MirrorGeneve, Addr: netip.MustParseAddrPort("198.18.1.3:6081"), VNI: 0},
	}
	for s, want := range good {
		got, err := ParseMirrorURL(s)
		if err != nil || got != want {
			t.Errorf("%s: %+v, %v; want %+v", s, got, err, want)
		}
		if again, err := ParseMirrorURL(got.String()); err != nil || again != got {
			t.Errorf("%s: String %q does not parse back: %+v, %v", s, got.String(), again, err)
		}
	}
	for _, s := range []string{"", "udp://1.2.3.4", "vxlan://host.example", "vxlan://1.2.3.4:0", "vxlan://1.2.3.4:70000",
		"vxlan://1.2.3.4?vni=16777216", "vxlan://1.2.3.4?vni=x", "vxlan://1.2.3.4?port=1", "vxlan://1.2.3.4/path", "vxlan://1.2.3.4?vni=1&vni=2"} {
		if _, err := ParseMirrorURL(s); err == nil {
			t.Errorf("%q parsed", s)
		}
	}
}

// TestMirrorReadsDatagrams reads real datagrams over loopback: Read
// returns the inner packet, times out when idle, and returns io.EOF
// promptly after Close.
func TestMirrorReadsDatagrams(t *testing.T) {
	src, err := OpenMirror(MirrorConfig{Proto: MirrorVXLAN, Addr: netip.MustParseAddrPort("127.0.0.1:0"), VNI: 5, BufferSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	ms := src.(*mirrorSource)
	to := ms.conn.LocalAddr().(*net.UDPAddr)
	c, err := net.DialUDP("udp", nil, to)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	seg := tcp4("198.18.0.2", "198.18.0.1", 40000, 80, 1, 0x18, []byte("x"))
	for _, d := range [][]byte{{1, 2, 3}, vxlan(6, ether(seg)), vxlan(5, ether(seg))} {
		if _, err := c.Write(d); err != nil {
			t.Fatal(err)
		}
	}
	pkt, _, err := src.Read()
	if err != nil || string(pkt) != string(seg) {
		t.Fatalf("read %x, %v", pkt, err)
	}
	if st := ms.MirrorStats(); st.Datagrams != 3 || st.BadTunnel != 1 || st.OtherVNI != 1 || st.Frames != 1 {
		t.Fatalf("stats %+v", st)
	}
	if _, _, err := src.Read(); !errors.Is(err, ErrTimeout) {
		t.Fatalf("idle read: %v, want ErrTimeout", err)
	}
	done := make(chan error, 1)
	go func() { _, _, err := src.Read(); done <- err }()
	time.Sleep(20 * time.Millisecond) // let Read wait; either order passes
	src.Close()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, ErrTimeout) {
			t.Fatalf("read after close: %v, want io.EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read did not return after Close")
	}
}

// TestMirrorHandleZeroAlloc: decapsulating a datagram allocates nothing,
// for each encapsulation.
func TestMirrorHandleZeroAlloc(t *testing.T) {
	seg := tcp4("198.18.0.2", "198.18.0.1", 40000, 80, 1, 0x18, make([]byte, 1000))
	for name, c := range map[string]struct {
		proto MirrorProto
		d     []byte
	}{
		"vxlan":              {MirrorVXLAN, vxlan(5, ether(seg))},
		"geneve":             {MirrorGeneve, geneve(5, protoTransparentEth, gwlbOpt, ether(seg))},
		"vxlan in geneve":    {MirrorGeneve, geneve(5, etherTypeIPv4, gwlbOpt, udp4(4789, vxlan(5, ether(seg))))},
		"truncated":          {MirrorVXLAN, vxlan(5, ether(seg))[:200]},
		"malformed":          {MirrorGeneve, []byte{0x3f, 0, 0x65, 0x58}},
		"vxlan, other vni 5": {MirrorVXLAN, vxlan(6, ether(seg))},
	} {
		t.Run(name, func(t *testing.T) {
			s := newMirrorSource(MirrorConfig{Proto: c.proto, VNI: 5}, nil)
			if n := testing.AllocsPerRun(1000, func() { s.handle(c.d) }); n != 0 {
				t.Fatalf("%v allocations per datagram", n)
			}
		})
	}
}

// TestMirrorReadZeroAlloc: a Read of a waiting datagram allocates nothing.
func TestMirrorReadZeroAlloc(t *testing.T) {
	src, err := OpenMirror(MirrorConfig{Proto: MirrorVXLAN, Addr: netip.MustParseAddrPort("127.0.0.1:0"), VNI: AnyVNI, BufferSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	c, err := net.DialUDP("udp", nil, src.(*mirrorSource).conn.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d := vxlan(5, ether(tcp4("198.18.0.2", "198.18.0.1", 40000, 80, 1, 0x18, make([]byte, 100))))
	const runs = 200
	for range runs + 1 { // AllocsPerRun runs once more to warm up
		if _, err := c.Write(d); err != nil {
			t.Fatal(err)
		}
	}
	n := testing.AllocsPerRun(runs, func() {
		if _, _, err := src.Read(); err != nil {
			t.Fatal(err)
		}
	})
	if n != 0 {
		t.Fatalf("%v allocations per Read", n)
	}
}

// BenchmarkMirrorHandle measures decapsulating one datagram of a
// 1000-byte segment, per encapsulation.
func BenchmarkMirrorHandle(b *testing.B) {
	seg := tcp4("198.18.0.2", "198.18.0.1", 40000, 80, 1, 0x18, make([]byte, 1000))
	for _, c := range []struct {
		name  string
		proto MirrorProto
		d     []byte
	}{
		{"vxlan", MirrorVXLAN, vxlan(5, ether(seg))},
		{"geneve", MirrorGeneve, geneve(5, protoTransparentEth, gwlbOpt, ether(seg))},
		{"vxlan-in-geneve", MirrorGeneve, geneve(5, etherTypeIPv4, gwlbOpt, udp4(4789, vxlan(5, ether(seg))))},
	} {
		b.Run(c.name, func(b *testing.B) {
			s := newMirrorSource(MirrorConfig{Proto: c.proto, VNI: 5}, nil)
			b.ReportAllocs()
			b.SetBytes(int64(len(c.d)))
			for b.Loop() {
				s.handle(c.d)
			}
		})
	}
}
