package tcpstate

import (
	"encoding/binary"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/compare"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// checkingSender checks every packet the worker sends: it decodes, comes
// from the pool and goes to a configured target.
type checkingSender struct {
	t       *testing.T
	pool    netip.Prefix
	targets []netip.AddrPort
	n       int
}

func (c *checkingSender) Send(b []byte) error {
	var p rewrite.Packet
	if err := p.Decode(b); err != nil {
		c.t.Fatalf("sent an undecodable packet: %v", err)
	}
	if !p.ChecksumValid() {
		c.t.Fatalf("sent a packet with a bad checksum")
	}
	dst := netip.AddrPortFrom(p.DstAddr(), p.TCP().DstPort())
	ok := false
	for _, t := range c.targets {
		ok = ok || t == dst
	}
	if !ok || !c.pool.Contains(p.SrcAddr()) {
		c.t.Fatalf("sent %v -> %v: not from the pool to a target", p.SrcAddr(), dst)
	}
	c.n++
	return nil
}

// registry tracks what the worker registered with the agent.
type registry struct {
	t     *testing.T
	flows map[rewrite.Tuple]bool
}

func (r *registry) Register(f rewrite.Tuple) {
	if r.flows[f] {
		r.t.Fatalf("flow %v registered twice", f)
	}
	r.flows[f] = true
}

func (r *registry) Deregister(f rewrite.Tuple) {
	if !r.flows[f] {
		r.t.Fatalf("flow %v deregistered but not registered", f)
	}
	delete(r.flows, f)
}

// fuzzClients are the few client endpoints a script plays, so that its
// packets meet the same sessions.
var fuzzClients = []netip.AddrPort{
	netip.MustParseAddrPort("198.18.0.2:40000"),
	netip.MustParseAddrPort("198.18.0.2:40001"),
	netip.MustParseAddrPort("198.18.0.3:40000"),
}

// FuzzWorker plays a script of captured client packets, prod's packets,
// relayed replies and clock steps against a worker with small budgets,
// and checks after every step what must always hold: what is sent
// decodes and goes from the pool to the target, buffered bytes are
// accounted exactly and within budget, sessions within their limit,
// registrations equal the registered sessions; after shutdown, nothing.
// fuzzCopies is FuzzWorker's Controls.Multiply.
const fuzzCopies = 3

func FuzzWorker(f *testing.F) {
	f.Add([]byte{0, 0, 0x02, 0, 0, 0, 1, 0, 0x12, 0, 0, 0, 0, 0, 0x10, 1, 1, 0, 2, 0, 0x12, 0, 0, 0, 0, 0, 0x18, 1, 1, 40, 3, 10})
	f.Add([]byte{0, 1, 0x02, 0, 0, 200, 3, 255, 0, 2, 0x11, 0, 5, 0, 0, 4, 0x04, 0, 0, 0})
	f.Add([]byte{0, 2, 0x18, 3, 3, 90, 1, 2, 0x10, 3, 3, 0, 2, 2, 0x19, 0, 0, 0, 3, 200, 3, 200})
	f.Fuzz(func(t *testing.T, script []byte) {
		if len(script) > 4096 {
			return
		}
		hang := time.AfterFunc(10*time.Second, func() { panic("FuzzWorker: a script ran for 10s") })
		defer hang.Stop()
		pool := netip.MustParsePrefix("198.19.0.0/16")
		p, err := rewrite.NewPool([]netip.Prefix{pool}, 0)
		if err != nil {
			t.Fatal(err)
		}
		cfg := Config{
			Maps: []Map{{Local: tProd, Target: tShadow}}, Pool: p,
			MaxSessions: 4, MaxBufferBytes: 32 << 10, MaxSessionBytes: 8 << 10, MSS: 600,
			ComparePrefix: 64,
		}
		cfg.Controls.Multiply = fuzzCopies // copies of one connection share the worker's budgets
		cfg.Defaults()
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		out := &checkingSender{t: t, pool: pool, targets: []netip.AddrPort{tShadow}}
		reg := &registry{t: t, flows: map[rewrite.Tuple]bool{}}
		var ctr counters
		w := newWorker(&cfg, 0, 1, out, reg, &ctr, &shared{log: slog.New(slog.DiscardHandler), hinted: make([]atomic.Bool, 1)})
		w.sleep = func(time.Duration) {}
		w.rec = compare.NewRecorder(4) // small: full rings are exercised too
		var pair compare.Pair
		now := int64(1e9)
		wall := int64(1_700_000_000e9)
		for len(script) >= 2 {
			op, arg := script[0]%4, script[1]
			script = script[2:]
			client := fuzzClients[int(arg)%len(fuzzClients)]
			take := func(n int) []byte {
				b := make([]byte, n)
				copy(b, script)
				script = script[min(n, len(script)):]
				return b
			}
			switch op {
			case 0, 1: // a client's packet, or prod's, on one of the flows
				h := take(6)
				flags := h[0]
				seq := tISN + uint32(h[1])*97
				ack := tProdISN + uint32(h[2])*131
				plen := int(h[3]) * 9
				seg := rewrite.Segment{Src: client, Dst: tProd, Seq: seq, Ack: ack, Flags: flags,
					Window: binary.BigEndian.Uint16(h[4:]), Payload: make([]byte, plen)}
				if h[5]&1 != 0 {
					seg.Options = rewrite.AppendTimestamps(nil, uint32(now/1e6), 0)
				}
				if h[5]&2 != 0 {
					seg.Options = rewrite.AppendMSS(seg.Options, uint16(h[5])*4)
				}
				if op == 1 {
					seg.Src, seg.Dst = tProd, client
					seg.Seq, seg.Ack = ack, seq
					if plen > ProdPrefix {
						seg.Payload = seg.Payload[:ProdPrefix] // cut, as prod's capture does
					}
				}
				b := make([]byte, seg.Len())
				if _, err := seg.Put(b); err != nil {
					continue
				}
				if op == 0 && h[5]&4 != 0 {
					b = withIPOptions(b, h[5])
				}
				pb := getBuf(len(b))
				if pb == nil {
					continue
				}
				copy(pb.b, b)
				var pk rewrite.Packet
				if err := pk.DecodeHeader(pb.b); err != nil {
					pb.free()
					continue
				}
				r := routeOf(0, h[4]%fuzzCopies) // which copy of the connection the packet is queued for
				if op == 1 {
					binary.BigEndian.PutUint16(pb.b[rewrite.IPv4TotalLenOffset:], uint16(len(b)+plen-len(seg.Payload)))
					_ = pk.DecodeHeader(pb.b)
					w.handleProd(pb, pk.Layout(), wall, r, now)
				} else {
					w.handleCaptured(pb, pk.Layout(), wall, r, now)
				}
			case 2: // a reply from the shadow to one of the forged flows
				h := take(8)
				forged := netip.AddrPortFrom(p.MapCopy(client.Addr(), int(h[7]>>1)%fuzzCopies), client.Port()+uint16(h[7]%2))
				seg := rewrite.Segment{Src: tShadow, Dst: forged, Flags: h[0],
					Seq: tShadowISN + uint32(h[1])*101, Ack: tISN + uint32(h[2])*97,
					Window: binary.BigEndian.Uint16(h[3:])}
				if h[5]&1 != 0 {
					seg.Options = rewrite.AppendMSS(nil, uint16(h[6]))
				}
				if h[5]&2 != 0 {
					seg.Options = rewrite.AppendWindowScale(seg.Options, h[6]%20)
				}
				if h[5]&4 != 0 {
					seg.Options = rewrite.AppendTimestamps(seg.Options, uint32(h[6])<<20, uint32(now/1e6))
				}
				seg.Payload = make([]byte, int(h[5]>>3)*50)
				b := make([]byte, seg.Len())
				if _, err := seg.Put(b); err != nil {
					continue
				}
				var pk rewrite.Packet
				if err := pk.Decode(b); err != nil {
					continue
				}
				hdr := b[:len(pk.Headers())+min(len(pk.Payload()), 64)] // headers and the relayed prefix
				var hp rewrite.Packet
				if err := hp.DecodeHeader(hdr); err != nil {
					continue
				}
				w.handleReply(hdr, hp.Layout(), now)
			case 3: // time passes
				d := time.Duration(arg) * 7 * time.Millisecond
				if arg > 250 {
					d = time.Duration(arg-250) * 30 * time.Second
				}
				now += int64(d)
				wall += int64(d)
				w.Tick(now)
			}
			w.Flush(now)
			checkWorker(t, w, reg)
			if script != nil && len(script)%3 == 0 {
				for w.rec.Next(&pair) {
					if pair.RequestLen > compare.RequestHeadLen || pair.Prod.HeadLen > 64 || pair.Shadow.HeadLen > 64 {
						t.Fatalf("pair with %d request bytes, heads %d and %d", pair.RequestLen, pair.Prod.HeadLen, pair.Shadow.HeadLen)
					}
				}
			}
		}
		w.Shutdown(now)
		checkWorker(t, w, reg)
		if w.Sessions() != 0 || w.buffered != 0 || len(reg.flows) != 0 || ctr.active.Load() != 0 {
			t.Fatalf("after shutdown: %d sessions, %d bytes, %d flows registered, active %d",
				w.Sessions(), w.buffered, len(reg.flows), ctr.active.Load())
		}
		for st := range ctr.states {
			if n := ctr.states[st].Load(); n != 0 {
				t.Fatalf("after shutdown: %d sessions in state %v", n, state(st))
			}
		}
	})
}

// checkWorker checks the worker's invariants.
func checkWorker(t *testing.T, w *Worker, reg *registry) {
	t.Helper()
	var held int64
	registered := 0
	states := make(map[state]int64)
	for ft, s := range w.byForged {
		if s.forged != ft {
			t.Fatalf("session under %v has forged %v", ft, s.forged)
		}
		n := 0
		for _, g := range s.q() {
			n += g.pb.size()
		}
		if s.syn != nil {
			n += s.syn.size()
		}
		if s.fastOpen {
			n += w.fastOpen[s].pb.size()
		}
		if n != s.qBytes {
			t.Fatalf("session %v holds %d bytes, accounts %d", ft, n, s.qBytes)
		}
		if s.qBytes > w.cfg.MaxSessionBytes+bufClasses[len(bufClasses)-1] {
			t.Fatalf("session %v holds %d bytes, limit %d", ft, s.qBytes, w.cfg.MaxSessionBytes)
		}
		held += int64(n)
		if s.registered {
			registered++
			if !reg.flows[ft] {
				t.Fatalf("session %v registered but the agent does not know it", ft)
			}
		}
		states[s.state]++
	}
	if held != w.buffered {
		t.Fatalf("sessions hold %d bytes, the worker accounts %d", held, w.buffered)
	}
	if w.buffered > w.budget+int64(bufClasses[len(bufClasses)-1]) {
		t.Fatalf("%d bytes buffered, budget %d", w.buffered, w.budget)
	}
	if registered != len(reg.flows) {
		t.Fatalf("%d sessions registered, the agent has %d flows", registered, len(reg.flows))
	}
	if got := len(w.byForged); got > w.maxSess {
		t.Fatalf("%d sessions held, limit %d", got, w.maxSess)
	}
	for st := stateProdOpening; st < numStates; st++ {
		if w.ctr.states[st].Load() != states[st] {
			t.Fatalf("gauge of %v says %d, %d sessions are", st, w.ctr.states[st].Load(), states[st])
		}
	}
	withRounds := 0
	for _, s := range w.byForged {
		if s.rounds != nil {
			withRounds++
			if s.rounds.n < 0 || s.rounds.n > maxPendingRounds {
				t.Fatalf("session holds %d rounds", s.rounds.n)
			}
		}
	}
	if withRounds != w.compared {
		t.Fatalf("%d sessions keep rounds, the worker counts %d", withRounds, w.compared)
	}
	if len(w.fastOpen) > len(w.byForged) {
		t.Fatalf("%d fast-open buffers for %d sessions", len(w.fastOpen), len(w.byForged))
	}
}
