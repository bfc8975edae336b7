package compare

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds of the aggregation.
const (
	// MaxClasses bounds the distinct classes per map and side; later ones
	// count as "other". It bounds every label set and the mismatch matrix.
	MaxClasses = 32
	// MaxTopDivergent bounds the divergent request summaries kept per
	// map, and the slower ones; when full, the least counted gives way
	// (space-saving).
	MaxTopDivergent = 64
	// SlowerMargin is how much later than prod's the shadow's answer must
	// come, at least, for its request to count as slower on the shadow;
	// it must also take at least twice prod's time. Below it, latency is
	// the histograms' business, not a request's.
	SlowerMargin = 10 * time.Millisecond
	// MaxMaps bounds the maps a Comparer takes.
	MaxMaps = 256
	// MaxWorkers bounds the Recorders.
	MaxWorkers = 256
	// drainEvery is how often the consumer looks at the rings: a pair
	// waits at most this long, and an idle Comparer wakes this often.
	drainEvery = 10 * time.Millisecond
)

// MapConfig is one copy map as the Comparer sees it.
type MapConfig struct {
	Name     string
	Protocol Protocol // Auto detects it from the traffic
}

// Config is what New builds a Comparer from.
type Config struct {
	Maps []MapConfig
	// Workers is the number of Recorders (one per datapath worker).
	Workers int
	// QueueLen is each Recorder's ring size (rounded up to a power of
	// two); 0 means DefaultQueueLen.
	QueueLen int
	// Divergence configures the divergence log; an empty Path turns it
	// off.
	Divergence LogConfig
	Log        *slog.Logger
	// Now stamps divergence log lines; nil means time.Now.
	Now func() time.Time
}

// Comparer classifies and aggregates pairs. The datapath puts pairs into
// its Recorders; Run drains them on one goroutine; Samples, Snapshot and
// the handlers read the aggregate from any goroutine.
type Comparer struct {
	recorders []*Recorder
	log       *slog.Logger
	now       func() time.Time
	divlog    *divergenceLog // nil when off; consumer only

	badMap atomic.Uint64 // pairs naming no configured map

	mu   sync.Mutex // guards maps' contents; the consumer holds it per pair
	maps []*mapStats
}

// mapStats is one map's aggregate.
type mapStats struct {
	name       string
	configured Protocol // as configured; Auto detects
	detected   Protocol // what Auto found; Auto until then
	requests   uint64
	sides      [numSides]sideStats
	pairs      map[[2]string]uint64 // (prod class, shadow class) → count; at most (MaxClasses+1)² keys
	divergent  map[string]*divergent
	slower     uint64                // requests both answered, the shadow much later
	slowest    map[string]*divergent // their summaries
}

type sideStats struct {
	classes map[string]uint64 // at most MaxClasses keys, plus "other"
	latency histogram         // answered responses only
}

// divergent is one request summary whose classes differed.
type divergent struct {
	count          uint64
	prod, shadow   string // the last pair's classes
	prodS, shadowS float64
}

