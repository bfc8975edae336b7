package capture

import (
	"encoding/binary"
	"testing"
	"unsafe"
)

// FuzzParseFrame walks a block of the ring from whatever the kernel might
// have written: every packet parseFrame accepts lies inside the block, its
// data starting at or after its own header, and a walk of any length ends.
func FuzzParseFrame(f *testing.F) {
	// One well-formed block: a header, then two IPv4 packets.
	good := make([]byte, 512)
	put := func(off, next, net, snap int, pt byte) {
		binary.NativeEndian.PutUint32(good[off+pktNextOffset:], uint32(next))
		binary.NativeEndian.PutUint32(good[off+pktSnapLen:], uint32(snap))
		binary.NativeEndian.PutUint32(good[off+pktLen:], uint32(snap))
		binary.NativeEndian.PutUint16(good[off+pktNet:], uint16(net))
		binary.BigEndian.PutUint16(good[off+sllProtocol:], etherTypeIPv4)
		good[off+sllPktType] = pt
		good[off+net] = 0x45
	}
	put(48, 160, 96, 40, 0)
	put(208, 0, 96, 60, packetOutgoing)
	f.Add(good, uint16(48), uint8(2))
	f.Add(good[:100], uint16(48), uint8(1))
	f.Add(make([]byte, 64), uint16(0), uint8(3))
	f.Add([]byte{}, uint16(0), uint8(1))
	f.Fuzz(func(t *testing.T, block []byte, first uint16, n uint8) {
		off := int(first)
		for range n {
			fr, ok := parseFrame(block, off)
			if !ok {
				return
			}
			if len(fr.data) > 0 {
				start := int(uintptr(unsafe.Pointer(&fr.data[0])) - uintptr(unsafe.Pointer(&block[0])))
				if start < off || start+len(fr.data) > len(block) || cap(fr.data) != len(fr.data) {
					t.Fatalf("packet at %d: data [%d, %d) cap %d in a block of %d", off, start, start+len(fr.data), cap(fr.data), len(block))
				}
			}
			off = fr.next
		}
	})
}
