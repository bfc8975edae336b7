package tcpstate

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// Map says which captured traffic goes where: packets to Local (any
// address when Local.Addr() is invalid) are copied to Target.
type Map struct {
	Local  netip.AddrPort
	Target netip.AddrPort
}

// Matches reports whether a packet to addr:port belongs to the map.
func (m *Map) Matches(addr netip.Addr, port uint16) bool {
	if port != m.Local.Port() {
		return false
	}
	return !m.Local.Addr().IsValid() || m.Local.Addr() == addr
}

func (m Map) String() string {
	local := fmt.Sprint(m.Local.Port())
	if m.Local.Addr().IsValid() {
		local = m.Local.String()
	}
	return local + "-" + m.Target.String()
}

// Config configures the engine. Zero durations and sizes take defaults.
type Config struct {
	Maps    []Map
	Pool    *rewrite.Pool // nil: keep the clients' own addresses
	Workers int           // default 1
	Seed    uint64        // flow-hash seed

	// NoPacing sends client data as soon as it is captured instead of
	// holding each request until the shadow answered the previous one.
	NoPacing bool
	// QuietPeriod is how long the shadow must stay silent before a
	// response shorter than prod's counts as complete (scenario 8).
	QuietPeriod time.Duration
	// AckDelay bounds how long an ACK of the shadow's data waits to ride
	// on the next request, as a client's delayed ACK does (RFC 1122
	// §4.2.3.2; Linux waits 40ms). Every second full segment is ACKed at
	// once.
	AckDelay time.Duration

	HandshakeTimeout time.Duration // SYN to SYN-ACK (scenario 4)
	ResponseTimeout  time.Duration // request to first answer (scenario 9)
	IdleTimeout      time.Duration // no packet either way (scenario 26)
	Linger           time.Duration // ended sessions absorb late replies (20)
	GapTimeout       time.Duration // missing client data (scenario 11)
	RTOMin, RTOMax   time.Duration // retransmission timeout bounds (13)
	MaxRetransmits   int

	MSS             int // largest segment sent to the shadow (24)
	SynMSS          uint16
	MaxSessionBytes int // buffered client data per session (27)
	MaxBufferBytes  int64
	MaxSessions     int // across all workers
	QueueLen        int // per-worker queue of captured packets and replies
}

// Defaults fills in zero fields.
func (c *Config) Defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.Workers == 0 {
		c.Workers = 1
	}
	def(&c.QuietPeriod, 20*time.Millisecond)
	def(&c.AckDelay, 40*time.Millisecond)
	def(&c.HandshakeTimeout, 5*time.Second)
	def(&c.ResponseTimeout, 30*time.Second)
	def(&c.IdleTimeout, 120*time.Second)
	def(&c.Linger, 2*time.Second)
	def(&c.GapTimeout, 2*time.Second)
	def(&c.RTOMin, 100*time.Millisecond)
	def(&c.RTOMax, 4*time.Second)
	if c.MaxRetransmits == 0 {
		c.MaxRetransmits = 8
	}
	if c.MSS == 0 {
		c.MSS = 1460
	}
	if c.SynMSS == 0 {
		c.SynMSS = 1460
	}
	if c.MaxSessionBytes == 0 {
		c.MaxSessionBytes = 64 << 20
	}
	if c.MaxBufferBytes == 0 {
		c.MaxBufferBytes = 512 << 20
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = 1 << 20
	}
	if c.QueueLen == 0 {
		c.QueueLen = 8192
	}
}

// Validate checks a defaulted config.
func (c *Config) Validate() error {
	if len(c.Maps) == 0 {
		return errors.New("no map: nothing to copy")
	}
	if len(c.Maps) > 255 {
		return errors.New("at most 255 maps")
	}
	for i, m := range c.Maps {
		if m.Local.Port() == 0 {
			return fmt.Errorf("map %v: local port must not be 0", m)
		}
		if !m.Target.Addr().IsValid() || m.Target.Port() == 0 {
			return fmt.Errorf("map %v: target needs an address and a port", m)
		}
		if a := m.Local.Addr(); a.IsValid() && a.Is4() != m.Target.Addr().Is4() {
			return fmt.Errorf("map %v: local and target addresses are of different families", m)
		}
		for _, o := range c.Maps[:i] {
			if o == m {
				return fmt.Errorf("map %v given twice", m)
			}
		}
	}
	if c.Workers < 1 || c.Workers > 1024 {
		return fmt.Errorf("workers %d: want 1..1024", c.Workers)
	}
	if c.MSS < 64 || c.MSS > 65495 {
		return fmt.Errorf("mss %d: want 64..65495", c.MSS)
	}
	if c.RTOMin > c.RTOMax {
		return fmt.Errorf("rto min %v above rto max %v", c.RTOMin, c.RTOMax)
	}
	return nil
}