// New validates cfg and builds a Comparer; Run starts its consumer.
func New(cfg Config) (*Comparer, error) {
	if len(cfg.Maps) == 0 || len(cfg.Maps) > MaxMaps {
		return nil, fmt.Errorf("compare: %d maps: want 1 to %d", len(cfg.Maps), MaxMaps)
	}
	if cfg.Workers < 1 || cfg.Workers > MaxWorkers {
		return nil, fmt.Errorf("compare: %d workers: want 1 to %d", cfg.Workers, MaxWorkers)
	}
	if cfg.QueueLen < 0 || cfg.QueueLen > 1<<16 {
		return nil, fmt.Errorf("compare: queue length %d: want 0 (default %d) to %d", cfg.QueueLen, DefaultQueueLen, 1<<16)
	}
	if cfg.QueueLen == 0 {
		cfg.QueueLen = DefaultQueueLen
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Comparer{log: cfg.Log, now: cfg.Now}
	seen := map[string]bool{}
	for _, m := range cfg.Maps {
		if m.Name == "" || seen[m.Name] {
			return nil, fmt.Errorf("compare: map name %q: want unique non-empty names", m.Name)
		}
		if m.Protocol >= numProtocols || m.Protocol == Unknown {
			return nil, fmt.Errorf("compare: map %s: bad protocol %d", m.Name, m.Protocol)
		}
		seen[m.Name] = true
		ms := &mapStats{name: m.Name, configured: m.Protocol, pairs: map[[2]string]uint64{},
			divergent: map[string]*divergent{}, slowest: map[string]*divergent{}}
		for s := range ms.sides {
			ms.sides[s].classes = map[string]uint64{}
		}
		c.maps = append(c.maps, ms)
	}
	for range cfg.Workers {
		c.recorders = append(c.recorders, newRecorder(cfg.QueueLen))
	}
	if cfg.Divergence.Path != "" {
		l, err := openDivergenceLog(cfg.Divergence)
		if err != nil {
			return nil, err
		}
		c.divlog = l
	}
	return c, nil
}

// Recorder returns worker w's queue; nil for a w out of range, which
// takes nothing.
func (c *Comparer) Recorder(w int) *Recorder {
	if c == nil || w < 0 || w >= len(c.recorders) {
		return nil
	}
	return c.recorders[w]
}

// Run drains the Recorders until ctx is done, then once more, and closes
// the divergence log. Call it once.
func (c *Comparer) Run(ctx context.Context) error {
	t := time.NewTicker(drainEvery)
	defer t.Stop()
	for {
		c.drain()
		select {
		case <-ctx.Done():
			c.drain()
			if c.divlog != nil {
				if err := c.divlog.close(); err != nil {
					c.log.Warn("close divergence log", "err", err)
				}
			}
			return nil
		case <-t.C:
		}
	}
}

// drain consumes every pair the rings hold now. Consumer only.
func (c *Comparer) drain() {
	var p Pair
	for _, r := range c.recorders {
		for r.next(&p) {
			c.consume(&p)
		}
	}
}

// consume classifies one pair and adds it to its map. Consumer only.
func (c *Comparer) consume(p *Pair) {
	if int(p.Map) >= len(c.maps) {
		c.badMap.Add(1)
		return
	}
	m := c.maps[p.Map]
	req := p.request()
	proto := c.protocolOf(m, p, req)
	var class [numSides]string
	var secs [numSides]float64
	var answered [numSides]bool
	for s := range numSides {
		r := p.side(s)
		class[s] = ClassifyPair(proto, req, r)
		if r.Outcome == Answered && r.FirstByte >= r.Sent {
			secs[s], answered[s] = float64(r.FirstByte-r.Sent)/1e9, true
		}
	}
	var summary string
	diverged := class[Prod] != class[Shadow]
	slower := answered[Prod] && answered[Shadow] &&
		secs[Shadow]-secs[Prod] >= max(SlowerMargin.Seconds(), secs[Prod])
	if diverged || slower {
		summary = Summarize(proto, req)
	}

	c.mu.Lock()
	m.requests++
	for s := range numSides {
		st := &m.sides[s]
		class[s] = st.count(class[s])
		if answered[s] {
			st.latency.observe(secs[s])
		}
	}
	m.pairs[[2]string{class[Prod], class[Shadow]}]++
	diverged = class[Prod] != class[Shadow] // "other" on both sides is no mismatch we can tell
	if diverged {
		addTop(m.divergent, summary, class, secs)
	}
	if slower {
		m.slower++
		addTop(m.slowest, summary, class, secs)
	}
	c.mu.Unlock()

	if (diverged || slower) && c.divlog != nil {
		c.divlog.write(divergenceEntry{
			Time: c.now().UTC(), Map: m.name, Client: p.Client.String(), Protocol: proto.String(),
			Request: summary, Prod: class[Prod], Shadow: class[Shadow], Slower: slower,
			ProdMS: latencyMS(secs[Prod], answered[Prod]), ShadowMS: latencyMS(secs[Shadow], answered[Shadow]),
		})
	}
}

func latencyMS(s float64, ok bool) *float64 {
	if !ok {
		return nil
	}
	ms := s * 1e3
	return &ms
}

// protocolOf returns the protocol a pair classifies under: the map's
// configured one, or for Auto what the request (or, for server-first
// protocols, the response) says, remembered for the requests that do not
// tell (later HTTP/2 frames, PostgreSQL queries after the startup).
func (c *Comparer) protocolOf(m *mapStats, p *Pair, req []byte) Protocol {
	if m.configured != Auto {
		return m.configured
	}
	d := Detect(req)
	if d == Unknown && p.Prod.Outcome == Answered {
		d = DetectResponse(p.Prod.head())
	}
	if d == Unknown {
		c.mu.Lock()
		d = m.detected
		c.mu.Unlock()
		if d == Auto {
			return Unknown
		}
		return d
	}
	c.mu.Lock()
	if m.detected == Auto {
		m.detected = d
	}
	c.mu.Unlock()
	return d
}

// count adds one response of class cl, bounded: a class beyond
// MaxClasses counts as "other". It returns the class counted. Locked.
func (st *sideStats) count(cl string) string {
	if _, ok := st.classes[cl]; !ok && len(st.classes) >= MaxClasses {
		cl = ClassOther
	}
	st.classes[cl]++
	return cl
}

// addTop counts a request summary in top (divergent or slower ones),
// evicting the least counted one when full and giving the newcomer its
// count plus one, so a frequent summary arriving late still climbs.
// Locked.
func addTop(top map[string]*divergent, summary string, class [numSides]string, secs [numSides]float64) {
	d, ok := top[summary]
	if !ok {
		var base uint64
		if len(top) >= MaxTopDivergent {
			var minKey string
			var minD *divergent
			for k, v := range top {
				if minD == nil || v.count < minD.count || v.count == minD.count && k < minKey {
					minKey, minD = k, v
				}
			}
			base = minD.count
			delete(top, minKey)
		}
		d = &divergent{count: base}
		top[summary] = d
	}
	d.count++
	d.prod, d.shadow = class[Prod], class[Shadow]
	d.prodS, d.shadowS = secs[Prod], secs[Shadow]
}

// Dropped returns the pairs the Recorders refused, full, in total.
func (c *Comparer) Dropped() uint64 {
	var n uint64
	for _, r := range c.recorders {
		n += r.Dropped()
	}
	return n
}

// errNoComparer is what the handlers of a nil Comparer say.
var errNoComparer = errors.New("comparison is off")
