package tcpstate

// Seq is a TCP sequence number. Comparisons are modulo 2^32 (RFC 9293
// §3.4): a is before b when the signed distance from b to a is negative,
// which is correct as long as the two are less than 2^31 apart.
type Seq uint32

// Before reports s < o in sequence space.
func (s Seq) Before(o Seq) bool { return int32(s-o) < 0 }

// BeforeEq reports s <= o in sequence space.
func (s Seq) BeforeEq(o Seq) bool { return int32(s-o) <= 0 }

// After reports s > o in sequence space.
func (s Seq) After(o Seq) bool { return int32(s-o) > 0 }

// AfterEq reports s >= o in sequence space.
func (s Seq) AfterEq(o Seq) bool { return int32(s-o) >= 0 }

// Add returns s advanced by n bytes.
func (s Seq) Add(n int) Seq { return s + Seq(uint32(n)) }

// Sub returns the distance from o to s; s must not be before o.
func (s Seq) Sub(o Seq) int { return int(uint32(s - o)) }

// InRange reports first <= s < end.
func (s Seq) InRange(first, end Seq) bool { return s.AfterEq(first) && s.Before(end) }

// MaxSeq returns the later of a and b.
func MaxSeq(a, b Seq) Seq {
	if a.After(b) {
		return a
	}
	return b
}
