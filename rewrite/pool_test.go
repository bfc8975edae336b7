package rewrite

import (
	"math/big"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

func mustPool(tb testing.TB, seed uint64, prefixes ...string) *Pool {
	tb.Helper()
	var ps []netip.Prefix
	for _, s := range prefixes {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	p, err := NewPool(ps, seed)
	if err != nil {
		tb.Fatalf("NewPool(%v): %v", prefixes, err)
	}
	return p
}

// hostRange returns the first (all-zeros host) and last (all-ones host)
// addresses of pfx, computed bit by bit.
func hostRange(pfx netip.Prefix) (first, last netip.Addr) {
	pfx = pfx.Masked()
	a := pfx.Addr().AsSlice()
	for i := pfx.Bits(); i < len(a)*8; i++ {
		a[i/8] |= 0x80 >> (i % 8)
	}
	last, _ = netip.AddrFromSlice(a)
	return pfx.Addr(), last
}

func TestPoolDeterministic(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	p1 := mustPool(t, 42, "10.64.0.0/16", "fd00:1::/64")
	p2 := mustPool(t, 42, "10.64.0.0/16", "fd00:1::/64")
	p3 := mustPool(t, 43, "10.64.0.0/16", "fd00:1::/64")
	same := 0
	const n = 2000
	for i := range n {
		a := randAddr(r, i%2 == 1)
		m := p1.Map(a)
		if p1.Map(a) != m || p2.Map(a) != m {
			t.Fatalf("Map(%v) is not a function of the address and seed: %v, %v, %v", a, m, p1.Map(a), p2.Map(a))
		}
		if p3.Map(a) == m {
			same++
		}
	}
	// Another seed gives another mapping (a /16 collides by chance with
	// probability 1/65534 per client; a /64 essentially never).
	if same > 5 {
		t.Fatalf("%d of %d clients map identically under two seeds", same, n)
	}
}

// TestPoolInPrefix maps random clients through pools of every prefix
// length and checks the results stay inside the prefix and, for host
// spaces of 4 addresses or more, avoid the all-zeros and all-ones hosts.
func TestPoolInPrefix(t *testing.T) {
	r := rand.New(rand.NewPCG(33, 34))
	var prefixes []netip.Prefix
	for bits := 0; bits <= 32; bits++ {
		prefixes = append(prefixes, netip.PrefixFrom(randAddr(r, false), bits).Masked())
	}
	for bits := 0; bits <= 128; bits++ {
		prefixes = append(prefixes, netip.PrefixFrom(randAddr(r, true), bits).Masked())
	}
	for _, pfx := range prefixes {
		pool, err := NewPool([]netip.Prefix{pfx}, r.Uint64())
		if err != nil {
			t.Fatalf("NewPool(%v): %v", pfx, err)
		}
		first, last := hostRange(pfx)
		hostBits := pfx.Addr().BitLen() - pfx.Bits()
		for i := range 300 {
			a := randAddr(r, i%2 == 1)
			m := pool.Map(a)
			if a.Is4() != pfx.Addr().Is4() {
				if m != a {
					t.Fatalf("pool %v mapped %v of the other family to %v", pfx, a, m)
				}
				continue
			}
			if !pfx.Contains(m) {
				t.Fatalf("pool %v mapped %v outside the prefix: %v", pfx, a, m)
			}
			if hostBits >= 2 && (m == first || m == last) {
				t.Fatalf("pool %v mapped %v to %v, the all-zeros or all-ones host", pfx, a, m)
			}
		}
	}
}

// TestPoolSmallPrefixes enumerates what small pools produce.
func TestPoolSmallPrefixes(t *testing.T) {
	r := rand.New(rand.NewPCG(35, 36))
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"198.51.100.7/32", []string{"198.51.100.7"}},
		{"198.51.100.6/31", []string{"198.51.100.6", "198.51.100.7"}},
		{"198.51.100.4/30", []string{"198.51.100.5", "198.51.100.6"}},
		{"198.51.100.7/30", []string{"198.51.100.5", "198.51.100.6"}}, // masked
		{"198.51.100.8/29", []string{"198.51.100.9", "198.51.100.10", "198.51.100.11", "198.51.100.12", "198.51.100.13", "198.51.100.14"}},
		{"2001:db8::7/128", []string{"2001:db8::7"}},
		{"2001:db8::6/127", []string{"2001:db8::6", "2001:db8::7"}},
		{"2001:db8::4/126", []string{"2001:db8::5", "2001:db8::6"}},
		{"2001:db8::ff00/125", []string{"2001:db8::ff01", "2001:db8::ff02", "2001:db8::ff03", "2001:db8::ff04", "2001:db8::ff05", "2001:db8::ff06"}},
	} {
		t.Run(tc.prefix, func(t *testing.T) {
			pool := mustPool(t, r.Uint64(), tc.prefix)
			v6 := netip.MustParsePrefix(tc.prefix).Addr().Is6()
			seen := map[string]int{}
			for range 3000 {
				seen[pool.Map(randAddr(r, v6)).String()]++
			}
			var got []string
			for a := range seen {
				got = append(got, a)
			}
			slices.Sort(got)
			want := slices.Clone(tc.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("pool %s produced %v, want %v", tc.prefix, seen, tc.want)
			}
		})
	}
}

