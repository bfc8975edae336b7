package pcapfile

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
)

// pcap's layout (draft-ietf-opsawg-pcap): a file header, then records of
// a header and the captured bytes.
const (
	pcapHeaderLen     = 24
	pcapVersionOff    = 4 // major, minor: 2, 4
	pcapSnapLenOff    = 16
	pcapLinkTypeOff   = 20 // LinkType in the low 16 bits; FCS flags above
	pcapRecordLen     = 16
	pcapRecSecOff     = 0
	pcapRecFracOff    = 4 // micro- or nanoseconds, as the magic says
	pcapRecCapLenOff  = 8
	pcapRecOrigLenOff = 12

	magicMicros = 0xa1b2c3d4
	magicNanos  = 0xa1b23c4d
)

// pcapng's layout (draft-ietf-opsawg-pcapng): blocks of a type, a total
// length, a body and the length again.
const (
	ngBlockHeaderLen = 8 // type, total length
	ngBlockMinLen    = 12
	ngSHB            = 0x0a0d0d0a
	ngBOM            = 0x1a2b3c4d
	ngIDB            = 1
	ngPB             = 2 // obsolete Packet Block
	ngSPB            = 3
	ngEPB            = 6
	// maxBlockLen bounds a block: a record's largest data with room for
	// its options. A larger claim is a corrupt file.
	maxBlockLen = MaxRecordLen + 64<<10

	idbLinkTypeOff = 0
	idbSnapLenOff  = 4
	idbOptionsOff  = 8
	epbIfaceOff    = 0
	epbTSHighOff   = 4
	epbTSLowOff    = 8
	epbCapLenOff   = 12
	epbOrigLenOff  = 16
	epbDataOff     = 20
	pbIfaceOff     = 0 // 16 bits, then 16 bits of drops; the rest as the EPB's
	spbOrigLenOff  = 0
	spbDataOff     = 4

	optEnd       = 0
	optTSResol   = 9
	optTSOffset  = 14
	optHeaderLen = 4
)

// Stats counts what a Reader skipped.
type Stats struct {
	Records   uint64 // packet records read
	NonIP     uint64 // of those, frames that hold no IP packet
	OtherHost uint64 // of those, cooked frames to another host
	Skipped   uint64 // pcapng blocks of kinds that hold no packet (statistics, names, ...)
}

// ngIface is one interface of a pcapng section.
type ngIface struct {
	link   LinkType
	snap   int
	resol  uint8 // if_tsresol: 10^-n, or 2^-n with the high bit set
	offset int64 // if_tsoffset, seconds
}

// Reader reads a pcap or pcapng file, record by record.
type Reader struct {
	name string
	br   *bufio.Reader
	off  int64  // bytes consumed so far: where the next block or record starts
	buf  []byte // the current record, reused
	st   Stats

	ng     bool
	order  binary.ByteOrder
	link   LinkType // pcap's; pcapng's are per interface
	snap   int
	nanos  bool
	ifaces []ngIface
	last   int64 // the previous record's time, for Simple Packet Blocks
}

// NewReader reads the file header from r; name is the file's, for errors.
func NewReader(r io.Reader, name string) (*Reader, error) {
	rd := &Reader{name: name, br: bufio.NewReaderSize(r, 64<<10)}
	magic, err := rd.br.Peek(4)
	if err != nil {
		if len(magic) == 0 {
			return nil, rd.errAt(0, fmt.Errorf("%w: the file is empty", ErrNotCapture))
		}
		return nil, rd.errAt(0, fmt.Errorf("%w: %d bytes", ErrNotCapture, len(magic)))
	}
	switch {
	case binary.LittleEndian.Uint32(magic) == ngSHB:
		rd.ng = true
		if err := rd.readSHB(); err != nil {
			return nil, err
		}
		return rd, nil
	case binary.LittleEndian.Uint32(magic) == magicMicros || binary.LittleEndian.Uint32(magic) == magicNanos:
		rd.order = binary.LittleEndian
	case binary.BigEndian.Uint32(magic) == magicMicros || binary.BigEndian.Uint32(magic) == magicNanos:
		rd.order = binary.BigEndian
	default:
		return nil, rd.errAt(0, fmt.Errorf("%w: it starts with %x", ErrNotCapture, magic))
	}
	return rd, rd.readPcapHeader()
}

