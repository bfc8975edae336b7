package pcapfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/gopacket/pcap"
)

// ipv4 is a minimal IPv4 header (TCP) with a marker byte after it.
func ipv4(marker byte) []byte {
	b := make([]byte, 21)
	b[0] = 0x45
	b[9] = 6
	b[20] = marker
	return b
}

func ipv6(marker byte) []byte {
	b := make([]byte, 41)
	b[0] = 0x60
	b[6] = 6
	b[40] = marker
	return b
}

func ether(etherType uint16, tags int, ip []byte) []byte {
	b := make([]byte, 12)
	for range tags {
		b = binary.BigEndian.AppendUint16(b, etherTypeVLAN)
		b = append(b, 0, 7)
	}
	b = binary.BigEndian.AppendUint16(b, etherType)
	return append(b, ip...)
}

func sll(pktType, proto uint16, ip []byte) []byte {
	b := make([]byte, sllHeaderLen)
	binary.BigEndian.PutUint16(b[sllPktTypeOff:], pktType)
	binary.BigEndian.PutUint16(b[sllProtocolOff:], proto)
	return append(b, ip...)
}

func sll2(pktType byte, proto uint16, ip []byte) []byte {
	b := make([]byte, sll2HeaderLen)
	binary.BigEndian.PutUint16(b[sll2ProtocolOff:], proto)
	b[sll2PktTypeOff] = pktType
	return append(b, ip...)
}

func TestIPOffset(t *testing.T) {
	for _, c := range []struct {
		name  string
		link  LinkType
		frame []byte
		off   int
		kind  Kind
	}{
		{"ethernet v4", LinkEthernet, ether(etherTypeIPv4, 0, ipv4(1)), 14, KindIP},
		{"ethernet v6", LinkEthernet, ether(etherTypeIPv6, 0, ipv6(1)), 14, KindIP},
		{"ethernet one tag", LinkEthernet, ether(etherTypeIPv4, 1, ipv4(1)), 18, KindIP},
		{"ethernet two tags", LinkEthernet, ether(etherTypeIPv4, 2, ipv4(1)), 22, KindIP},
		{"ethernet three tags", LinkEthernet, ether(etherTypeIPv4, 3, ipv4(1)), 0, KindNonIP},
		{"ethernet arp", LinkEthernet, ether(0x0806, 0, ipv4(1)), 0, KindNonIP},
		{"ethernet says v4, holds v5", LinkEthernet, ether(etherTypeIPv4, 0, []byte{0x55}), 0, KindNonIP},
		{"ethernet runt", LinkEthernet, make([]byte, 13), 0, KindNonIP},
		{"ethernet header only", LinkEthernet, ether(etherTypeIPv4, 0, nil), 0, KindNonIP},
		{"sll host", LinkSLL, sll(0, etherTypeIPv4, ipv4(1)), 16, KindIP},
		{"sll outgoing v6", LinkSLL, sll(4, etherTypeIPv6, ipv6(1)), 16, KindIP},
		{"sll other host", LinkSLL, sll(sllOtherHost, etherTypeIPv4, ipv4(1)), 0, KindOtherHost},
		{"sll runt", LinkSLL, make([]byte, 15), 0, KindNonIP},
		{"sll2 host", LinkSLL2, sll2(0, etherTypeIPv4, ipv4(1)), 20, KindIP},
		{"sll2 outgoing v6", LinkSLL2, sll2(4, etherTypeIPv6, ipv6(1)), 20, KindIP},
		{"sll2 other host", LinkSLL2, sll2(sllOtherHost, etherTypeIPv4, ipv4(1)), 0, KindOtherHost},
		{"sll2 arp", LinkSLL2, sll2(0, 0x0806, ipv4(1)), 0, KindNonIP},
		{"raw v4", LinkRaw, ipv4(1), 0, KindIP},
		{"raw v6", LinkIPv6, ipv6(1), 0, KindIP},
		{"raw empty", LinkRaw, nil, 0, KindNonIP},
		{"loopback", LinkNull, append([]byte{2, 0, 0, 0}, ipv4(1)...), 4, KindIP},
		{"unknown link", LinkType(147), ipv4(1), 0, KindNonIP},
	} {
		off, kind := IPOffset(c.link, c.frame)
		if kind != c.kind || (kind == KindIP && off != c.off) {
			t.Errorf("%s: got offset %d kind %d, want %d kind %d", c.name, off, kind, c.off, c.kind)
		}
	}
}