// TestPoolCountLimits checks, for every prefix length, that the range of
// host offsets Map draws from (1..count, or 0..1 for a two-address pool)
// excludes the all-ones host. Sampling cannot see this for large host
// spaces, where the all-ones host has a 2^-63 chance per client.
func TestPoolCountLimits(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		maxBits := 32
		base := "0.0.0.0"
		if v6 {
			maxBits, base = 128, "::"
		}
		for bits := 0; bits <= maxBits; bits++ {
			pfx := netip.PrefixFrom(netip.MustParseAddr(base), bits)
			pool, err := NewPool([]netip.Prefix{pfx}, 1)
			if err != nil {
				t.Fatal(err)
			}
			r := pool.v4
			if v6 {
				r = pool.v6
			}
			hostBits := maxBits - bits
			allOnes := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), uint(hostBits)), big.NewInt(1))
			count := new(big.Int).SetUint64(r.count)
			switch {
			case hostBits == 0:
				if r.count != 0 {
					t.Errorf("%v: count %d, want 0 (a single address)", pfx, r.count)
				}
			case hostBits == 1:
				if r.count != 2 {
					t.Errorf("%v: count %d, want 2", pfx, r.count)
				}
			case count.Sign() <= 0 || count.Cmp(allOnes) >= 0:
				t.Errorf("%v: host offsets 1..%d reach the all-ones host %v", pfx, r.count, allOnes)
			}
		}
	}
}

func TestPoolFamilies(t *testing.T) {
	v4 := netip.MustParseAddr("203.0.113.50")
	v6 := netip.MustParseAddr("2001:db8:aa::50")
	mapped := netip.AddrFrom16(v4.As16())

	only4 := mustPool(t, 1, "10.0.0.0/8")
	if m := only4.Map(v6); m != v6 {
		t.Errorf("v4-only pool mapped %v to %v", v6, m)
	}
	if m := only4.Map(mapped); !m.Is4() || !netip.MustParsePrefix("10.0.0.0/8").Contains(m) || m != only4.Map(v4) {
		t.Errorf("v4-only pool mapped %v to %v, and %v to %v", mapped, m, v4, only4.Map(v4))
	}
	if !only4.Has(v4) || !only4.Has(mapped) || only4.Has(v6) {
		t.Errorf("v4-only pool Has: %v %v %v", only4.Has(v4), only4.Has(mapped), only4.Has(v6))
	}

	only6 := mustPool(t, 1, "fd00::/48")
	for _, a := range []netip.Addr{v4, mapped} {
		if m := only6.Map(a); m != a {
			t.Errorf("v6-only pool mapped %v to %v", a, m)
		}
	}
	if only6.Has(v4) || only6.Has(mapped) || !only6.Has(v6) {
		t.Errorf("v6-only pool Has: %v %v %v", only6.Has(v4), only6.Has(mapped), only6.Has(v6))
	}

	for name, p := range map[string]*Pool{"nil": nil, "empty": mustPool(t, 1)} {
		for _, a := range []netip.Addr{v4, v6, mapped} {
			if m := p.Map(a); m != a || p.Has(a) {
				t.Errorf("%s pool: Map(%v) = %v, Has = %v", name, a, m, p.Has(a))
			}
		}
	}
}

