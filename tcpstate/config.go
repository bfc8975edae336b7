package tcpstate

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/compare"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// Map says which captured traffic goes where: packets to Local (any
// address when Local.Addr() is invalid) are copied to Target. A map with
// several targets (a shadow fleet without a load balancer) is one Map
// per target, Of of them: each copies the sessions whose flow hash picks
// its Share, 0..Of-1, so each session (each copy of one) goes to one.
type Map struct {
	Local  netip.AddrPort
	Target netip.AddrPort
	Share  uint8 // this target's place among the map's Of
	Of     uint8 // targets sharing the map's sessions; 0 or 1: Target alone
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

// Config configures the engine. Zero durations and sizes take their
// DefaultConfig values in NewEngine (Defaults).
type Config struct {
	Maps    []Map
	Pool    *rewrite.Pool // nil: keep the clients' own addresses
	Workers int           // default 1
	Seed    uint64        // flow-hash seed

	// NoPacing sends client data as soon as it is captured instead of
	// holding each request until the shadow answered the previous one.
	NoPacing bool
	// TrustInbound copies client data without waiting for prod to
	// acknowledge it, for hosts where prod's packets to the clients
	// cannot be captured. Then spoofed, firewalled or refused packets
	// reach the shadow too, and the pacing knows less (scenario 33).
	TrustInbound bool
	// QuietPeriod is how long the shadow must stay silent before a
	// response shorter than prod's counts as complete (scenario 8).
	QuietPeriod time.Duration
	// AckDelay bounds how long an ACK of the shadow's data waits to ride
	// on the next request, as a client's delayed ACK does (RFC 1122
	// §4.2.3.2; Linux waits 40ms). Every second full segment is ACKed at
	// once.
	AckDelay time.Duration

	HandshakeTimeout time.Duration // SYN to SYN-ACK, on prod and on the shadow (scenarios 4, 33)
	// ResponseTimeout bounds how long a request waits for any answer
	// from the shadow before the next goes anyway; the wait is derived
	// from prod's own response times, within this (scenario 9).
	ResponseTimeout time.Duration
	// DrainTimeout bounds how long what prod accepted before the
	// client's FIN or RST may go without reaching the shadow: the
	// deadline moves with each ACK of the shadow (scenario 30).
	DrainTimeout time.Duration
	// ReconnectRate bounds the fresh connections opened per second after
	// the shadow closed early, over all workers (scenarios 19, 32).
	ReconnectRate  float64
	IdleTimeout    time.Duration // no packet either way (scenario 26)
	Linger         time.Duration // ended sessions absorb late replies (20)
	GapTimeout     time.Duration // missing client data (scenario 11)
	RTOMin, RTOMax time.Duration // retransmission timeout bounds (13)
	MaxRetransmits int

	MSS             int // largest segment sent to the shadow (24)
	SynMSS          uint16
	MaxSessionBytes int // buffered client data per session (27)
	MaxBufferBytes  int64
	MaxSessions     int // across all workers
	QueueLen        int // per-worker queue of captured packets and replies
	// QueueWait bounds how long the capture waits on a worker whose
	// queue is full before it sheds the packet: longer than a scheduler
	// time slice or two, shorter than the kernel's ring takes to fill
	// (the daemon derives it from the ring's size), since the ring holds
	// what arrives meanwhile and one shed segment cuts a bulk stream.
	QueueWait time.Duration

	// Controls are the load-test controls at the start; SetControls
	// changes them while the engine runs.
	Controls Controls

	// ComparePrefix is how many of each response's first payload bytes,
	// prod's and the shadow's, are kept for comparison; 0 turns it off.
	// Recorders, one per worker, take the paired requests.
	ComparePrefix int
	Recorders     []*compare.Recorder
	// CompareProtocols are the maps' protocols, by map index (missing or
	// compare.Auto: detected per session from its first bytes): the
	// shadow's answers to an ordered one are attributed by their starts.
	CompareProtocols []compare.Protocol

	// IsLocal reports whether addr is one of this host's own addresses.
	// When set, a map without a local address (port only) copies only
	// packets to the host's addresses: on a promiscuous NIC or a bridge,
	// others pass by. It is called per packet, from capture goroutines,
	// so it must be fast and safe for concurrent use.
	IsLocal func(addr netip.Addr) bool
}

// MSS bounds: 536 is the segment size every IPv4 host must accept (RFC
// 9293 §3.7.1); 65495 fills the largest IPv4 packet, as loopback's does.
const (
	MinMSS = rewrite.DefaultMSS4
	MaxMSS = rewrite.MaxMSS
)

// MaxQueueWait bounds Config.QueueWait: a capture that waits longer on
// one worker starves the others.
const MaxQueueWait = time.Second

// DefaultConfig returns the defaults, the only place they are written:
// Defaults takes zero fields from it and callers (the CLI's flags) read
// theirs here. It has no maps.
func DefaultConfig() Config {
	return Config{
		Workers:          1,
		QuietPeriod:      20 * time.Millisecond,
		AckDelay:         40 * time.Millisecond,
		HandshakeTimeout: 5 * time.Second,
		ResponseTimeout:  5 * time.Second,
		DrainTimeout:     10 * time.Second,
		ReconnectRate:    200,
		IdleTimeout:      120 * time.Second,
		Linger:           2 * time.Second,
		GapTimeout:       2 * time.Second,
		RTOMin:           100 * time.Millisecond,
		RTOMax:           4 * time.Second,
		MaxRetransmits:   8,
		MSS:              1460,
		SynMSS:           1460,
		MaxSessionBytes:  64 << 20,
		MaxBufferBytes:   512 << 20,
		MaxSessions:      1 << 20,
		QueueLen:         8192,
		QueueWait:        25 * time.Millisecond,
		ComparePrefix:    compare.DefaultPrefix,
		Controls:         DefaultControls(),
	}
}

// Defaults fills zero fields from DefaultConfig.
func (c *Config) Defaults() {
	d := DefaultConfig()
	orDefault(&c.Workers, d.Workers)
	orDefault(&c.QuietPeriod, d.QuietPeriod)
	orDefault(&c.AckDelay, d.AckDelay)
	orDefault(&c.HandshakeTimeout, d.HandshakeTimeout)
	orDefault(&c.ResponseTimeout, d.ResponseTimeout)
	orDefault(&c.DrainTimeout, d.DrainTimeout)
	orDefault(&c.ReconnectRate, d.ReconnectRate)
	orDefault(&c.IdleTimeout, d.IdleTimeout)
	orDefault(&c.Linger, d.Linger)
	orDefault(&c.GapTimeout, d.GapTimeout)
	orDefault(&c.RTOMin, d.RTOMin)
	orDefault(&c.RTOMax, d.RTOMax)
	orDefault(&c.MaxRetransmits, d.MaxRetransmits)
	orDefault(&c.MSS, d.MSS)
	orDefault(&c.SynMSS, d.SynMSS)
	orDefault(&c.MaxSessionBytes, d.MaxSessionBytes)
	orDefault(&c.MaxBufferBytes, d.MaxBufferBytes)
	orDefault(&c.MaxSessions, d.MaxSessions)
	orDefault(&c.QueueLen, d.QueueLen)
	orDefault(&c.QueueWait, d.QueueWait)
	c.Controls.defaults()
}

func orDefault[T comparable](field *T, def T) {
	var zero T
	if *field == zero {
		*field = def
	}
}

// FieldError is a Config value Validate refuses. Field names it as Go
// spells it ("MSS", "Maps[1]") so that a caller can point at its own
// setting of that field: a flag, a file key.
type FieldError struct {
	Field string
	Value any // the refused value; nil when the field is wrong as a whole
	Err   error
}

func (e *FieldError) Error() string {
	if e.Value == nil {
		return fmt.Sprintf("%s: %v", e.Field, e.Err)
	}
	return fmt.Sprintf("%s %v: %v", e.Field, e.Value, e.Err)
}

func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(field string, value any, why string) error {
	return &FieldError{Field: field, Value: value, Err: errors.New(why)}
}

// Validate checks a complete config, such as one Defaults filled: a zero
// duration or size is refused here, not defaulted. Errors are
// *FieldError.
func (c *Config) Validate() error {
	if len(c.Maps) == 0 {
		return fieldErr("Maps", nil, "no map: nothing to copy")
	}
	if len(c.Maps) > 255 {
		return fieldErr("Maps", nil, "at most 255 maps")
	}
	for i, m := range c.Maps {
		field := fmt.Sprintf("Maps[%d]", i)
		if m.Local.Port() == 0 {
			return fieldErr(field, m, "local port must not be 0")
		}
		if !m.Target.Addr().IsValid() || m.Target.Port() == 0 {
			return fieldErr(field, m, "target needs an address and a port")
		}
		if a := m.Local.Addr(); a.IsValid() && a.Is4() != m.Target.Addr().Is4() {
			return fieldErr(field, m, "local and target addresses are of different families")
		}
		for _, o := range c.Maps[:i] {
			if o == m {
				return fieldErr(field, m, "given twice")
			}
		}
		if m.Of > 1 && m.Share >= m.Of {
			return fieldErr(field, m, fmt.Sprintf("target share %d of %d", m.Share, m.Of))
		}
	}
	if c.Workers < 1 || c.Workers > 1024 {
		return fieldErr("Workers", c.Workers, "want 1..1024")
	}
	if err := compare.CheckPrefix(c.ComparePrefix); err != nil {
		return fieldErr("ComparePrefix", c.ComparePrefix, err.Error())
	}
	if c.Recorders != nil && len(c.Recorders) != c.Workers {
		return fieldErr("Recorders", len(c.Recorders), fmt.Sprintf("want one per worker (%d)", c.Workers))
	}
	if c.MSS < MinMSS || c.MSS > MaxMSS {
		return fieldErr("MSS", c.MSS, fmt.Sprintf("want %d..%d", MinMSS, MaxMSS))
	}
	if c.SynMSS < MinMSS || c.SynMSS > MaxMSS {
		return fieldErr("SynMSS", c.SynMSS, fmt.Sprintf("want %d..%d", MinMSS, MaxMSS))
	}
	for _, d := range []struct {
		field string
		v     time.Duration
	}{
		{"HandshakeTimeout", c.HandshakeTimeout}, {"ResponseTimeout", c.ResponseTimeout}, {"DrainTimeout", c.DrainTimeout},
		{"IdleTimeout", c.IdleTimeout}, {"Linger", c.Linger}, {"QuietPeriod", c.QuietPeriod},
		{"AckDelay", c.AckDelay}, {"GapTimeout", c.GapTimeout}, {"RTOMin", c.RTOMin}, {"RTOMax", c.RTOMax},
	} {
		if d.v <= 0 {
			return fieldErr(d.field, d.v, "must be positive")
		}
	}
	if c.RTOMin > c.RTOMax {
		return fieldErr("RTOMin", c.RTOMin, fmt.Sprintf("above RTOMax %v", c.RTOMax))
	}
	if c.ReconnectRate <= 0 {
		return fieldErr("ReconnectRate", c.ReconnectRate, "must be positive")
	}
	if c.MaxRetransmits < 0 {
		return fieldErr("MaxRetransmits", c.MaxRetransmits, "must not be negative")
	}
	if c.MaxSessionBytes < 4096 {
		return fieldErr("MaxSessionBytes", c.MaxSessionBytes, "want at least 4096")
	}
	if c.MaxBufferBytes < 1 {
		return fieldErr("MaxBufferBytes", c.MaxBufferBytes, "want at least 1")
	}
	if c.MaxSessions < 1 {
		return fieldErr("MaxSessions", c.MaxSessions, "want at least 1")
	}
	if c.QueueLen < 1 {
		return fieldErr("QueueLen", c.QueueLen, "want at least 1")
	}
	if c.QueueWait < 0 || c.QueueWait > MaxQueueWait {
		return fieldErr("QueueWait", c.QueueWait, "want 0 to "+MaxQueueWait.String())
	}
	return c.Controls.Validate()
}