// File is a Reader of a file it opened.
type File struct {
	*Reader
	f *os.File
}

// Open opens a capture file and reads its header.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	r, err := NewReader(f, path)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &File{Reader: r, f: f}, nil
}

// Close closes the file.
func (f *File) Close() error { return f.f.Close() }

// Stats returns what the Reader counted so far.
func (r *Reader) Stats() Stats { return r.st }

// Offset returns where the next record starts.
func (r *Reader) Offset() int64 { return r.off }

// Format names the file's format: "pcap" or "pcapng".
func (r *Reader) Format() string {
	if r.ng {
		return "pcapng"
	}
	return "pcap"
}

func (r *Reader) errAt(off int64, err error) error {
	return &FormatError{File: r.name, Offset: off, Err: err}
}

// read reads the next n bytes, part of what starts at offset at, into the
// reused buffer. At a clean end of file, with atStart, it returns io.EOF;
// elsewhere an end is ErrTruncated, at what's start.
func (r *Reader) read(n int, at int64, atStart bool, what string) ([]byte, error) {
	if cap(r.buf) < n {
		r.buf = make([]byte, n)
	}
	b := r.buf[:n]
	got, err := io.ReadFull(r.br, b)
	switch {
	case err == nil:
		r.off += int64(n)
		return b, nil
	case errors.Is(err, io.EOF) && got == 0 && atStart:
		return nil, io.EOF
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return nil, r.errAt(at, fmt.Errorf("%w: %s, %d bytes short", ErrTruncated, what, n-got))
	}
	return nil, fmt.Errorf("read %s: %w", r.name, err)
}

func (r *Reader) readPcapHeader() error {
	h, err := r.read(pcapHeaderLen, 0, false, "the pcap file header")
	if err != nil {
		return err
	}
	r.nanos = r.order.Uint32(h) == magicNanos
	if major := r.order.Uint16(h[pcapVersionOff:]); major != 2 {
		return r.errAt(pcapVersionOff, fmt.Errorf("%w: pcap version %d, want 2", ErrMalformed, major))
	}
	r.snap = int(r.order.Uint32(h[pcapSnapLenOff:]))
	r.link = LinkType(r.order.Uint32(h[pcapLinkTypeOff:]))
	if !r.link.Supported() {
		return r.errAt(pcapLinkTypeOff, fmt.Errorf("%w: %v; %s", ErrLinkType, r.link, supportedHint))
	}
	return nil
}

// Next returns the next record, or io.EOF after the last.
func (r *Reader) Next() (Record, error) {
	if r.ng {
		return r.nextBlock()
	}
	at := r.off
	h, err := r.read(pcapRecordLen, at, true, "a record header")
	if err != nil {
		return Record{}, err
	}
	sec, frac := int64(r.order.Uint32(h[pcapRecSecOff:])), int64(r.order.Uint32(h[pcapRecFracOff:]))
	capLen, origLen := int(r.order.Uint32(h[pcapRecCapLenOff:])), int(r.order.Uint32(h[pcapRecOrigLenOff:]))
	if capLen > max(MaxRecordLen, r.snap) || capLen < 0 {
		return Record{}, r.errAt(at+pcapRecCapLenOff, fmt.Errorf("%w: a record of %d bytes, past the bound of %d", ErrMalformed, capLen, max(MaxRecordLen, r.snap)))
	}
	if !r.nanos {
		frac *= 1000
	}
	data, err := r.read(capLen, at, false, "a record")
	if err != nil {
		return Record{}, err
	}
	r.st.Records++
	return Record{Link: r.link, Time: sec*1e9 + frac, Frame: data, OrigLen: max(origLen, capLen)}, nil
}

// NextIP returns the next record holding an IP packet, from its IP
// header on; frames without one are counted and skipped.
func (r *Reader) NextIP() (ip []byte, ts int64, origLen int, err error) {
	for {
		rec, err := r.Next()
		if err != nil {
			return nil, 0, 0, err
		}
		off, kind := IPOffset(rec.Link, rec.Frame)
		switch kind {
		case KindIP:
			return rec.Frame[off:], rec.Time, rec.OrigLen - off, nil
		case KindOtherHost:
			r.st.OtherHost++
		default:
			r.st.NonIP++
		}
	}
}

