package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/pcapfile"
)

// Config configures a Player.
type Config struct {
	Files []FileInfo // in play order, as Scan returned them
	Speed float64    // file time / wall time; 1 plays as captured
	Loop  int        // passes over the files; each starts when the previous ended, PassGap later
	// PassGap separates passes, so that the previous pass's last sessions
	// end (and leave the engine's table) before the next's first begin.
	PassGap time.Duration
	// IsServer tells the server's endpoints (a map's local endpoint) from
	// clients'; with Loop > 1 a pass after the first moves each client to
	// another address (shiftClient), so that its connections are new ones
	// on the shadow, not duplicates of the first pass's. Nil: every pass
	// plays the same addresses.
	IsServer func(addr netip.Addr, port uint16) bool
	// Lead is how long after Run starts the first packet is due.
	Lead time.Duration
}

// MaxSpeed bounds the speed: past it, the sleeps a schedule takes are
// shorter than the timer's resolution and the schedule means nothing.
const MaxSpeed = 1000

// Feed takes one IP packet, valid only during the call, with the time
// it was scheduled at: its capture time on the replay's timeline.
type Feed func(ip []byte, at time.Time)

// clock is the player's time; tests use a fake one.
type clock interface {
	Now() time.Time
	// SleepUntil waits until t or ctx's end, whichever is first.
	SleepUntil(ctx context.Context, t time.Time) error
}

type realClock struct{ t *time.Timer }

func (c *realClock) Now() time.Time { return time.Now() }

func (c *realClock) SleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	if c.t == nil {
		c.t = time.NewTimer(d)
	} else {
		c.t.Reset(d)
	}
	select {
	case <-ctx.Done():
		c.t.Stop()
		return ctx.Err()
	case <-c.t.C:
		return nil
	}
}

// Player plays capture files to a Feed on their schedule. Its counters
// may be read while it runs.
type Player struct {
	cfg   Config
	clock clock
	first int64 // the timeline's origin: the earliest record, ns
	span  int64 // the files' length in file time, ns

	// Written by Run only.
	started   atomic.Int64 // wall time of the timeline's origin, ns; 0 before Run
	packets   atomic.Uint64
	bytes     atomic.Uint64
	pass      atomic.Int64
	fileAt    atomic.Int64 // file time of the last packet handed over, from first, ns
	reordered atomic.Uint64
	nonIP     atomic.Uint64
	otherHost atomic.Uint64
	late      Drift
	lastFed   atomic.Int64 // wall time, ns
}

// NewPlayer returns a player of cfg's files.
func NewPlayer(cfg Config) (*Player, error) {
	if !(cfg.Speed > 0 && cfg.Speed <= MaxSpeed) {
		return nil, fmt.Errorf("speed %v: want more than 0 and at most %d", cfg.Speed, MaxSpeed)
	}
	if cfg.Loop < 1 {
		return nil, fmt.Errorf("loop %d: want at least 1", cfg.Loop)
	}
	if len(cfg.Files) == 0 {
		return nil, errors.New("no file to play")
	}
	p := &Player{cfg: cfg, clock: &realClock{}}
	p.first, p.span = Span(cfg.Files)
	return p, nil
}

// scaled returns a file-time duration on the wall clock.
func (p *Player) scaled(d int64) time.Duration { return time.Duration(float64(d) / p.cfg.Speed) }

// passLen is how long one pass lasts on the wall clock, its gap included.
func (p *Player) passLen() time.Duration { return p.scaled(p.span) + p.cfg.PassGap }

// Run plays every pass of the files, then returns nil; or the error of
// a file that changed since it was scanned, or ctx's.
func (p *Player) Run(ctx context.Context, feed Feed) error {
	origin := p.clock.Now().Add(p.cfg.Lead)
	p.started.Store(origin.UnixNano())
	for pass := range p.cfg.Loop {
		p.pass.Store(int64(pass))
		start := origin.Add(time.Duration(pass) * p.passLen())
		for _, f := range p.cfg.Files {
			if err := p.playFile(ctx, f.Path, pass, start, feed); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p *Player) playFile(ctx context.Context, path string, pass int, start time.Time, feed Feed) error {
	f, err := pcapfile.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	defer func() {
		st := f.Stats()
		p.nonIP.Add(st.NonIP)
		p.otherHost.Add(st.OtherHost)
	}()
	latest := int64(0) // the latest file time handed over in this file
	for {
		ip, ts, _, err := f.NextIP()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err // scanned whole before, so the file changed since
		}
		rel := ts - p.first
		at := start.Add(p.scaled(rel))
		if rel < latest {
			// Earlier than a packet already handed over (two captures
			// merged, or a clock step): it goes at once, and its
			// lateness is the merge's, not the replay's.
			p.reordered.Add(1)
		} else {
			latest = rel
			if err := p.clock.SleepUntil(ctx, at); err != nil {
				return err
			}
			p.late.Observe(p.clock.Now().Sub(at))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if pass > 0 && p.cfg.IsServer != nil {
			shiftClient(ip, pass, p.cfg.IsServer)
		}
		feed(ip, at)
		p.packets.Add(1)
		p.bytes.Add(uint64(len(ip)))
		p.fileAt.Store(rel)
		p.lastFed.Store(p.clock.Now().UnixNano())
	}
}

// shiftClient moves the client's address of a TCP packet (the source of
// a packet to a server endpoint, the destination of one from it) by pass
// in its next-to-last byte: each pass's connections
// come from other clients, so neither the engine nor the shadow takes
// them for the first pass's (same ports, same sequence numbers, same
// timestamps). Checksums are left: the engine recomputes them.
func shiftClient(ip []byte, pass int, isServer func(netip.Addr, uint16) bool) {
	var srcOff, dstOff, n, l4 int
	switch {
	case len(ip) >= 20 && ip[0]>>4 == 4 && ip[9] == 6:
		srcOff, dstOff, n, l4 = 12, 16, 4, int(ip[0]&0x0f)*4
	case len(ip) >= 40 && ip[0]>>4 == 6 && ip[6] == 6:
		srcOff, dstOff, n, l4 = 8, 24, 16, 40
	default:
		return
	}
	if l4 < 20 || len(ip) < l4+4 {
		return
	}
	addr := func(off int) netip.Addr {
		a, _ := netip.AddrFromSlice(ip[off : off+n])
		return a
	}
	port := func(off int) uint16 { return uint16(ip[l4+off])<<8 | uint16(ip[l4+off+1]) }
	client := -1
	switch {
	case isServer(addr(dstOff), port(2)):
		client = srcOff
	case isServer(addr(srcOff), port(0)):
		client = dstOff
	default:
		return
	}
	ip[client+n-2] += byte(pass)
}
