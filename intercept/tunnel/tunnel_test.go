package tunnel

import (
	"bytes"
	"crypto/sha256"
	"testing"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
)

func pair(t testing.TB, secret string) (copier *Sealer, agent *Opener, ack *Sealer, ackOpen *Opener) {
	t.Helper()
	tr := sha256.Sum256([]byte("transcript " + secret))
	cs, co, err := Keys([]byte(secret), tr, wire.RoleCopier)
	if err != nil {
		t.Fatal(err)
	}
	as, ao, err := Keys([]byte(secret), tr, wire.RoleAgent)
	if err != nil {
		t.Fatal(err)
	}
	return cs, ao, as, co
}

func TestSealOpen(t *testing.T) {
	s, o, as, co := pair(t, "secret")
	inner := []byte("\x45an ip packet, as the copier built it")
	d := s.Seal(make([]byte, len(inner)+Overhead), TypePacket, inner)
	if len(d) != len(inner)+Overhead {
		t.Fatalf("datagram of %d bytes, want %d", len(d), len(inner)+Overhead)
	}
	if bytes.Contains(d, inner[1:]) {
		t.Fatal("the inner packet is in clear in the datagram")
	}
	h, v := Parse(d)
	if v != OK || h.Type() != TypePacket || h.Session() != o.Session() || h.Counter() != 1 {
		t.Fatalf("Parse: %v, type %v session %x counter %d", v, h.Type(), h.Session(), h.Counter())
	}
	got, v := o.Open(d)
	if v != OK || !bytes.Equal(got, inner) {
		t.Fatalf("Open: %v %q", v, got)
	}
	// The agent's direction has a key of its own: a copier's datagram
	// does not open there, nor the other way.
	d2 := s.Seal(make([]byte, len(inner)+Overhead), TypePacket, inner)
	if _, v := co.Open(append([]byte(nil), d2...)); v != BadMAC {
		t.Fatalf("a copier's datagram opened with the agent→copier key: %v", v)
	}
	a := as.Seal(make([]byte, 8+Overhead), TypeProbeAck, []byte("12345678"))
	if got, v := co.Open(a); v != OK || string(got) != "12345678" {
		t.Fatalf("probe ack: %v %q", v, got)
	}
}

func TestOpenRefuses(t *testing.T) {
	s, o, _, _ := pair(t, "secret")
	_, other, _, _ := pair(t, "another secret")
	inner := bytes.Repeat([]byte{0x45}, 60)
	seal := func() []byte { return s.Seal(make([]byte, len(inner)+Overhead), TypePacket, inner) }
	for _, c := range []struct {
		name   string
		mangle func([]byte) []byte
	}{
		{"flipped inner byte", func(d []byte) []byte { d[HeaderLen+3] ^= 1; return d }},
		{"flipped tag byte", func(d []byte) []byte { d[len(d)-1] ^= 0x80; return d }},
		{"changed type", func(d []byte) []byte { d[offType] = byte(TypeProbe); return d }},
		{"changed counter", func(d []byte) []byte { d[offCounter+7] ^= 0x40; return d }},
		{"cut short", func(d []byte) []byte { return d[:len(d)-1] }},
	} {
		d := c.mangle(seal())
		if _, v := Parse(d); v != OK {
			t.Fatalf("%s: Parse %v, want it to pass to the tag check", c.name, v)
		}
		if _, v := o.Open(d); v != BadMAC {
			t.Errorf("%s: %v, want BadMAC", c.name, v)
		}
	}
	if _, v := other.Open(seal()); v != BadMAC {
		t.Errorf("another secret's key: %v, want BadMAC", v)
	}
	// A refused datagram did not enter the window: the genuine one with
	// the counter it claimed still opens.
	d := seal()
	forged := append([]byte(nil), d...)
	forged[HeaderLen] ^= 1
	if _, v := o.Open(forged); v != BadMAC {
		t.Fatalf("forged: %v", v)
	}
	if _, v := o.Open(d); v != OK {
		t.Fatalf("genuine after a forgery of its counter: %v", v)
	}
}