type rec struct {
	ts    int64
	frame []byte
}

func readAll(t *testing.T, b []byte) ([]Record, *Reader) {
	t.Helper()
	r, err := NewReader(bytes.NewReader(b), "test.pcap")
	if err != nil {
		t.Fatal(err)
	}
	var out []Record
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return out, r
		}
		if err != nil {
			t.Fatal(err)
		}
		rec.Frame = bytes.Clone(rec.Frame)
		out = append(out, rec)
	}
}

func TestPcapRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, LinkEthernet)
	if err != nil {
		t.Fatal(err)
	}
	in := []rec{
		{1764669600_123456789, ether(etherTypeIPv4, 0, ipv4(1))},
		{1764669600_123456790, ether(etherTypeIPv6, 1, ipv6(2))},
		{1764669601_000000000, ether(0x0806, 0, nil)},
	}
	for _, r := range in {
		if err := w.Write(r.ts, r.frame, len(r.frame)+100); err != nil {
			t.Fatal(err)
		}
	}
	got, r := readAll(t, buf.Bytes())
	if len(got) != len(in) {
		t.Fatalf("read %d records, wrote %d", len(got), len(in))
	}
	for i := range in {
		if got[i].Time != in[i].ts || !bytes.Equal(got[i].Frame, in[i].frame) || got[i].OrigLen != len(in[i].frame)+100 || got[i].Link != LinkEthernet {
			t.Errorf("record %d: got %+v, want ts %d frame %x", i, got[i], in[i].ts, in[i].frame)
		}
	}
	if r.Format() != "pcap" || r.Offset() != int64(buf.Len()) {
		t.Errorf("format %s offset %d, want pcap at %d", r.Format(), r.Offset(), buf.Len())
	}
	// NextIP skips the ARP frame and counts it.
	r2, _ := NewReader(bytes.NewReader(buf.Bytes()), "x")
	n := 0
	for {
		ip, ts, _, err := r2.NextIP()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if ts != in[n].ts || ip[0]>>4 != []byte{4, 6}[n] {
			t.Errorf("NextIP %d: ts %d version %d", n, ts, ip[0]>>4)
		}
		n++
	}
	if n != 2 || r2.Stats().NonIP != 1 || r2.Stats().Records != 3 {
		t.Errorf("NextIP returned %d packets, stats %+v; want 2, 1 non-IP of 3", n, r2.Stats())
	}
}

// pcapHeader builds a pcap file header by hand.
func pcapHeader(order binary.ByteOrder, magic uint32, link uint32) []byte {
	h := make([]byte, pcapHeaderLen)
	order.PutUint32(h, magic)
	order.PutUint16(h[4:], 2)
	order.PutUint16(h[6:], 4)
	order.PutUint32(h[pcapSnapLenOff:], 65535)
	order.PutUint32(h[pcapLinkTypeOff:], link)
	return h
}

func pcapRecord(order binary.ByteOrder, sec, frac uint32, data []byte) []byte {
	h := make([]byte, pcapRecordLen)
	order.PutUint32(h, sec)
	order.PutUint32(h[4:], frac)
	order.PutUint32(h[8:], uint32(len(data)))
	order.PutUint32(h[12:], uint32(len(data)))
	return append(h, data...)
}

func TestPcapByteOrdersAndResolutions(t *testing.T) {
	for _, c := range []struct {
		name  string
		order binary.ByteOrder
		magic uint32
		frac  uint32
		want  int64
	}{
		{"little micro", binary.LittleEndian, magicMicros, 250000, 7_250000000},
		{"big micro", binary.BigEndian, magicMicros, 250000, 7_250000000},
		{"little nano", binary.LittleEndian, magicNanos, 250000, 7_000250000},
		{"big nano", binary.BigEndian, magicNanos, 250000, 7_000250000},
	} {
		for _, link := range []struct {
			lt    LinkType
			frame []byte
		}{
			{LinkSLL, sll(0, etherTypeIPv4, ipv4(9))},
			{LinkSLL2, sll2(4, etherTypeIPv6, ipv6(9))},
			{LinkRaw, ipv4(9)},
		} {
			b := append(pcapHeader(c.order, c.magic, uint32(link.lt)), pcapRecord(c.order, 7, c.frac, link.frame)...)
			got, _ := readAll(t, b)
			if len(got) != 1 || got[0].Time != c.want || got[0].Link != link.lt || !bytes.Equal(got[0].Frame, link.frame) {
				t.Errorf("%s %v: got %+v, want one record at %d", c.name, link.lt, got, c.want)
			}
			if off, kind := IPOffset(got[0].Link, got[0].Frame); kind != KindIP || got[0].Frame[off+len(got[0].Frame)-off-1] != 9 {
				t.Errorf("%s %v: IP not found (kind %d)", c.name, link.lt, kind)
			}
		}
	}
}

