package tcpstate

import (
	"math/rand/v2"
	"testing"
)

func TestSeqWraparound(t *testing.T) {
	cases := []struct {
		a, b   Seq
		before bool
	}{
		{1, 2, true},
		{2, 1, false},
		{0xffffffff, 0, true}, // 0 follows 2^32-1
		{0, 0xffffffff, false},
		{0xfffffff0, 0x10, true},
		{0x7fffffff, 0x80000000, true},
		{5, 5, false},
	}
	for _, c := range cases {
		if got := c.a.Before(c.b); got != c.before {
			t.Errorf("%#x.Before(%#x) = %v, want %v", c.a, c.b, got, c.before)
		}
		if got := c.b.After(c.a); got != c.before {
			t.Errorf("%#x.After(%#x) = %v, want %v", c.b, c.a, got, c.before)
		}
	}
	if got := Seq(0xfffffffe).Add(4); got != 2 {
		t.Errorf("Add across wrap = %#x, want 2", got)
	}
	if got := Seq(3).Sub(0xfffffffe); got != 5 {
		t.Errorf("Sub across wrap = %d, want 5", got)
	}
	if got := MaxSeq(0xfffffff0, 4); got != 4 {
		t.Errorf("MaxSeq across wrap = %#x, want 4", got)
	}
	if !Seq(1).InRange(0xffffffff, 3) || Seq(3).InRange(0xffffffff, 3) {
		t.Errorf("InRange across wrap is wrong")
	}
}

func TestSeqOrderingIsConsistent(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 10000; i++ {
		a := Seq(r.Uint32())
		d := int(r.Uint32() >> 2) // well under 2^31
		b := a.Add(d)
		if d > 0 && (!a.Before(b) || !b.After(a) || a.AfterEq(b)) {
			t.Fatalf("a=%#x b=a+%d ordering wrong", a, d)
		}
		if b.Sub(a) != d {
			t.Fatalf("Sub(%#x,%#x)=%d want %d", b, a, b.Sub(a), d)
		}
	}
}