func TestParseRefuses(t *testing.T) {
	s, _, _, _ := pair(t, "secret")
	good := s.Seal(make([]byte, 40+Overhead), TypePacket, make([]byte, 40))
	for _, c := range []struct {
		name string
		d    []byte
		want Verdict
	}{
		{"empty", nil, Malformed},
		{"header only", good[:HeaderLen], Malformed},
		{"shorter than a tag", good[:Overhead-1], Malformed},
		{"version 2", func() []byte { d := bytes.Clone(good); d[0] = 2; return d }(), Malformed},
		{"type 0", func() []byte { d := bytes.Clone(good); d[1] = 0; return d }(), Malformed},
		{"type 9", func() []byte { d := bytes.Clone(good); d[1] = 9; return d }(), Malformed},
		{"reserved set", func() []byte { d := bytes.Clone(good); d[3] = 1; return d }(), Malformed},
		{"too big", make([]byte, MaxDatagram+1), TooBig},
	} {
		if _, v := Parse(c.d); v != c.want {
			t.Errorf("%s: %v, want %v", c.name, v, c.want)
		}
	}
}

func TestReplay(t *testing.T) {
	s, o, _, _ := pair(t, "secret")
	inner := []byte{0x45, 1, 2, 3}
	var sent [][]byte
	for range 10 {
		sent = append(sent, s.Seal(make([]byte, len(inner)+Overhead), TypePacket, inner))
	}
	keep := make([][]byte, len(sent))
	for i, d := range sent {
		keep[i] = bytes.Clone(d)
	}
	// Out of order within the window: all accepted once.
	for _, i := range []int{3, 0, 9, 1, 2, 8, 4, 5, 7, 6} {
		if _, v := o.Open(sent[i]); v != OK {
			t.Fatalf("datagram %d: %v", i, v)
		}
	}
	for i, d := range keep {
		if _, v := o.Open(d); v != Replayed {
			t.Fatalf("replay of %d: %v, want Replayed", i, v)
		}
	}
}

func TestWindow(t *testing.T) {
	var w Window
	accept := func(n uint64) bool {
		if !w.Fresh(n) {
			return false
		}
		w.Mark(n)
		return true
	}
	if accept(0) {
		t.Fatal("counter 0 accepted")
	}
	if !accept(1) || accept(1) {
		t.Fatal("1 once")
	}
	if !accept(WindowSize + 100) {
		t.Fatal("a jump ahead")
	}
	if accept(1) || accept(99) {
		t.Fatal("counters older than the window accepted")
	}
	if !accept(101) || accept(101) {
		t.Fatal("the oldest counter inside the window: once")
	}
	// A jump of more than the ring clears it all: the counters just
	// behind the new top are fresh, the old top too old.
	top := uint64(10 * WindowSize)
	if !accept(top) || !accept(top-1) || !accept(top-WindowSize+1) || accept(top-WindowSize) {
		t.Fatal("after a jump past the ring")
	}
	// Every counter of a long run, shuffled by a few words, once each.
	base := top
	for i := uint64(1); i <= 20000; i++ {
		n := base + i
		if i%3 == 0 {
			n = base + i + 500 // ahead, the skipped ones come later
		}
		_ = accept(n)
	}
	for i := uint64(1); i <= 20000; i++ {
		n := base + i
		if i%3 == 0 {
			n = base + i + 500
		}
		if w.Fresh(n) && w.top-n < WindowSize {
			t.Fatalf("counter %d accepted, yet fresh again", n)
		}
	}
}

func TestKeysNeedSecret(t *testing.T) {
	if _, _, err := Keys(nil, [32]byte{}, wire.RoleCopier); err == nil {
		t.Fatal("keys without a secret")
	}
}

func TestAllocs(t *testing.T) {
	s, o, _, _ := pair(t, "secret")
	inner := bytes.Repeat([]byte{0x45}, 1400)
	buf := make([]byte, MaxDatagram)
	tab := NewTable()
	tab.Add(&Peer{Open: o})
	n := testing.AllocsPerRun(1000, func() {
		d := s.Seal(buf, TypePacket, inner)
		h, v := Parse(d)
		if v != OK {
			t.Fatal(v)
		}
		p := tab.Lookup(h.Session())
		if _, v := p.Open.Open(d); v != OK {
			t.Fatal(v)
		}
	})
	if n != 0 {
		t.Fatalf("%v allocations per datagram sealed and opened", n)
	}
}
