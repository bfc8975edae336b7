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
