package wire

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"testing"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

func TestReplyBatch(t *testing.T) {
	var b ReplyBatch // the zero value is ready
	if b.Len() != 0 || b.Frame() != nil || b.Size() != frameHeader+countLen || b.Full() {
		t.Fatalf("zero batch: len %d size %d full %v", b.Len(), b.Size(), b.Full())
	}
	for _, n := range []int{0, MinReplyHeader - 1, MaxReplyLen + 1, 1500} {
		if b.Add(1, make([]byte, n)) || b.Full() || b.Len() != 0 {
			t.Fatalf("Add of a %d-byte reply: accepted or reported full", n)
		}
	}
	var want []reply
	for round := range 3 { // reuse across Reset
		b.Reset()
		want = want[:0]
		for i := 0; ; i++ {
			hdr := testHeader(MinReplyHeader+(i+round)%(MaxReplyLen-MinReplyHeader+1), byte(i))
			if !b.Add(int64(i)-5, hdr) {
				break
			}
			want = append(want, reply{int64(i) - 5, string(hdr)})
			hdr[0]++ // Add copied it
			if b.Size() != len(b.Frame()) {
				t.Fatalf("Size %d, frame %d bytes", b.Size(), len(b.Frame()))
			}
		}
		if b.Len() != MaxRepliesPerFrame || !b.Full() {
			t.Fatalf("batch stopped at %d records, Full %v", b.Len(), b.Full())
		}
		if b.Add(0, make([]byte, MinReplyHeader)) || b.Len() != MaxRepliesPerFrame {
			t.Fatal("full batch took another record")
		}
		typ, p := readOne(t, b.Frame())
		got, err := parse(typ, p)
		if typ != TypeReplies || err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("round %d: type %v, %v, records equal %v", round, typ, err, reflect.DeepEqual(got, want))
		}
	}
	b.Reset()
	if b.Len() != 0 || b.Frame() != nil || b.Full() {
		t.Fatal("Reset did not empty the batch")
	}
}

func TestFlowBatch(t *testing.T) {
	var b FlowBatch
	for _, typ := range []MsgType{TypeRegister, TypeDeregister} {
		b.Reset(typ)
		if b.Type() != typ || b.Len() != 0 || b.Frame() != nil || b.Full() {
			t.Fatalf("after Reset(%v): type %v len %d", typ, b.Type(), b.Len())
		}
		if b.Add(mixed) || b.Add(mixed.Reverse()) || b.Full() || b.Len() != 0 {
			t.Fatal("mixed-family flow accepted or reported full")
		}
		var want []rewrite.Tuple
		for i := 0; ; i++ {
			f := flow4
			if i%3 == 0 {
				f = flow6
			}
			f.SrcPort = uint16(i)
			if !b.Add(f) {
				break
			}
			want = append(want, f)
			if b.Size() != len(b.Frame()) {
				t.Fatalf("Size %d, frame %d bytes", b.Size(), len(b.Frame()))
			}
		}
		if b.Len() != MaxFlowsPerFrame || !b.Full() {
			t.Fatalf("batch stopped at %d flows", b.Len())
		}
		gotTyp, p := readOne(t, b.Frame())
		got, err := parse(gotTyp, p)
		if gotTyp != typ || err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("type %v, %v, flows equal %v", gotTyp, err, reflect.DeepEqual(got, want))
		}
	}
	b.Reset(TypeRegister)
	b.Add(flow4)
	if typ, p := readOne(t, b.Frame()); typ != TypeRegister || len(p) != countLen+FlowLen {
		t.Fatalf("one flow: type %v, %d bytes", typ, len(p))
	}
}

func mustPanic(t *testing.T, name string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s did not panic", name)
		}
	}()
	f()
}

