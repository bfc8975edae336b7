package intercept

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/internal/compare"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// h2Frame appends one HTTP/2 frame.
func h2Frame(dst []byte, typ, flags byte, stream uint32, p []byte) []byte {
	dst = append(dst, byte(len(p)>>16), byte(len(p)>>8), byte(len(p)), typ, flags)
	dst = binary.BigEndian.AppendUint32(dst, stream)
	return append(dst, p...)
}

// segmentTo builds a shadow reply to forged port p at seq with flags.
func segmentTo(t testing.TB, p uint16, seq uint32, flags uint8, payload []byte) []byte {
	t.Helper()
	seg := rewrite.Segment{
		Src: shadow, Dst: netip.AddrPortFrom(forged.Addr(), p), Seq: seq, Ack: 9,
		Flags: flags, Window: 1000, Payload: payload,
	}
	b := make([]byte, seg.Len())
	if _, err := seg.Put(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// records returns the H2 records a relayed reply carries, as
// (stream, status) pairs, checking that its IP header keeps plen.
func records(t testing.TB, rep []byte, plen int) [][2]uint32 {
	t.Helper()
	var p rewrite.Packet
	if err := p.DecodeHeader(rep); err != nil {
		t.Fatal(err)
	}
	if p.PayloadLen() != plen {
		t.Fatalf("relayed payload length %d, want the shadow's %d", p.PayloadLen(), plen)
	}
	var got [][2]uint32
	b := rep[p.IPHeaderLen()+len(p.TCP()):] // records may run past the payload length the IP header keeps
	for len(b) > 0 {
		rec, rest, ok := compare.ParseH2Record(b)
		if !ok {
			t.Fatalf("not a record: %x", b)
		}
		got = append(got, [2]uint32{rec.Stream, uint32(rec.Status)})
		b = rest
	}
	return got
}

// TestH2RecordsRelayed: a copy daemon that names the shadow's port in
// H2Ports is sent, for each reply of an HTTP/2 flow, one record per
// HEADERS or RST_STREAM frame ending in it, whatever the frames' layout
// across segments (coalesced, split mid-frame, retransmitted); a flow
// whose reply is HTTP/1 gets its prefix as any; a gap stops them
// (the lost record alone from then on).
func TestH2RecordsRelayed(t *testing.T) {
	r := newRig(t, AgentConfig{}, ClientConfig{ReplyPrefix: 16, H2Ports: []uint16{shadow.Port()}})
	r.connected()
	r.register(flow(1))
	r.register(flow(2))
	const isn = 1000
	next := func(what string) []byte {
		t.Helper()
		select {
		case got := <-r.replies:
			return got
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: nothing relayed; agent %+v", what, r.agent.Stats())
			return nil
		}
	}
	r.src.Push(segmentTo(t, 1, isn, rewrite.FlagSYN|rewrite.FlagACK, nil), time.Now())
	next("SYN-ACK")

	var s []byte
	s = h2Frame(s, 4, 0, 0, []byte{0, 3, 0, 0, 0, 100})              // SETTINGS
	s = h2Frame(s, 1, 4, 1, []byte{0x88, 0x5f, 0x87})                // 200
	s = h2Frame(s, 0, 0, 1, bytes.Repeat([]byte("b"), 300))          // DATA
	s = h2Frame(s, 1, 4, 3, []byte{0x48, 3, '5', '0', '3', 0x5f, 1}) // 503, a literal
	cut := len(s) + 4                                                // inside the next HEADERS frame
	s = h2Frame(s, 1, 5, 5, []byte{0x8d})                            // 404, END_STREAM
	s = h2Frame(s, 3, 0, 7, []byte{0, 0, 0, 8})                      // RST_STREAM
	s = h2Frame(s, 1, 4, 9, []byte{0x8e})                            // 500

	seq := uint32(isn + 1)
	for i, want := range []struct {
		from, to int
		recs     [][2]uint32
	}{
		{0, cut, [][2]uint32{{1, 200}, {3, 503}}},
		{0, cut, nil}, // a retransmission: walked already
		{cut, len(s), [][2]uint32{{5, 404}, {7, uint32(compare.H2StatusReset)}, {9, 500}}},
	} {
		r.src.Push(segmentTo(t, 1, seq+uint32(want.from), rewrite.FlagACK, s[want.from:want.to]), time.Now())
		got := records(t, next("segment"), want.to-want.from)
		if len(got) != len(want.recs) || (len(got) > 0 && !equalRecs(got, want.recs)) {
			t.Fatalf("segment %d: records %v, want %v", i, got, want.recs)
		}
	}
	// A gap: the next segment starts past what was walked.
	gap := h2Frame(nil, 1, 4, 11, []byte{0x88})
	r.src.Push(segmentTo(t, 1, seq+uint32(len(s))+10, rewrite.FlagACK, gap), time.Now())
	lost := [][2]uint32{{0, uint32(compare.H2StatusLost)}}
	r.src.Push(segmentTo(t, 1, seq+uint32(len(s))+10+uint32(len(gap)), rewrite.FlagACK, gap), time.Now())
	for range 2 {
		if got := records(t, next("after a gap"), len(gap)); !equalRecs(got, lost) {
			t.Fatalf("after a gap: records %v, want the lost record alone", got)
		}
	}

	// An HTTP/1 reply on the same port: its prefix, as any reply's.
	h1 := []byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	pkt := segmentTo(t, 2, 5, rewrite.FlagACK, h1)
	r.src.Push(pkt, time.Now())
	checkCut(t, next("HTTP/1"), pkt, 16)

	st := r.agent.Stats()
	if st.H2Records != 5 || st.H2Lost != 1 || st.H2NotH2 != 1 || st.H2Dropped != 0 || st.H2Walked != 4 {
		t.Fatalf("agent stats %+v: want 5 records, 1 lost, 1 not HTTP/2, 4 walked", st)
	}
}

func equalRecs(a, b [][2]uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestH2RecordsBoundedAndCut: a reply with more HEADERS frames than
// records fit in wire.MaxReplyPrefix relays as many as fit, counting the
// rest; a reply cut by the snap length loses the flow's walk.
func TestH2RecordsBoundedAndCut(t *testing.T) {
	a := NewAgent(AgentConfig{Secret: testSecret}, nil, nil, slog.New(slog.DiscardHandler))
	a.h2.setPorts(map[uint16]int{shadow.Port(): 1})
	key := flow(1).Reverse()
	a.h2.add(key)
	s := h2Frame(nil, 4, 0, 0, nil)
	const many = 40
	for i := range many {
		s = h2Frame(s, 1, 4, uint32(2*i+1), []byte{0x88})
	}
	pkt := segmentTo(t, 1, 1, rewrite.FlagACK, s)
	var h capturedHdr
	if !relayHeader(pkt, &h) {
		t.Fatal("not relayed")
	}
	a.h2Walk(pkt, &h)
	got := records(t, h.cut(0), len(s))
	fit := wire.MaxReplyPrefix / 10
	if len(got) != fit || a.Stats().H2Dropped != uint64(many-fit) {
		t.Fatalf("%d records relayed, %d dropped; want %d and %d", len(got), a.Stats().H2Dropped, fit, many-fit)
	}

	a.h2.add(key) // a fresh walk
	cutAt := rewrite.IPv4MinHeaderLen + rewrite.TCPMinHeaderLen + 30
	h = capturedHdr{}
	if !relayHeader(pkt[:cutAt], &h) {
		t.Fatal("not relayed")
	}
	a.h2Walk(pkt[:cutAt], &h)
	if got := records(t, h.cut(0), len(s)); len(got) != 3 || got[2][1] != uint32(compare.H2StatusLost) || a.Stats().H2Lost != 1 {
		t.Fatalf("a cut reply: records %v, lost %d; want the 2 it holds whole, and the walk lost", got, a.Stats().H2Lost)
	}
}

// TestH2WalkNoAllocs: walking a reply allocates nothing.
func TestH2WalkNoAllocs(t *testing.T) {
	a := NewAgent(AgentConfig{Secret: testSecret}, nil, nil, slog.New(slog.DiscardHandler))
	a.h2.setPorts(map[uint16]int{shadow.Port(): 1})
	key := flow(1).Reverse()
	a.h2.add(key)
	frames := h2Frame(nil, 1, 4, 1, []byte{0x88})
	frames = h2Frame(frames, 0, 1, 1, bytes.Repeat([]byte("x"), 500))
	seq := uint32(1)
	first := segmentTo(t, 1, seq, rewrite.FlagACK, h2Frame(nil, 4, 0, 0, nil))
	var h capturedHdr
	relayHeader(first, &h)
	a.h2Walk(first, &h)
	seq += 9
	pkts := make([][]byte, 64)
	for i := range pkts {
		pkts[i] = segmentTo(t, 1, seq, rewrite.FlagACK, frames)
		seq += uint32(len(frames))
	}
	i := 0
	allocs := testing.AllocsPerRun(50, func() {
		var h capturedHdr
		relayHeader(pkts[i], &h)
		a.h2Walk(pkts[i], &h)
		i++
	})
	if allocs != 0 || a.Stats().H2Records != 51 {
		t.Fatalf("%v allocations per walked reply, %d records", allocs, a.Stats().H2Records)
	}
}

// FuzzH2Relay: whatever a walked flow's replies hold, cut into segments
// anywhere, each relayed reply carries whole records the copier parses,
// within wire.MaxReplyPrefix, and never a panic.
func FuzzH2Relay(f *testing.F) {
	s := h2Frame(nil, 4, 0, 0, nil)
	s = h2Frame(s, 1, 4, 1, []byte{0x88})
	s = h2Frame(s, 1, 0x2c, 3, []byte{2, 0, 0, 0, 0, 9, 0x48, 3, '5', '0', '3', 0, 0})
	s = h2Frame(s, 3, 0, 5, []byte{0, 0, 0, 8})
	f.Add(s, uint16(7))
	f.Add([]byte("HTTP/1.1 200 OK\r\n\r\n"), uint16(3))
	f.Fuzz(func(t *testing.T, b []byte, cut uint16) {
		a := NewAgent(AgentConfig{Secret: testSecret}, nil, nil, slog.New(slog.DiscardHandler))
		a.h2.setPorts(map[uint16]int{shadow.Port(): 1})
		a.h2.add(flow(1).Reverse())
		k := int(cut)%1400 + 1
		for off := 0; off < len(b); off += k {
			pkt := segmentTo(t, 1, uint32(100+off), rewrite.FlagACK, b[off:min(off+k, len(b))])
			var h capturedHdr
			if !relayHeader(pkt, &h) {
				t.Fatal("not relayed")
			}
			a.h2Walk(pkt, &h)
			if !h.recs {
				continue
			}
			recs := h.hdr[h.hl:h.n]
			if len(recs) > wire.MaxReplyPrefix || !compare.ValidH2Records(recs) {
				t.Fatalf("records %x", recs)
			}
		}
	})
}

// BenchmarkH2Walk: what walking costs the capture goroutine per reply
// (1400-byte segments, a HEADERS and a DATA frame each), beside the
// relay's copy of the headers alone (relayHeader).
func BenchmarkH2Walk(b *testing.B) {
	frames := h2Frame(nil, 1, 4, 1, []byte{0x88, 0x5f, 0x87})
	frames = h2Frame(frames, 0, 1, 1, bytes.Repeat([]byte("x"), 1400-len(frames)-9))
	mk := func(seq uint32) []byte { return segmentTo(b, 1, seq, rewrite.FlagACK, frames) }
	for _, walk := range []bool{false, true} {
		name := "headers-only"
		if walk {
			name = "walked"
		}
		b.Run(name, func(b *testing.B) {
			a := NewAgent(AgentConfig{Secret: testSecret}, nil, nil, slog.New(slog.DiscardHandler))
			if walk {
				a.h2.setPorts(map[uint16]int{shadow.Port(): 1})
				a.h2.add(flow(1).Reverse())
			}
			first := segmentTo(b, 1, 0, rewrite.FlagACK, h2Frame(nil, 4, 0, 0, nil))
			var h capturedHdr
			relayHeader(first, &h)
			a.h2Walk(first, &h)
			pkt := mk(9)
			seq := uint32(9)
			b.SetBytes(int64(len(frames)))
			b.ReportAllocs()
			for b.Loop() {
				binary.BigEndian.PutUint32(pkt[24:], seq) // the TCP sequence number
				seq += uint32(len(frames))
				var h capturedHdr
				relayHeader(pkt, &h)
				a.h2Walk(pkt, &h)
			}
			if st := a.Stats(); walk && (st.H2Lost != 0 || st.H2Records < uint64(b.N)) {
				b.Fatalf("walk lost or recordless: %+v", st)
			}
		})
	}
}
