package tunnel

import (
	"crypto/sha256"
	"testing"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
)

// FuzzOpen feeds arbitrary datagrams to the receiver's path: Parse, then
// Open with the session's keys. Nothing panics; nothing but the genuine
// datagrams opens; a datagram opens at most once.
func FuzzOpen(f *testing.F) {
	tr := sha256.Sum256([]byte("fuzz"))
	s, _, err := Keys([]byte("secret"), tr, wire.RoleCopier)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(s.Seal(make([]byte, 64), TypePacket, make([]byte, 20)))
	f.Add(s.Seal(make([]byte, 64), TypeProbe, []byte("token")))
	f.Add([]byte{1, 1, 0, 0})
	f.Add(make([]byte, Overhead))
	f.Fuzz(func(t *testing.T, d []byte) {
		_, o, err := Keys([]byte("secret"), tr, wire.RoleAgent)
		if err != nil {
			t.Fatal(err)
		}
		h, v := Parse(d)
		if v != OK {
			if h != nil {
				t.Fatal("a header with a refusal")
			}
			return
		}
		if h.Session() != o.Session() {
			return // the agent finds no peer
		}
		c := append([]byte(nil), d...)
		inner, v := o.Open(c)
		if v == OK {
			if len(inner) != len(d)-Overhead {
				t.Fatalf("inner of %d bytes from a datagram of %d", len(inner), len(d))
			}
			if _, v := o.Open(append([]byte(nil), d...)); v != Replayed {
				t.Fatalf("opened twice: %v", v)
			}
		}
	})
}
