package pcapfile

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Writer writes a pcap file: nanosecond timestamps, little-endian, one
// link type. It buffers nothing: wrap w in a bufio.Writer.
type Writer struct {
	w   io.Writer
	hdr [pcapRecordLen]byte
}

// NewWriter writes a pcap file header for link type l to w.
func NewWriter(w io.Writer, l LinkType) (*Writer, error) {
	var h [pcapHeaderLen]byte
	le := binary.LittleEndian
	le.PutUint32(h[0:], magicNanos)
	le.PutUint16(h[pcapVersionOff:], 2)
	le.PutUint16(h[pcapVersionOff+2:], 4)
	le.PutUint32(h[pcapSnapLenOff:], MaxRecordLen)
	le.PutUint32(h[pcapLinkTypeOff:], uint32(l))
	if _, err := w.Write(h[:]); err != nil {
		return nil, fmt.Errorf("write pcap header: %w", err)
	}
	return &Writer{w: w}, nil
}

// HeaderLen is the size of a pcap file header, and RecordOverhead what a
// Writer adds to each record's bytes.
const (
	HeaderLen      = pcapHeaderLen
	RecordOverhead = pcapRecordLen
)

// Write writes one record captured at ts (ns since the epoch), whose
// length on the wire was origLen; data past MaxRecordLen is cut.
func (w *Writer) Write(ts int64, data []byte, origLen int) error {
	if len(data) > MaxRecordLen {
		data = data[:MaxRecordLen]
	}
	le := binary.LittleEndian
	le.PutUint32(w.hdr[pcapRecSecOff:], uint32(ts/1e9))
	le.PutUint32(w.hdr[pcapRecFracOff:], uint32(ts%1e9))
	le.PutUint32(w.hdr[pcapRecCapLenOff:], uint32(len(data)))
	le.PutUint32(w.hdr[pcapRecOrigLenOff:], uint32(max(origLen, len(data))))
	if _, err := w.w.Write(w.hdr[:]); err != nil {
		return err
	}
	_, err := w.w.Write(data)
	return err
}

// NgWriter writes a pcapng file: one section, interfaces added as they
// are needed, Enhanced Packet Blocks with nanosecond timestamps
// (if_tsresol 9). It buffers nothing.
type NgWriter struct {
	w     io.Writer
	links []LinkType // interface i's
	buf   []byte
}

// NewNgWriter writes a section header block to w.
func NewNgWriter(w io.Writer) (*NgWriter, error) {
	le := binary.LittleEndian
	b := make([]byte, 28)
	le.PutUint32(b[0:], ngSHB)
	le.PutUint32(b[4:], 28)
	le.PutUint32(b[8:], ngBOM)
	le.PutUint16(b[12:], 1)
	le.PutUint16(b[14:], 0)
	le.PutUint64(b[16:], ^uint64(0)) // section length unknown
	le.PutUint32(b[24:], 28)
	if _, err := w.Write(b); err != nil {
		return nil, fmt.Errorf("write pcapng section header: %w", err)
	}
	return &NgWriter{w: w}, nil
}

// Iface adds an interface of link type l and returns its ID.
func (w *NgWriter) Iface(l LinkType) (int, error) {
	le := binary.LittleEndian
	// linktype, reserved, snaplen; if_tsresol 9; opt_endofopt.
	const n = 8 + 8 + 8 + 4 + 4
	b := make([]byte, n)
	le.PutUint32(b[0:], ngIDB)
	le.PutUint32(b[4:], n)
	le.PutUint16(b[8+idbLinkTypeOff:], uint16(l))
	le.PutUint32(b[8+idbSnapLenOff:], MaxRecordLen)
	le.PutUint16(b[16:], optTSResol)
	le.PutUint16(b[18:], 1)
	b[20] = 9
	le.PutUint32(b[n-4:], n) // opt_endofopt is the zeros before
	if _, err := w.w.Write(b); err != nil {
		return 0, err
	}
	w.links = append(w.links, l)
	return len(w.links) - 1, nil
}

// Write writes one Enhanced Packet Block of interface id.
func (w *NgWriter) Write(id int, ts int64, data []byte, origLen int) error {
	if id < 0 || id >= len(w.links) {
		return fmt.Errorf("pcapng: no interface %d", id)
	}
	if len(data) > MaxRecordLen {
		data = data[:MaxRecordLen]
	}
	le := binary.LittleEndian
	n := ngBlockHeaderLen + epbDataOff + (len(data)+3)&^3 + 4
	w.buf = append(w.buf[:0], make([]byte, n)...)
	b := w.buf
	le.PutUint32(b[0:], ngEPB)
	le.PutUint32(b[4:], uint32(n))
	body := b[ngBlockHeaderLen:]
	le.PutUint32(body[epbIfaceOff:], uint32(id))
	le.PutUint32(body[epbTSHighOff:], uint32(uint64(ts)>>32))
	le.PutUint32(body[epbTSLowOff:], uint32(ts))
	le.PutUint32(body[epbCapLenOff:], uint32(len(data)))
	le.PutUint32(body[epbOrigLenOff:], uint32(max(origLen, len(data))))
	copy(body[epbDataOff:], data)
	le.PutUint32(b[n-4:], uint32(n))
	_, err := w.w.Write(b)
	return err
}
