package rewrite

import (
	"encoding/binary"
	"net/netip"
)

// Field setters only the tests use: they exercise the incremental checksum
// updates (put16, put32, patch, setAddr) on every field, while the
// datapath rewrites through Retarget, SetSrc, SetAck, SetFlags and
// SetTimestamps.

func (p *Packet) SetDst(addr netip.Addr, port uint16) bool {
	if !p.setAddr(addr, p.srcAddrOff()+p.addrLen()) {
		return false
	}
	p.put16(TCPDstPortOffset, port)
	return true
}

func (p *Packet) SetSeq(v uint32)    { p.put32(TCPSeqNumOffset, v) }
func (p *Packet) SetWindow(v uint16) { p.put16(TCPWindowOffset, v) }

func (p *Packet) SetMSS(o *Options, mss uint16) bool {
	if o.mssOff == 0 {
		return false
	}
	var v [2]byte
	binary.BigEndian.PutUint16(v[:], mss)
	p.patch(o.mssOff+2, v[:])
	o.MSS = mss
	return true
}

func (b IPv4) SetTotalLen(n int) {
	old := binary.BigEndian.Uint16(b[IPv4TotalLenOffset:])
	binary.BigEndian.PutUint16(b[IPv4TotalLenOffset:], uint16(n))
	b.SetChecksum(Update16(b.Checksum(), old, uint16(n)))
}

func (b IPv4) SetID(id uint16) {
	old := b.ID()
	binary.BigEndian.PutUint16(b[IPv4IDOffset:], id)
	b.SetChecksum(Update16(b.Checksum(), old, id))
}