// ngBlock builds a pcapng block of type typ around body (padded).
func ngBlock(order orderApp, typ uint32, body []byte) []byte {
	for len(body)%4 != 0 {
		body = append(body, 0)
	}
	n := uint32(12 + len(body))
	b := order.AppendUint32(nil, typ)
	b = order.AppendUint32(b, n)
	b = append(b, body...)
	return order.AppendUint32(b, n)
}

func ngSection(order orderApp) []byte {
	body := order.AppendUint32(nil, ngBOM)
	body = order.AppendUint16(body, 1)
	body = order.AppendUint16(body, 0)
	body = order.AppendUint64(body, ^uint64(0))
	return ngBlock(order, ngSHB, body)
}

// ngIDBlock is an interface block with optional tsresol and tsoffset.
func ngIDBlock(order orderApp, link LinkType, resol int, offset int64) []byte {
	body := order.AppendUint16(nil, uint16(link))
	body = order.AppendUint16(body, 0)
	body = order.AppendUint32(body, 0)
	if resol >= 0 {
		body = order.AppendUint16(body, optTSResol)
		body = order.AppendUint16(body, 1)
		body = append(body, byte(resol), 0, 0, 0)
	}
	if offset != 0 {
		body = order.AppendUint16(body, optTSOffset)
		body = order.AppendUint16(body, 8)
		body = order.AppendUint64(body, uint64(offset))
	}
	body = order.AppendUint32(body, 0) // opt_endofopt
	return ngBlock(order, ngIDB, body)
}

func ngEPBlock(order orderApp, iface uint32, ts uint64, data []byte) []byte {
	body := order.AppendUint32(nil, iface)
	body = order.AppendUint32(body, uint32(ts>>32))
	body = order.AppendUint32(body, uint32(ts))
	body = order.AppendUint32(body, uint32(len(data)))
	body = order.AppendUint32(body, uint32(len(data)))
	return ngBlock(order, ngEPB, append(body, data...))
}

func TestPcapng(t *testing.T) {
	le, be := binary.LittleEndian, binary.BigEndian
	var b []byte
	b = append(b, ngSection(le)...)
	b = append(b, ngIDBlock(le, LinkEthernet, -1, 0)...)   // iface 0: microseconds
	b = append(b, ngIDBlock(le, LinkSLL2, 9, 0)...)        // iface 1: nanoseconds
	b = append(b, ngIDBlock(le, LinkRaw, 0x80|20, 100)...) // iface 2: 2^-20 s, 100 s offset
	b = append(b, ngBlock(le, 5, make([]byte, 16))...)     // interface statistics: skipped
	b = append(b, ngEPBlock(le, 0, 5_000001, ether(etherTypeIPv4, 0, ipv4(1)))...)
	b = append(b, ngEPBlock(le, 1, 5_000000002, sll2(0, etherTypeIPv6, ipv6(2)))...)
	b = append(b, ngEPBlock(le, 2, 3<<20|1<<19, ipv4(3))...) // 3.5 s + 100 s
	spb := le.AppendUint32(nil, 21)
	b = append(b, ngBlock(le, ngSPB, append(spb, ether(etherTypeIPv4, 0, ipv4(4))[:21]...))...)
	// A second section, big-endian, numbering interfaces afresh.
	b = append(b, ngSection(be)...)
	b = append(b, ngIDBlock(be, LinkSLL, 3, 0)...) // milliseconds
	b = append(b, ngEPBlock(be, 0, 9_001, sll(4, etherTypeIPv4, ipv4(5)))...)

	got, r := readAll(t, b)
	want := []struct {
		link LinkType
		ts   int64
	}{
		{LinkEthernet, 5_000001000}, {LinkSLL2, 5_000000002}, {LinkRaw, 103_500000000},
		{LinkEthernet, 103_500000000}, {LinkSLL, 9_001000000},
	}
	if len(got) != len(want) {
		t.Fatalf("read %d records, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		if got[i].Link != w.link || got[i].Time != w.ts {
			t.Errorf("record %d: link %v time %d, want %v %d", i, got[i].Link, got[i].Time, w.link, w.ts)
		}
		off, kind := IPOffset(got[i].Link, got[i].Frame)
		if i != 3 && (kind != KindIP || got[i].Frame[len(got[i].Frame)-1] != byte(i+1)) {
			t.Errorf("record %d: kind %d off %d frame %x", i, kind, off, got[i].Frame)
		}
	}
	if r.Stats().Skipped != 1 || r.Format() != "pcapng" {
		t.Errorf("stats %+v format %s: want one skipped block, pcapng", r.Stats(), r.Format())
	}
}

