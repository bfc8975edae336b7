package rewrite

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Pool maps real client addresses to forged ones inside a configured
// prefix per address family. The mapping is a pure function of the client
// address and the seed, so every worker computes it without shared state
// and a client keeps its forged address across restarts. Distinct clients
// may share a forged address; the session layer keeps forged tuples unique
// by choosing another source port when two would collide.
//
// Copy daemons that share a pool (several prod hosts copying to one
// shadow) each take a slot of it (WithSlot): slot i of n forges only the
// host offsets congruent to i modulo n, so no two daemons ever forge the
// same address, and their forged flows cannot collide on the shadow or at
// the agent whatever their clients and ports.
type Pool struct {
	v4, v6      poolRange
	seed        uint64
	slot, slots uint64 // this pool's share: offsets ≡ slot (mod slots); slots ≥ 1
}

type poolRange struct {
	base   [16]byte
	bits   int    // prefix length in the 16-byte form
	count  uint64 // usable host offsets, 1..count
	ok     bool
	prefix netip.Prefix
}

// NewPool builds a pool from at most one IPv4 and one IPv6 prefix.
func NewPool(prefixes []netip.Prefix, seed uint64) (*Pool, error) {
	p := &Pool{seed: seed, slots: 1}
	for _, pfx := range prefixes {
		if !pfx.IsValid() {
			return nil, fmt.Errorf("invalid client pool prefix %v", pfx)
		}
		pfx = pfx.Masked()
		r := &p.v6
		if pfx.Addr().Is4() {
			r = &p.v4
		}
		if r.ok {
			return nil, fmt.Errorf("client pool %v: only one prefix per address family", pfx)
		}
		hostBits := pfx.Addr().BitLen() - pfx.Bits()
		r.base = pfx.Addr().As16()
		r.bits = 128 - hostBits
		r.ok = true
		r.prefix = pfx
		switch {
		case hostBits == 0:
			r.count = 0 // a single address
		case hostBits == 1:
			r.count = 2
		case hostBits >= 64:
			r.count = 1<<63 - 1
		default:
			// Skip the all-zeros and all-ones offsets: some stacks treat
			// them as network or broadcast addresses.
			r.count = 1<<hostBits - 2
		}
	}
	return p, nil
}

// MaxSlots bounds the slots a pool is split into (they are announced to
// the agent as 16-bit numbers).
const MaxSlots = 1<<16 - 1

// WithSlot returns a copy of p that forges only from slot of slots: the
// host offsets congruent to slot modulo slots. Every prefix must hold at
// least slots offsets.
func (p *Pool) WithSlot(slot, slots int) (*Pool, error) {
	if slots < 1 || slots > MaxSlots || slot < 0 || slot >= slots {
		return nil, fmt.Errorf("pool slot %d/%d: want 0 ≤ slot < slots ≤ %d", slot, slots, MaxSlots)
	}
	for _, r := range []*poolRange{&p.v4, &p.v6} {
		if r.ok && slots > 1 && hostOffsets(r) < uint64(slots) {
			return nil, fmt.Errorf("pool slot %d/%d: %v holds only %d addresses", slot, slots, r.prefix, hostOffsets(r))
		}
	}
	q := *p
	q.slot, q.slots = uint64(slot), uint64(slots)
	return &q, nil
}

// hostOffsets is how many addresses a range forges from.
func hostOffsets(r *poolRange) uint64 {
	if r.count == 0 {
		return 1
	}
	return r.count
}

// Prefixes returns the pool's prefixes, IPv4 first.
func (p *Pool) Prefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, r := range []*poolRange{&p.v4, &p.v6} {
		if r.ok {
			out = append(out, r.prefix)
		}
	}
	return out
}

// Slot returns the pool's slot and how many the pool is split into.
func (p *Pool) Slot() (slot, slots int) { return int(p.slot), int(p.slots) }

// Has reports whether the pool forges addresses of a's family.
func (p *Pool) Has(a netip.Addr) bool {
	if p == nil {
		return false
	}
	if a.Is4() || a.Is4In6() {
		return p.v4.ok
	}
	return p.v6.ok
}

// Map returns the forged address for client address a, or a itself when
// the pool has no prefix for its family.
func (p *Pool) Map(a netip.Addr) netip.Addr { return p.MapCopy(a, 0) }

// MapCopy returns the forged address of copy k of client address a's
// connections (copy 0: Map's): the slot's offsets after Map's, in turn,
// so that the copies of one client use distinct addresses while the slot
// holds more than k. The session layer still keeps tuples unique where
// they meet another client's.
func (p *Pool) MapCopy(a netip.Addr, k int) netip.Addr {
	if p == nil {
		return a
	}
	is4 := a.Is4() || a.Is4In6()
	r := &p.v6
	if is4 {
		r = &p.v4
	}
	if !r.ok {
		return a
	}
	out := r.base
	if r.count > 0 {
		// The slot's offsets are slot+1, slot+1+slots, ...: as many as
		// fit in 1..count.
		n := (r.count-p.slot-1)/p.slots + 1
		off := ((mix(a.As16(), p.seed)%n+uint64(k))%n)*p.slots + p.slot + 1
		if r.bits == 127 {
			off-- // a /31 or /127 uses both addresses
		}
		var o [16]byte
		binary.BigEndian.PutUint64(o[8:], off)
		addOffset(&out, &o)
	}
	res := netip.AddrFrom16(out)
	if is4 {
		return res.Unmap()
	}
	return res
}

// addOffset adds o to a as 128-bit big-endian integers (no overflow: the
// offset is below the prefix's host space).
func addOffset(a, o *[16]byte) {
	var carry uint16
	for i := 15; i >= 0; i-- {
		s := uint16(a[i]) + uint16(o[i]) + carry
		a[i], carry = byte(s), s>>8
	}
}

// HashAddrPort hashes an address and port with a seed. The copy daemon
// uses it to pick the worker that owns a flow from either direction.
func HashAddrPort(a [16]byte, port uint16, seed uint64) uint64 {
	return splitmix(mix(a, seed) ^ uint64(port))
}

// mix hashes a 16-byte address with a seed (splitmix64 finaliser over the
// two halves); it only needs to spread addresses evenly.
func mix(a [16]byte, seed uint64) uint64 {
	h := seed ^ 0x9e3779b97f4a7c15
	h = splitmix(h ^ binary.BigEndian.Uint64(a[:8]))
	return splitmix(h ^ binary.BigEndian.Uint64(a[8:]))
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}