// readSHB reads a section header block: its byte order starts a new
// section, whose interfaces are numbered from 0 again.
func (r *Reader) readSHB() error {
	at := r.off
	h, err := r.read(ngBlockMinLen, at, false, "a section header block")
	if err != nil {
		return err
	}
	switch {
	case binary.LittleEndian.Uint32(h[8:]) == ngBOM:
		r.order = binary.LittleEndian
	case binary.BigEndian.Uint32(h[8:]) == ngBOM:
		r.order = binary.BigEndian
	default:
		return r.errAt(at+8, fmt.Errorf("%w: section header's byte-order magic %x", ErrMalformed, h[8:12]))
	}
	n := int(r.order.Uint32(h[4:]))
	if n < ngBlockMinLen+16 || n%4 != 0 || n > maxBlockLen {
		return r.errAt(at+4, fmt.Errorf("%w: section header block of %d bytes", ErrMalformed, n))
	}
	rest, err := r.read(n-ngBlockMinLen, at, false, "a section header block")
	if err != nil {
		return err
	}
	if major := r.order.Uint16(rest); major != 1 {
		return r.errAt(at+12, fmt.Errorf("%w: pcapng version %d, want 1", ErrMalformed, major))
	}
	if t := int(r.order.Uint32(rest[len(rest)-4:])); t != n {
		return r.errAt(at+int64(n)-4, fmt.Errorf("%w: block length %d at its end, %d at its start", ErrMalformed, t, n))
	}
	r.ifaces = r.ifaces[:0]
	return nil
}

// nextBlock reads pcapng blocks until one holds a packet.
func (r *Reader) nextBlock() (Record, error) {
	for {
		at := r.off
		peek, err := r.br.Peek(4)
		if len(peek) == 0 && errors.Is(err, io.EOF) {
			return Record{}, io.EOF
		}
		if len(peek) == 4 && binary.LittleEndian.Uint32(peek) == ngSHB {
			if err := r.readSHB(); err != nil {
				return Record{}, err
			}
			continue
		}
		h, err := r.read(ngBlockHeaderLen, at, false, "a block header")
		if err != nil {
			return Record{}, err
		}
		typ, n := r.order.Uint32(h), int(r.order.Uint32(h[4:]))
		if n < ngBlockMinLen || n%4 != 0 || n > maxBlockLen {
			return Record{}, r.errAt(at+4, fmt.Errorf("%w: block of type %d claims %d bytes", ErrMalformed, typ, n))
		}
		b, err := r.read(n-ngBlockHeaderLen, at, false, "a block")
		if err != nil {
			return Record{}, err
		}
		body := b[:len(b)-4]
		if t := int(r.order.Uint32(b[len(b)-4:])); t != n {
			return Record{}, r.errAt(at+int64(n)-4, fmt.Errorf("%w: block length %d at its end, %d at its start", ErrMalformed, t, n))
		}
		bodyAt := at + ngBlockHeaderLen
		switch typ {
		case ngIDB:
			if err := r.addIface(body, bodyAt); err != nil {
				return Record{}, err
			}
		case ngEPB, ngPB:
			return r.packetBlock(typ, body, bodyAt)
		case ngSPB:
			return r.simpleBlock(body, bodyAt)
		default:
			r.st.Skipped++
		}
	}
}

func (r *Reader) addIface(body []byte, at int64) error {
	if len(body) < idbOptionsOff {
		return r.errAt(at, fmt.Errorf("%w: interface block of %d bytes", ErrMalformed, len(body)))
	}
	ifc := ngIface{link: LinkType(r.order.Uint16(body[idbLinkTypeOff:])), snap: int(r.order.Uint32(body[idbSnapLenOff:])), resol: 6}
	if !ifc.link.Supported() {
		return r.errAt(at+idbLinkTypeOff, fmt.Errorf("%w: interface %d has %v; %s", ErrLinkType, len(r.ifaces), ifc.link, supportedHint))
	}
	opts, optAt := body[idbOptionsOff:], at+idbOptionsOff
	for len(opts) >= optHeaderLen {
		code, n := r.order.Uint16(opts), int(r.order.Uint16(opts[2:]))
		if code == optEnd {
			break
		}
		padded := optHeaderLen + (n+3)&^3
		if padded > len(opts) {
			return r.errAt(optAt, fmt.Errorf("%w: option %d of %d bytes past its block", ErrMalformed, code, n))
		}
		v := opts[optHeaderLen : optHeaderLen+n]
		switch {
		case code == optTSResol && n == 1:
			ifc.resol = v[0]
			if res := v[0] &^ 0x80; (v[0]&0x80 == 0 && res > 18) || res > 63 {
				return r.errAt(optAt, fmt.Errorf("%w: timestamp resolution %#x", ErrMalformed, v[0]))
			}
		case code == optTSOffset && n == 8:
			ifc.offset = int64(r.order.Uint64(v))
		}
		opts, optAt = opts[padded:], optAt+int64(padded)
	}
	r.ifaces = append(r.ifaces, ifc)
	return nil
}