func TestNewPoolErrors(t *testing.T) {
	for _, tc := range []struct {
		prefixes []netip.Prefix
		ok       bool
	}{
		{nil, true},
		{[]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/64")}, true},
		{[]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.0.0/16")}, false},
		{[]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8")}, false},
		{[]netip.Prefix{netip.MustParsePrefix("fd00::/64"), netip.MustParsePrefix("fd01::/64")}, false},
		{[]netip.Prefix{{}}, false},
		{[]netip.Prefix{netip.PrefixFrom(netip.MustParseAddr("10.0.0.0"), 33)}, false},
	} {
		p, err := NewPool(tc.prefixes, 0)
		if (err == nil) != tc.ok || (p != nil) != tc.ok {
			t.Errorf("NewPool(%v) = %v, %v; want ok=%v", tc.prefixes, p, err, tc.ok)
		}
	}
}

func TestPoolSpread(t *testing.T) {
	r := rand.New(rand.NewPCG(37, 38))
	const n = 10000
	for _, tc := range []struct {
		prefix string
		client func(i int) netip.Addr
		min    int
	}{
		// 10k clients into 65534 addresses: about 9270 distinct expected.
		{"10.64.0.0/16", func(int) netip.Addr { return randAddr(r, false) }, 9000},
		{"10.64.0.0/16", func(i int) netip.Addr { return netip.AddrFrom4([4]byte{172, 16, byte(i >> 8), byte(i)}) }, 9000},
		{"fd00:1::/112", func(int) netip.Addr { return randAddr(r, true) }, 9000},
		{"fd00:1::/64", func(i int) netip.Addr {
			return netip.AddrFrom16([16]byte{0x20, 1, 0xd, 0xb8, 15: byte(i), 14: byte(i >> 8)})
		}, n},
		// Clients in different networks with the same interface ID.
		{"fd00:1::/112", func(i int) netip.Addr {
			return netip.AddrFrom16([16]byte{0x20, 1, 0xd, 0xb8, byte(i >> 8), byte(i), 15: 1})
		}, 9000},
	} {
		pool := mustPool(t, 7, tc.prefix)
		seen := map[netip.Addr]bool{}
		for i := range n {
			seen[pool.Map(tc.client(i))] = true
		}
		if len(seen) < tc.min {
			t.Errorf("%d clients into %s hit %d distinct addresses, want at least %d", n, tc.prefix, len(seen), tc.min)
		}
	}

	// Every address of a /24 gets its share: 100 clients expected each.
	pool := mustPool(t, 9, "192.0.2.0/24")
	hits := map[netip.Addr]int{}
	for range 254 * 100 {
		hits[pool.Map(randAddr(r, false))]++
	}
	for a, n := range hits {
		if n < 50 || n > 150 {
			t.Errorf("%v got %d of %d clients, want about 100", a, n, 254*100)
		}
	}
	if len(hits) != 254 {
		t.Errorf("a /24 pool used %d addresses, want 254", len(hits))
	}
}

func TestHashAddrPort(t *testing.T) {
	r := rand.New(rand.NewPCG(39, 40))
	a := randAddr(r, true).As16()
	h := HashAddrPort(a, 443, 1)
	if HashAddrPort(a, 443, 1) != h {
		t.Fatal("HashAddrPort is not deterministic")
	}
	low, high := a, a
	low[15] ^= 1
	high[0] ^= 1
	for name, other := range map[string]uint64{
		"port":                      HashAddrPort(a, 444, 1),
		"seed":                      HashAddrPort(a, 443, 2),
		"last byte of the address":  HashAddrPort(low, 443, 1),
		"first byte of the address": HashAddrPort(high, 443, 1),
	} {
		if other == h {
			t.Errorf("changing the %s does not change the hash", name)
		}
	}
	// Flows spread evenly over workers: 1000 expected per bucket.
	const workers = 16
	var buckets [workers]int
	for i := range workers * 1000 {
		addr := randAddr(r, i%2 == 0).As16()
		buckets[HashAddrPort(addr, uint16(r.Uint32()), 5)%workers]++
	}
	for i, n := range buckets {
		if n < 850 || n > 1150 {
			t.Errorf("worker %d got %d of %d flows: %v", i, n, workers*1000, buckets)
		}
	}
	// Sequential ports of one address spread too.
	buckets = [workers]int{}
	for port := range workers * 1000 {
		buckets[HashAddrPort(a, uint16(port), 5)%workers]++
	}
	for i, n := range buckets {
		if n < 850 || n > 1150 {
			t.Errorf("sequential ports: worker %d got %d: %v", i, n, buckets)
		}
	}
}

// TestPoolSlots: the slots of one pool forge disjoint addresses, each
// inside the prefix and off its all-zeros and all-ones hosts; slot 0 of 1
// is the pool itself; a slot the prefix cannot hold is refused.
func TestPoolSlots(t *testing.T) {
	r := rand.New(rand.NewPCG(41, 42))
	base := mustPool(t, 7, "198.19.0.0/16", "2001:2:0:ff::/64")
	whole, err := base.WithSlot(0, 1)
	if err != nil {
		t.Fatal(err)
	}
	const slots = 3
	var parts []*Pool
	for i := range slots {
		q, err := base.WithSlot(i, slots)
		if err != nil {
			t.Fatal(err)
		}
		if s, n := q.Slot(); s != i || n != slots {
			t.Fatalf("Slot() = %d/%d", s, n)
		}
		parts = append(parts, q)
	}
	v4 := netip.MustParsePrefix("198.19.0.0/16")
	for i := range 3000 {
		a := randAddr(r, i%2 == 1)
		if whole.Map(a) != base.Map(a) {
			t.Fatalf("slot 0/1 maps %v to %v, the pool to %v", a, whole.Map(a), base.Map(a))
		}
		seen := map[netip.Addr]int{}
		for k, q := range parts {
			m := q.Map(a)
			if j, dup := seen[m]; dup {
				t.Fatalf("slots %d and %d both forge %v for %v", j, k, m, a)
			}
			seen[m] = k
			if m.Is4() {
				first, last := hostRange(v4)
				if !v4.Contains(m) || m == first || m == last {
					t.Fatalf("slot %d forges %v", k, m)
				}
				off := int(m.As4()[2])<<8 | int(m.As4()[3])
				if (off-1)%slots != k {
					t.Fatalf("slot %d forges offset %d", k, off)
				}
			}
		}
	}
	if got := base.Prefixes(); !slices.Equal(got, []netip.Prefix{v4, netip.MustParsePrefix("2001:2:0:ff::/64")}) {
		t.Fatalf("Prefixes() = %v", got)
	}
	for _, tt := range []struct {
		pool        string
		slot, slots int
	}{{"198.19.0.0/16", 3, 3}, {"198.19.0.0/16", -1, 3}, {"198.19.0.0/16", 0, 0}, {"198.19.0.0/16", 0, MaxSlots + 1},
		{"198.19.0.0/30", 0, 3}, {"198.19.0.1/32", 0, 2}} {
		if _, err := mustPool(t, 1, tt.pool).WithSlot(tt.slot, tt.slots); err == nil {
			t.Errorf("%s slot %d/%d accepted", tt.pool, tt.slot, tt.slots)
		}
	}
	// A /30's two usable hosts make two slots of one address each.
	q0, err0 := mustPool(t, 1, "198.19.0.0/30").WithSlot(0, 2)
	q1, err1 := mustPool(t, 1, "198.19.0.0/30").WithSlot(1, 2)
	if err0 != nil || err1 != nil || q0.Map(netip.MustParseAddr("10.0.0.1")) == q1.Map(netip.MustParseAddr("10.0.0.1")) {
		t.Fatalf("/30 in two slots: %v %v", err0, err1)
	}
}

// TestPoolMapCopy checks the copies of a client's address: copy 0 is
// Map's, the copies are distinct while the slot holds more addresses,
// inside the prefix and the slot, and a pure function of the address.
func TestPoolMapCopy(t *testing.T) {
	base := mustPool(t, 5, "198.19.0.0/24", "2001:2:0:ff::/120")
	for _, slot := range []int{0, 1, 2} {
		p, err := base.WithSlot(slot, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range []netip.Addr{netip.MustParseAddr("198.18.0.7"), netip.MustParseAddr("2001:2::7")} {
			if p.MapCopy(a, 0) != p.Map(a) {
				t.Errorf("slot %d: copy 0 of %v is %v, Map's %v", slot, a, p.MapCopy(a, 0), p.Map(a))
			}
			seen := map[netip.Addr]bool{}
			for k := 0; k < 84; k++ { // the slot holds 84 of the 254 addresses
				f := p.MapCopy(a, k)
				if seen[f] {
					t.Fatalf("slot %d: copy %d of %v repeats %v", slot, k, a, f)
				}
				seen[f] = true
				pfx := p.Prefixes()[0]
				if a.Is6() {
					pfx = p.Prefixes()[1]
				}
				off := int(f.As16()[15]) - int(pfx.Addr().As16()[15])
				if !pfx.Contains(f) || (off-1)%3 != slot {
					t.Fatalf("slot %d: copy %d of %v is %v: outside the prefix or the slot", slot, k, a, f)
				}
				if p.MapCopy(a, k) != f {
					t.Fatal("not a pure function")
				}
			}
		}
	}
}