// TestNgWriterLibpcap checks what NgWriter and Writer write against
// libpcap's reader, an independent one.
func TestNgWriterLibpcap(t *testing.T) {
	dir := t.TempDir()
	frames := [][]byte{ether(etherTypeIPv4, 0, ipv4(1)), ether(etherTypeIPv6, 0, ipv6(2)), ether(etherTypeIPv4, 0, ipv4(3))}
	times := []int64{1764669600_000000001, 1764669600_500000000, 1764669601_999999999}
	var ng, pc bytes.Buffer
	nw, err := NewNgWriter(&ng)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := nw.Iface(LinkEthernet)
	pw, _ := NewWriter(&pc, LinkEthernet)
	for i, f := range frames {
		if err := nw.Write(id, times[i], f, len(f)); err != nil {
			t.Fatal(err)
		}
		pw.Write(times[i], f, len(f))
	}
	for name, b := range map[string][]byte{"x.pcapng": ng.Bytes(), "x.pcap": pc.Bytes()} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		h, err := pcap.OpenOffline(path) // microseconds: gopacket asks for no more
		if err != nil {
			t.Fatalf("libpcap opens %s: %v", name, err)
		}
		for i := 0; ; i++ {
			data, ci, err := h.ReadPacketData()
			if err == io.EOF {
				if i != len(frames) {
					t.Errorf("%s: libpcap read %d packets, want %d", name, i, len(frames))
				}
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if !bytes.Equal(data, frames[i]) || ci.Timestamp.UnixNano()/1000 != times[i]/1000 {
				t.Errorf("%s packet %d: libpcap read %x at %d, want %x at %d", name, i, data, ci.Timestamp.UnixNano(), frames[i], times[i])
			}
		}
		h.Close()
		got, _ := readAll(t, b)
		for i := range got {
			if got[i].Time != times[i] || !bytes.Equal(got[i].Frame, frames[i]) {
				t.Errorf("%s record %d: read back %+v", name, i, got[i])
			}
		}
	}
}

func TestErrors(t *testing.T) {
	le := binary.LittleEndian
	good := append(pcapHeader(le, magicMicros, 1), pcapRecord(le, 1, 0, ether(etherTypeIPv4, 0, ipv4(1)))...)
	ngGood := append(append(ngSection(le), ngIDBlock(le, LinkEthernet, -1, 0)...), ngEPBlock(le, 0, 1, ipv4(1))...)
	badVersion := pcapHeader(le, magicMicros, 1)
	le.PutUint16(badVersion[4:], 3)
	hugeRecord := append(pcapHeader(le, magicMicros, 1), pcapRecord(le, 1, 0, nil)...)
	le.PutUint32(hugeRecord[pcapHeaderLen+8:], MaxRecordLen+1)
	badTrailer := bytes.Clone(ngGood)
	le.PutUint32(badTrailer[len(badTrailer)-4:], 4)
	for _, c := range []struct {
		name   string
		b      []byte
		is     error
		offset int64
	}{
		{"empty", nil, ErrNotCapture, 0},
		{"three bytes", []byte{0xd4, 0xc3, 0xb2}, ErrNotCapture, 0},
		{"text", []byte("GET / HTTP/1.1\r\n"), ErrNotCapture, 0},
		{"truncated file header", good[:20], ErrTruncated, 0},
		{"pcap version", badVersion, ErrMalformed, 4},
		{"unknown link type", pcapHeader(le, magicMicros, 147), ErrLinkType, 20},
		{"truncated record header", good[:pcapHeaderLen+10], ErrTruncated, 24},
		{"truncated record data", good[:len(good)-3], ErrTruncated, 24},
		{"record past the bound", hugeRecord, ErrMalformed, 32},
		{"truncated section header", ngGood[:20], ErrTruncated, 0},
		{"truncated block", ngGood[:len(ngGood)-2], ErrTruncated, 28 + 24},
		{"block trailer", badTrailer, ErrMalformed, int64(len(badTrailer) - 4)},
		{"interface link type", append(ngSection(le), ngIDBlock(le, LinkType(147), -1, 0)...), ErrLinkType, 28 + 8},
		{"packet of no interface", append(ngSection(le), ngEPBlock(le, 0, 1, ipv4(1))...), ErrMalformed, 28 + 8},
		{"block length", append(ngSection(le), 6, 0, 0, 0, 13, 0, 0, 0), ErrMalformed, 28 + 4},
	} {
		err := readErr(c.b)
		var fe *FormatError
		if !errors.Is(err, c.is) || !errors.As(err, &fe) || fe.Offset != c.offset || fe.File != "bad.pcap" {
			t.Errorf("%s: got %v, want %v at offset %d of bad.pcap", c.name, err, c.is, c.offset)
		}
	}
}