// packetBlock reads an Enhanced Packet Block, or an obsolete Packet
// Block, which differs only in a 16-bit interface ID.
func (r *Reader) packetBlock(typ uint32, body []byte, at int64) (Record, error) {
	if len(body) < epbDataOff {
		return Record{}, r.errAt(at, fmt.Errorf("%w: packet block of %d bytes", ErrMalformed, len(body)))
	}
	id := int(r.order.Uint32(body[epbIfaceOff:]))
	if typ == ngPB {
		id = int(r.order.Uint16(body[pbIfaceOff:]))
	}
	ifc, err := r.iface(id, at)
	if err != nil {
		return Record{}, err
	}
	capLen, origLen := int(r.order.Uint32(body[epbCapLenOff:])), int(r.order.Uint32(body[epbOrigLenOff:]))
	if capLen > len(body)-epbDataOff || capLen < 0 {
		return Record{}, r.errAt(at+epbCapLenOff, fmt.Errorf("%w: %d bytes captured in a block holding %d", ErrMalformed, capLen, len(body)-epbDataOff))
	}
	ts := uint64(r.order.Uint32(body[epbTSHighOff:]))<<32 | uint64(r.order.Uint32(body[epbTSLowOff:]))
	r.st.Records++
	r.last = ifc.nanos(ts)
	return Record{Link: ifc.link, Time: r.last, Frame: body[epbDataOff : epbDataOff+capLen], OrigLen: max(origLen, capLen)}, nil
}

// simpleBlock reads a Simple Packet Block: interface 0 and no timestamp;
// it is given the previous record's, so that it keeps its place in time.
func (r *Reader) simpleBlock(body []byte, at int64) (Record, error) {
	if len(body) < spbDataOff {
		return Record{}, r.errAt(at, fmt.Errorf("%w: simple packet block of %d bytes", ErrMalformed, len(body)))
	}
	ifc, err := r.iface(0, at)
	if err != nil {
		return Record{}, err
	}
	origLen := int(r.order.Uint32(body[spbOrigLenOff:]))
	capLen := min(origLen, len(body)-spbDataOff)
	if ifc.snap > 0 {
		capLen = min(capLen, ifc.snap)
	}
	r.st.Records++
	return Record{Link: ifc.link, Time: r.last, Frame: body[spbDataOff : spbDataOff+capLen], OrigLen: max(origLen, capLen)}, nil
}

func (r *Reader) iface(id int, at int64) (*ngIface, error) {
	if id < 0 || id >= len(r.ifaces) {
		return nil, r.errAt(at, fmt.Errorf("%w: a packet of interface %d, but the section describes %d", ErrMalformed, id, len(r.ifaces)))
	}
	return &r.ifaces[id], nil
}

// nanos converts a timestamp in the interface's resolution to
// nanoseconds since the epoch.
func (ifc *ngIface) nanos(ts uint64) int64 {
	var ns uint64
	switch res := uint(ifc.resol &^ 0x80); {
	case ifc.resol&0x80 != 0: // 2^-res seconds
		hi, lo := bits.Mul64(ts, 1e9)
		if res == 0 {
			ns = lo
		} else {
			ns = hi<<(64-res) | lo>>res
		}
	case res <= 9:
		ns = ts * pow10[9-res]
	default:
		ns = ts / pow10[res-9]
	}
	return int64(ns) + ifc.offset*1e9
}

var pow10 = [...]uint64{1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10}
