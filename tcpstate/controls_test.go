package tcpstate

import (
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// clientN is the n-th of many test clients: 256 addresses, many ports.
func clientN(n int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 2 + byte(n/50000), byte(n % 256)}), uint16(10000+n%50000))
}

// registered returns the flows registered since the last call.
func (h *harness) registered() []rewrite.Tuple {
	var out []rewrite.Tuple
	for _, e := range h.rec.events {
		if e.kind == "register" {
			out = append(out, e.flow)
		}
	}
	h.rec.events = h.rec.events[:0]
	return out
}

// openedAs plays client c's connection opening (SYN, prod's SYN-ACK, the
// handshake ACK) and reports whether it opened a session on the shadow.
func (h *harness) openedAs(c netip.AddrPort) bool {
	h.t.Helper()
	h.client = c
	h.open(nil)
	return len(h.registered()) > 0
}

// TestScenario43SampleCopiesAShareOfWholeConnections: at --sample 30% a
// share of 10,000 connections within 3σ of 30% is copied; the decision is
// the hash's (the same connections for the same seed, others for another
// seed) and a connection left out is not joined by its data.
func TestScenario43SampleCopiesAShareOfWholeConnections(t *testing.T) {
	const n, share = 10000, 0.3
	run := func(seed uint64) map[int]bool {
		h := newHarness(t, func(c *Config) { c.Controls.Sample, c.Controls.SampleSeed = share, seed })
		got := make(map[int]bool)
		for i := 0; i < n; i++ {
			if h.openedAs(clientN(i)) {
				got[i] = true
			} else {
				// Its request must not join it mid-stream.
				h.request(tISN+1, 0, "GET / HTTP/1.1\r\n\r\n")
				if r := h.registered(); len(r) > 0 {
					t.Fatalf("client %d: left out at its SYN, joined by its data", i)
				}
			}
		}
		if skipped := h.ctr.c[CtrSkippedSample].Load(); int(skipped) != n-len(got) {
			t.Errorf("sessions_skipped_sample %d, want %d", skipped, n-len(got))
		}
		return got
	}
	a := run(1)
	sigma := math.Sqrt(n * share * (1 - share))
	if d := math.Abs(float64(len(a)) - n*share); d > 3*sigma {
		t.Errorf("copied %d of %d, want %v within 3σ (%.0f)", len(a), n, n*share, 3*sigma)
	}
	b := run(1)
	if len(a) != len(b) {
		t.Errorf("same seed: %d then %d copied", len(a), len(b))
	}
	for i := range a {
		if !b[i] {
			t.Fatalf("same seed: client %d copied once, not again", i)
		}
	}
	c := run(2)
	same := 0
	for i := range a {
		if c[i] {
			same++
		}
	}
	if same == len(a) {
		t.Errorf("another seed chose the same %d connections", same)
	}
}

// TestScenario43JoinOnlyWhatEveryShareChose: raising the share does not
// join a connection the lower share left out at its SYN: data of a flow
// never seen is joined only if every share in effect since the start
// would have chosen it; a new SYN is decided by the share now.
func TestScenario43JoinOnlyWhatEveryShareChose(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Controls.Sample = 0.1 })
	// Find a client the 10% leaves out.
	var out netip.AddrPort
	for i := 0; ; i++ {
		if !h.openedAs(clientN(i)) {
			out = clientN(i)
			break
		}
	}
	setControls(h, Controls{Sample: 1, Multiply: 1})
	h.client = out
	h.request(tISN+1, 0, "GET / HTTP/1.1\r\n\r\n")
	if r := h.registered(); len(r) > 0 {
		t.Fatalf("joined at 100%% a connection 10%% left out at its SYN: %v", r)
	}
	if h.ctr.c[CtrIgnoredSkipped].Load() == 0 {
		t.Error("ignored_skipped not counted")
	}
	// Its next connection (a new SYN) is copied.
	h.client = netip.AddrPortFrom(out.Addr(), out.Port())
	h.clientSeg(fSYN, tISN+100000, 0, "", nil)
	h.accept(tISN + 100000)
	if r := h.registered(); len(r) != 1 {
		t.Fatalf("a new connection at 100%%: %d registrations, want 1", len(r))
	}
}

// setControls publishes c to the harness's worker as SetControls would.
func setControls(h *harness, c Controls) {
	c.defaults()
	if err := c.Validate(); err != nil {
		h.t.Fatal(err)
	}
	sh := h.w.sh
	sh.live.Store(sh.liveOf(h.w.cfg, 1).next(c, 1, h.now))
}