func TestMisusePanics(t *testing.T) {
	mustPanic(t, "AppendFlows with no flows", func() { AppendFlows(nil, TypeRegister, nil) })
	mustPanic(t, "AppendFlows with too many flows", func() {
		AppendFlows(nil, TypeRegister, make([]rewrite.Tuple, MaxFlowsPerFrame+1))
	})
	mustPanic(t, "AppendFlows with type ping", func() { AppendFlows(nil, TypePing, []rewrite.Tuple{flow4}) })
	mustPanic(t, "AppendFlows with a mixed flow", func() { AppendFlows(nil, TypeRegister, []rewrite.Tuple{flow4, mixed}) })
	mustPanic(t, "FlowBatch.Reset with type replies", func() { new(FlowBatch).Reset(TypeReplies) })
	mustPanic(t, "FlowBatch.Add before Reset", func() { new(FlowBatch).Add(flow4) })
	// The limits themselves are fine.
	p := AppendFlows(nil, TypeDeregister, make([]rewrite.Tuple, MaxFlowsPerFrame))
	if n, err := ForEachFlow(p[frameHeader:], func(rewrite.Tuple) {}); n != MaxFlowsPerFrame || err != nil {
		t.Fatalf("max flows: %d, %v", n, err)
	}
	if _, err := ForEachFlow(p[frameHeader:len(p)-1], func(rewrite.Tuple) {}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("max flows cut: %v", err)
	}
}

// TestReplyPrefixes: a reply cut at its headers plus a prefix of its
// payload (what the agent relays) crosses the wire whole, for every
// family, prefix and payload length, and decodes as the packet it was cut
// from: the IP header still announces the whole payload, the bytes
// present are its first ones.
func TestReplyPrefixes(t *testing.T) {
	ends := map[string][2]netip.AddrPort{
		"v4": {netip.MustParseAddrPort("198.18.0.2:80"), netip.MustParseAddrPort("198.19.0.9:40000")},
		"v6": {netip.MustParseAddrPort("[2001:2::2]:80"), netip.MustParseAddrPort("[2001:2:0:ff::9]:40000")},
	}
	for fam, e := range ends {
		for _, prefix := range []int{0, 1, 64, MaxReplyPrefix} {
			// Header-only, shorter than the prefix, exactly it, longer.
			for _, plen := range []int{0, 1, 5, 63, 64, 65, 255, 256, 1400} {
				seg := rewrite.Segment{Src: e[0], Dst: e[1], Seq: 1, Ack: 2, Flags: rewrite.FlagACK | rewrite.FlagPSH,
					Window: 9, Options: []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}, Payload: testHeader(plen, byte(prefix))}
				pkt := make([]byte, seg.Len())
				if _, err := seg.Put(pkt); err != nil {
					t.Fatal(err)
				}
				var p rewrite.Packet
				if err := p.Decode(pkt); err != nil {
					t.Fatal(err)
				}
				keep := min(plen, prefix)
				cut := pkt[:len(p.Headers())+keep]
				var b ReplyBatch
				if !b.Add(int64(plen), cut) {
					t.Fatalf("%s prefix %d payload %d: a %d-byte reply refused", fam, prefix, plen, len(cut))
				}
				_, fp := readOne(t, b.Frame())
				n, err := ForEachReply(fp, func(ts int64, got []byte) {
					var q rewrite.Packet
					if err := q.DecodeHeader(got); err != nil {
						t.Fatalf("%s prefix %d payload %d: %v", fam, prefix, plen, err)
					}
					if ts != int64(plen) || q.PayloadLen() != plen || !bytes.Equal(q.Payload(), seg.Payload[:keep]) ||
						!bytes.Equal(q.Headers(), p.Headers()) {
						t.Fatalf("%s prefix %d payload %d: ts %d, payload length %d, %d bytes present, want %d",
							fam, prefix, plen, ts, q.PayloadLen(), len(q.Payload()), keep)
					}
				})
				if n != 1 || err != nil {
					t.Fatalf("%s prefix %d payload %d: %d records, %v", fam, prefix, plen, n, err)
				}
			}
		}
	}
}
