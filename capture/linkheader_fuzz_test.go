package capture

import (
	"testing"

	"github.com/google/gopacket/layers"
)

// FuzzLinkHeaderLen: for every link type, whatever the frame, the IP
// header offset reported lies inside the frame, and a frame of a
// supported type says so with a nil frame too.
func FuzzLinkHeaderLen(f *testing.F) {
	ether := []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x08, 0x00, 0x45}
	vlan := []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x81, 0x00, 0, 1, 0x86, 0xdd, 0x60}
	qinq := []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x88, 0xa8, 0, 1, 0x81, 0x00, 0, 2, 0x81, 0x00, 0, 3, 0x08, 0x00}
	sll := append(make([]byte, 14), 0x08, 0x00, 0x45)
	for _, seed := range [][]byte{ether, vlan, qinq, sll, {0x45}, {2, 0, 0, 0, 0x45}, {0, 0, 0, 2, 0x60}, {}, {0x08}} {
		for _, lt := range []layers.LinkType{layers.LinkTypeEthernet, layers.LinkTypeLinuxSLL, layers.LinkTypeRaw,
			linkTypeRawAlt, layers.LinkTypeIPv4, linkTypeIPv6, layers.LinkTypeNull, layers.LinkTypeLoop, 0} {
			f.Add(uint16(lt), seed)
		}
	}
	f.Fuzz(func(t *testing.T, lt uint16, frame []byte) {
		if frame == nil {
			frame = []byte{}
		}
		off, ok := linkHeaderLen(layers.LinkType(lt), frame)
		if !ok {
			return
		}
		if off < 0 || off > len(frame) {
			t.Fatalf("link type %d, %d-byte frame: IP header at %d", lt, len(frame), off)
		}
		if _, supported := linkHeaderLen(layers.LinkType(lt), nil); !supported {
			t.Fatalf("link type %d parses a frame but is not supported", lt)
		}
	})
}

// FuzzMirrorHandle: whatever a datagram holds, decapsulating it never
// panics, counts it exactly once, and returns a packet lying inside it
// that starts with an IP version nibble.
func FuzzMirrorHandle(f *testing.F) {
	seg := tcp4("198.18.0.2", "198.18.0.1", 40000, 80, 1, 0x18, []byte("GET /"))
	for _, d := range [][]byte{
		vxlan(5, ether(seg)), vxlan(5, ether(seg))[:30], geneve(5, protoTransparentEth, gwlbOpt, ether(seg)),
		geneve(5, etherTypeIPv4, gwlbOpt, udp4(4789, vxlan(5, ether(seg)))), geneve(5, etherTypeIPv6, nil, nil),
		{0x3f, 0, 0x65, 0x58}, {}, {8, 0, 0, 0, 0, 0, 5, 0},
	} {
		f.Add(true, d)
		f.Add(false, d)
	}
	f.Fuzz(func(t *testing.T, isGeneve bool, d []byte) {
		proto := MirrorVXLAN
		if isGeneve {
			proto = MirrorGeneve
		}
		s := newMirrorSource(MirrorConfig{Proto: proto, VNI: AnyVNI}, nil)
		pkt, ok := s.handle(d)
		st := s.MirrorStats()
		if st.Frames+st.BadTunnel+st.OtherVNI+st.NonIP != 1 {
			t.Fatalf("counted %+v", st)
		}
		if !ok {
			return
		}
		if len(pkt) == 0 || (pkt[0]>>4 != 4 && pkt[0]>>4 != 6) {
			t.Fatalf("returned %x", pkt)
		}
		if total, _ := ipTotalLen(pkt); total < len(pkt) {
			t.Fatalf("packet of %d bytes past its total length %d", len(pkt), total)
		}
	})
}