// TestScenario45RampRisesLinearly: over a 10 s ramp to 100% the share of
// connections copied in each second rises, bucket by bucket, close to the
// line from 0; after it, all are copied. A SIGHUP's new target ramps from
// the share then.
func TestScenario45RampRisesLinearly(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Controls.Ramp = 10 * time.Second })
	h.now = 0 // the engine's start
	const perSec = 1000
	buckets := make([]int, 12)
	i := 0
	for sec := range buckets {
		for j := 0; j < perSec; j++ {
			if h.openedAs(clientN(i)) {
				buckets[sec]++
			}
			i++
			h.now += int64(time.Second / perSec)
		}
	}
	for sec := 1; sec < len(buckets); sec++ {
		if buckets[sec] < buckets[sec-1] {
			t.Errorf("bucket %d: %d copied after %d: %v", sec, buckets[sec], buckets[sec-1], buckets)
		}
	}
	for sec := 0; sec < 10; sec++ {
		want := (float64(sec) + 0.5) / 10 * perSec
		if d := math.Abs(float64(buckets[sec]) - want); d > 4*math.Sqrt(perSec*0.25)+1 {
			t.Errorf("bucket %d: %d copied, want about %.0f: %v", sec, buckets[sec], want, buckets)
		}
	}
	if buckets[10] != perSec || buckets[11] != perSec {
		t.Errorf("after the ramp: %v, want all %d", buckets[10:], perSec)
	}
	// Lowered to 50%: the share moves from 100% to 50% over the ramp.
	setControls(h, Controls{Sample: 0.5, Ramp: 10 * time.Second})
	l := h.w.sh.live.Load()
	if s := l.share(h.now); s != 1 {
		t.Errorf("just after the change the share is %v, want 1", s)
	}
	if got := l.share(h.now + int64(5*time.Second)); math.Abs(got-0.75) > 1e-9 {
		t.Errorf("halfway down: share %v, want 0.75", got)
	}
	if got := l.share(h.now + int64(11*time.Second)); got != 0.5 {
		t.Errorf("after the ramp: share %v, want 0.5", got)
	}
}

// TestScenario46MaxNewSessionsSkipsAndRemembers: at --max-new-sessions
// 10, 100 connections opened at once start 10 sessions; the rest are
// skipped, counted, and stay skipped (a retransmitted SYN, the
// connection's data); a second later, new ones start again.
func TestScenario46MaxNewSessionsSkipsAndRemembers(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Controls.MaxNewSessions = 10 })
	opened := 0
	var skipped []netip.AddrPort
	for i := 0; i < 100; i++ {
		if h.openedAs(clientN(i)) {
			opened++
		} else {
			skipped = append(skipped, clientN(i))
		}
	}
	if opened != 10 {
		t.Errorf("%d sessions opened at once, want 10", opened)
	}
	if got := h.ctr.c[CtrSkippedRate].Load(); got != 90 {
		t.Errorf("sessions_skipped_max_new %d, want 90", got)
	}
	h.advance(2 * time.Second)
	h.registered()
	for _, c := range skipped[:5] {
		h.client = c
		h.clientSeg(fSYN, tISN, 0, "", nil) // retransmitted
		h.request(tISN+1, 0, "GET / HTTP/1.1\r\n\r\n")
	}
	if r := h.registered(); len(r) != 0 {
		t.Fatalf("skipped connections opened later: %v", r)
	}
	// A skipped connection's FIN forgets it; new connections start.
	h.client = skipped[0]
	h.clientSeg(fFIN|fACK, tISN+1, tProdISN+1, "", nil)
	n := 0
	for i := 1000; i < 1020; i++ {
		if h.openedAs(clientN(i)) {
			n++
		}
	}
	if n != 10 {
		t.Errorf("a second later: %d opened, want the 10 the cap holds", n)
	}
}

// TestControlsValidate refuses what the controls cannot mean.
func TestControlsValidate(t *testing.T) {
	for _, c := range []Controls{
		{Sample: 1.5, Multiply: 1}, {Sample: -0.1, Multiply: 1}, {Sample: math.NaN(), Multiply: 1},
		{Sample: 1, Multiply: MaxMultiply + 1}, {Sample: 1, Multiply: -1},
		{Sample: 1, Multiply: 1, Ramp: -time.Second}, {Sample: 1, Multiply: 1, MaxNewSessions: -1},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
	d := Controls{}
	d.defaults()
	if err := d.Validate(); err != nil || d != DefaultControls() {
		t.Errorf("zero controls default to %+v (%v), want %+v", d, err, DefaultControls())
	}
}

// TestSampleRankOrdersTheSample: a share copies exactly the connections
// ranked below it.
func TestSampleRankOrdersTheSample(t *testing.T) {
	a := netip.MustParseAddr("198.18.0.2")
	for port := uint16(1000); port < 3000; port++ {
		r := SampleRank(a, port, 4)
		h := sampleHash(a.As16(), port, 4)
		if chosen(h, r+1e-9) != true || chosen(h, max(r-1e-9, 1e-12)) && r > 1e-6 {
			t.Fatalf("port %d: rank %v disagrees with the sample", port, r)
		}
	}
}