// readErr reads b whole and returns the error that stopped it.
func readErr(b []byte) error {
	r, err := NewReader(bytes.NewReader(b), "bad.pcap")
	if err != nil {
		return err
	}
	for {
		if _, err := r.Next(); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

func TestNextAllocs(t *testing.T) {
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, LinkEthernet)
	f := ether(etherTypeIPv4, 0, ipv4(1))
	for i := range 2000 {
		w.Write(int64(i), f, len(f))
	}
	r, _ := NewReader(bytes.NewReader(buf.Bytes()), "x")
	r.NextIP() // the buffer is sized by the first
	if n := testing.AllocsPerRun(1000, func() {
		if _, _, _, err := r.NextIP(); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("NextIP allocates %v times per packet, want 0", n)
	}
}

func FuzzReader(f *testing.F) {
	le := binary.LittleEndian
	f.Add(append(pcapHeader(le, magicMicros, 1), pcapRecord(le, 1, 0, ether(etherTypeIPv4, 0, ipv4(1)))...))
	f.Add(append(pcapHeader(binary.BigEndian, magicNanos, 276), pcapRecord(binary.BigEndian, 1, 0, sll2(0, etherTypeIPv4, ipv4(1)))...))
	f.Add(append(append(ngSection(le), ngIDBlock(le, LinkSLL, 0x80|10, 5)...), ngEPBlock(le, 0, 1, sll(0, etherTypeIPv6, ipv6(1)))...))
	f.Add([]byte("not a capture"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := NewReader(bytes.NewReader(b), "fuzz")
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) || fe.Offset < 0 || fe.Offset > int64(len(b)) {
				t.Fatalf("NewReader: %v", err)
			}
			return
		}
		last := r.Offset()
		for i := 0; ; i++ {
			rec, err := r.Next()
			if err == io.EOF {
				if r.Offset() != int64(len(b)) {
					t.Fatalf("EOF at offset %d of %d", r.Offset(), len(b))
				}
				return
			}
			if err != nil {
				var fe *FormatError
				if !errors.As(err, &fe) || fe.Offset < last || fe.Offset > int64(len(b)) {
					t.Fatalf("record %d: %v (last good offset %d)", i, err, last)
				}
				return
			}
			if len(rec.Frame) > MaxRecordLen || rec.OrigLen < len(rec.Frame) || r.Offset() <= last {
				t.Fatalf("record %d: %d bytes, orig %d, offset %d after %d", i, len(rec.Frame), rec.OrigLen, r.Offset(), last)
			}
			if off, kind := IPOffset(rec.Link, rec.Frame); kind == KindIP && (off >= len(rec.Frame) || (rec.Frame[off]>>4 != 4 && rec.Frame[off]>>4 != 6)) {
				t.Fatalf("record %d: IP at %d of %d bytes", i, off, len(rec.Frame))
			}
			last = r.Offset()
		}
	})
}

// orderApp is a byte order that appends: binary.LittleEndian or BigEndian.
type orderApp interface {
	binary.ByteOrder
	binary.AppendByteOrder
}
