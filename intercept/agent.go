package intercept

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/intercept/tunnel"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// AgentConfig configures an Agent. Zero fields take DefaultAgentConfig's
// values.
type AgentConfig struct {
	Name string // announced to a copy daemon once it proved the secret
	// Secret is the shared secret every copy daemon must prove; Secrets
	// instead holds one per copy daemon, by the name it announces, so that
	// no copy daemon's secret lets it pass for the agent to the others.
	// With neither, Run refuses to start unless InsecureNoAuth is set.
	Secret  []byte
	Secrets map[string][]byte
	// InsecureNoAuth runs the agent without authentication: anyone who
	// can connect may register flows within the pools it announces and
	// receive their replies' sequence numbers.
	InsecureNoAuth bool
	TLS            *tls.Config    // nil: plain TCP (frames are then sealed with the secret's session keys)
	Allow          []netip.Prefix // copy daemons allowed to connect; empty: any
	FlushDelay     time.Duration  // longest a relayed header waits for its batch under load
	MaxFlows       int            // flow table bound, every copy daemon's together
	MaxPeerFlows   int            // flows one copy daemon may hold
	// PeerFlowRate bounds the flows one copy daemon registers and
	// deregisters per second, beyond a burst of PeerFlowBurst: a faster
	// daemon is read more slowly, which slows nobody else.
	PeerFlowRate  int
	PeerFlowBurst int
	// FlowExpiry is how long a flow lives without a registration or a
	// reply when its copy daemon announced no idle time; otherwise twice
	// what it announced.
	FlowExpiry time.Duration
	ParkTime   time.Duration // how long a SYN-ACK or RST may wait for its registration
	MaxParked  int           // parked replies bound
	// QueueLen bounds the captured replies waiting for the relay: each
	// holds its headers and up to wire.MaxReplyPrefix payload bytes, about
	// 450 bytes (7 MiB at the default).
	QueueLen int
	// PeerQueue bounds the batches waiting to be written to one daemon;
	// a batch is sent at maxBatchBytes at most, so a daemon's queue holds
	// PeerQueue × 128 KiB at most, whatever prefix it asked for.
	PeerQueue int
	// MaxHandshakes bounds the connections in their handshake at once,
	// MaxConnsPerAddr the connections from one address (in their handshake
	// or copy daemons), MaxPeers the copy daemons connected at once. A
	// connection beyond any of them is closed at once (ConnsShed).
	MaxHandshakes   int
	MaxConnsPerAddr int
	MaxPeers        int
	// LocalAddrs returns this host's addresses: a flow whose forged end is
	// one of them is never registered, whatever pools a daemon announces,
	// so no daemon can read the sequence numbers of a connection to the
	// agent's host (its SSH sessions, its control channel). Nil: the
	// interfaces' addresses (net.InterfaceAddrs), read again every
	// localAddrsEvery.
	LocalAddrs func() []netip.Addr
	// Tunnels, if set, is given the tunnel keys of every authenticated
	// copy daemon while it is connected (intercept --local with the UDP
	// transport; package tunnelsock reads it).
	Tunnels *tunnel.Table
}

// DefaultAgentConfig returns the configuration with every default filled
// in: what NewAgent uses for a zero field, and what a command line offers
// as its flags' defaults. The defaults are written here and nowhere else.
func DefaultAgentConfig() AgentConfig {
	return AgentConfig{
		FlushDelay:      200 * time.Microsecond,
		MaxFlows:        1 << 20,
		MaxPeerFlows:    1 << 18,
		PeerFlowRate:    200000,
		PeerFlowBurst:   1 << 18,
		FlowExpiry:      10 * time.Minute,
		ParkTime:        time.Second,
		MaxParked:       4096,
		QueueLen:        16384,
		PeerQueue:       256,
		MaxHandshakes:   64,
		MaxConnsPerAddr: 16,
		MaxPeers:        256,
	}
}

// defaults fills c's zero fields from DefaultAgentConfig.
func (c *AgentConfig) defaults() {
	d := DefaultAgentConfig()
	for _, f := range []struct {
		v   *int
		def int
	}{
		{&c.MaxFlows, d.MaxFlows}, {&c.MaxPeerFlows, d.MaxPeerFlows}, {&c.PeerFlowRate, d.PeerFlowRate},
		{&c.PeerFlowBurst, d.PeerFlowBurst}, {&c.MaxParked, d.MaxParked}, {&c.QueueLen, d.QueueLen},
		{&c.PeerQueue, d.PeerQueue}, {&c.MaxHandshakes, d.MaxHandshakes}, {&c.MaxConnsPerAddr, d.MaxConnsPerAddr},
		{&c.MaxPeers, d.MaxPeers},
	} {
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	for _, f := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&c.FlushDelay, d.FlushDelay}, {&c.FlowExpiry, d.FlowExpiry}, {&c.ParkTime, d.ParkTime}} {
		if *f.v == 0 {
			*f.v = f.def
		}
	}
}

// ErrNoSecret is Run's refusal to serve copy daemons without
// authentication when InsecureNoAuth is not set.
var ErrNoSecret = errors.New("no secret: copy daemons would not be authenticated (set one, or run insecure on purpose)")

// AgentStats counts what the agent did. Every captured packet is counted
// once in Bad, DroppedQueue, OutsidePools, NoOwner, Parked or Relayed; a
// parked one once more when it leaves the park, in ParkedDelivered (and
// then Relayed) or ParkedExpired. DroppedPeer counts relayed headers that
// a daemon's full write queue then lost. Every flow registered is counted
// once in Flows (while it lives) or in one of the Flows* refusals.
type AgentStats struct {
	Captured         uint64 // IP packets read from the capture
	Bad              uint64 // not decodable as TCP, or a header a batch cannot take
	Relayed          uint64 // headers added to a copy daemon's batch
	OutsidePools     uint64 // no registered flow, and to an address no copy daemon's pool holds
	NoOwner          uint64 // no registered flow and not parkable
	Parked           uint64 // SYN-ACK/RST to a pool, parked awaiting registration
	ParkedDelivered  uint64 // parked, then claimed in time by a registration
	ParkedExpired    uint64 // parked and never claimed in time (or evicted)
	DroppedQueue     uint64 // relay queue full: capture never waits
	DroppedPeer      uint64 // a daemon's write queue full
	Flows            int64  // registered flows (gauge)
	FlowsRejected    uint64 // registrations refused: flow table or the daemon's quota full
	FlowsConflict    uint64 // registrations refused: another copy daemon holds the flow
	FlowsOutsidePool uint64 // registrations refused: outside the pools the daemon announced
	FlowsLocal       uint64 // registrations refused: the forged end is an address of the agent's host
	FlowsExpired     uint64 // flows dropped after going without a reply or registration too long
	Peers            int64  // connected daemons (gauge)
	PeersRefused     uint64 // failed handshake, authentication or allowlist
	PeerErrors       uint64 // connections closed on a protocol error
	ConnsShed        uint64 // connections closed at once: too many handshakes, from one address, or daemons
	AcceptErrors     uint64 // failed accepts (such as EMFILE), retried after a pause
	BadFrames        uint64 // frames from a daemon that failed authentication, skipped
	PeerThrottled    uint64 // times a daemon's reads waited for its flow rate
	Batches          uint64 // reply frames written
	// HTTP/2 walks (h2relay.go), of flows on a port a daemon named.
	H2Walked  uint64 // replies with payload walked
	H2Records uint64 // H2 records relayed
	H2Dropped uint64 // HEADERS or RST_STREAM frames whose record did not fit its reply's
	H2Lost    uint64 // flows whose walk lost sync (a segment missed or cut by the capture)
	H2NotH2   uint64 // flows whose reply did not begin like HTTP/2: relayed as any
}

// Agent relays the shadow's reply headers to the copy daemons that
// registered their flows.
type Agent struct {
	cfg AgentConfig
	src capture.Source
	ln  net.Listener
	log *slog.Logger

	hdrs      chan capturedHdr // capture → relay; full: dropped, counted
	ops       chan flowOp      // peers → relay; a peer waits here, the capture never does
	relayDone chan struct{}    // closed when the relay has returned: nobody takes ops any more
	serving   sync.WaitGroup   // the servePeer goroutines: Run returns after the last

	// st holds the counters: atomics, so the per-packet path takes no lock.
	st struct {
		captured, bad, relayed, outsidePools, noOwner, parked, parkedDelivered, parkedExpired   atomic.Uint64
		droppedQueue, droppedPeer, flowsRejected, flowsConflict, flowsOutsidePool, flowsExpired atomic.Uint64
		flowsLocal                                                                              atomic.Uint64
		h2Walked, h2Records, h2Dropped, h2Lost, h2NotH2                                         atomic.Uint64
		peersRefused, peerErrors, connsShed, acceptErrors, badFrames, peerThrottled, batches    atomic.Uint64
		flows, peers                                                                            atomic.Int64
	}

	h2      h2Table // walked HTTP/2 flows: the relay adds and removes, the capture walks
	conns   connLimits
	refused *refusalLog
	logs    struct{ accept, shed rateLimit } // per-event log lines that a flood would repeat
}

// opsQueue bounds the peers' flow operations waiting for the relay.
const opsQueue = 1024

// NewAgent returns an agent reading replies from src and serving copy
// daemons on ln. Run starts it.
func NewAgent(cfg AgentConfig, src capture.Source, ln net.Listener, log *slog.Logger) *Agent {
	cfg.defaults()
	a := &Agent{
		cfg: cfg, src: src, ln: ln, log: log,
		hdrs:      make(chan capturedHdr, cfg.QueueLen),
		ops:       make(chan flowOp, opsQueue),
		relayDone: make(chan struct{}),
		refused:   newRefusalLog(maxRefusedLogged, refusedLogTTL),
	}
	a.conns.perAddr = make(map[netip.Addr]int)
	if a.cfg.LocalAddrs == nil {
		a.cfg.LocalAddrs = interfaceAddrs
	}
	a.logs.accept.every, a.logs.shed.every = 10*time.Second, 10*time.Second
	return a
}

// Stats returns a snapshot of the counters.
func (a *Agent) Stats() AgentStats {
	s := &a.st
	return AgentStats{
		Captured: s.captured.Load(), Bad: s.bad.Load(), Relayed: s.relayed.Load(),
		OutsidePools: s.outsidePools.Load(), NoOwner: s.noOwner.Load(), Parked: s.parked.Load(),
		ParkedDelivered: s.parkedDelivered.Load(), ParkedExpired: s.parkedExpired.Load(),
		DroppedQueue: s.droppedQueue.Load(), DroppedPeer: s.droppedPeer.Load(), Flows: s.flows.Load(),
		FlowsRejected: s.flowsRejected.Load(), FlowsConflict: s.flowsConflict.Load(),
		FlowsOutsidePool: s.flowsOutsidePool.Load(), FlowsLocal: s.flowsLocal.Load(), FlowsExpired: s.flowsExpired.Load(),
		Peers: s.peers.Load(), PeersRefused: s.peersRefused.Load(), PeerErrors: s.peerErrors.Load(),
		ConnsShed: s.connsShed.Load(), AcceptErrors: s.acceptErrors.Load(), BadFrames: s.badFrames.Load(),
		PeerThrottled: s.peerThrottled.Load(), Batches: s.batches.Load(),
		H2Walked: s.h2Walked.Load(), H2Records: s.h2Records.Load(), H2Dropped: s.h2Dropped.Load(),
		H2Lost: s.h2Lost.Load(), H2NotH2: s.h2NotH2.Load(),
	}
}

// Addr returns the listening address.
func (a *Agent) Addr() net.Addr { return a.ln.Addr() }

// Run serves until ctx is done or the capture fails. A failing listener
// does not stop it: accepts are retried after a pause, and the copy
// daemons already connected keep being served. Without a secret it
// returns ErrNoSecret at once unless the config says InsecureNoAuth.
//
// Shutdown: cancelling closes the listener and the source, which ends
// Accept and Read; the relay closes every peer as it returns, and a peer
// ending after that does not wait for it.
func (a *Agent) Run(ctx context.Context) error {
	if len(a.cfg.Secret) == 0 && len(a.cfg.Secrets) == 0 && !a.cfg.InsecureNoAuth {
		a.ln.Close()
		a.src.Close()
		close(a.relayDone)
		return ErrNoSecret
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	wg.Add(3)
	go func() {
		defer wg.Done()
		errc <- a.captureLoop(ctx)
		cancel()
	}()
	go func() {
		defer wg.Done()
		defer close(a.relayDone)
		a.relayLoop(ctx)
	}()
	go func() {
		defer wg.Done()
		a.acceptLoop(ctx)
	}()
	<-ctx.Done()
	a.ln.Close()
	a.src.Close()
	wg.Wait()
	// The relay has closed every peer's connection; each servePeer now
	// returns after removing what it registered (its tunnel keys).
	a.serving.Wait()
	return <-errc
}

// interfaceAddrs returns the addresses of this host's interfaces.
func interfaceAddrs() []netip.Addr {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

// capturedHdr is one captured reply as the relay needs it: its headers
// and the first bytes of its payload (as many as it has, up to
// wire.MaxReplyPrefix), copied out of the capture's buffer, and its flow
// key. Each peer is sent hdr[:hl] and its own prefix of the rest (cut).
type capturedHdr struct {
	ts   int64
	n    uint16 // bytes of hdr filled: headers and payload
	hl   uint8  // of which headers
	hdr  [wire.MaxReplyLen]byte
	key  rewrite.Tuple // reply direction: shadow → forged client
	park bool          // SYN-ACK or RST: may beat its registration
	recs bool          // the payload bytes are H2 records, relayed whole (h2relay.go)
}

// cut returns the reply as a peer asking for prefix bytes of each reply's
// payload is sent it: the headers and up to prefix bytes after them.
func (h *capturedHdr) cut(prefix int) []byte {
	if h.recs {
		return h.hdr[:h.n]
	}
	return h.hdr[:int(h.hl)+min(int(h.n)-int(h.hl), prefix)]
}

// captureLoop reads replies and hands their headers to the relay; it
// never waits for the relay.
func (a *Agent) captureLoop(ctx context.Context) error {
	for ctx.Err() == nil {
		pkt, ts, err := a.src.Read()
		switch {
		case err == nil:
		case errors.Is(err, capture.ErrTimeout):
			continue
		case errors.Is(err, io.EOF):
			return nil
		default:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("capture: %w", err)
		}
		a.st.captured.Add(1)
		var h capturedHdr
		if !relayHeader(pkt, &h) {
			a.st.bad.Add(1)
			continue
		}
		h.ts = ts.UnixNano()
		a.h2Walk(pkt, &h)
		select {
		case a.hdrs <- h:
		default:
			a.st.droppedQueue.Add(1)
		}
	}
	return nil
}

// relayHeader fills h with what to relay of captured packet pkt: the IP
// header (IPv6 extension headers dropped) and the TCP header, then up to
// wire.MaxReplyPrefix bytes of the payload the capture kept (the peers'
// cuts are made when each is sent it). It reports false when pkt is not
// TCP or its headers do not fit h. It is on the per-packet path: no
// allocation.
//
// Only a SYN-ACK or a RST may be parked: the answers the shadow gives a
// SYN the copier sent right after registering. A bare SYN, or anything
// else, is a scan or another conversation, and is never held.
func relayHeader(pkt []byte, h *capturedHdr) bool {
	var p rewrite.Packet
	if p.DecodeHeader(pkt) != nil {
		return false
	}
	tcp := p.TCP()
	h.key = p.Tuple()
	flags := tcp.Flags()
	h.park = flags&(rewrite.FlagSYN|rewrite.FlagACK) == rewrite.FlagSYN|rewrite.FlagACK || flags&rewrite.FlagRST != 0
	var n int
	if !p.IsV6() {
		hdrs := p.Headers()
		if len(hdrs) > wire.MaxReplyHeader {
			return false
		}
		n = copy(h.hdr[:], hdrs)
	} else {
		// IPv6: the fixed header, rewritten as if TCP followed it directly.
		if rewrite.IPv6HeaderLen+len(tcp) > wire.MaxReplyHeader {
			return false
		}
		n = copy(h.hdr[:rewrite.IPv6HeaderLen], pkt[:rewrite.IPv6HeaderLen])
		n += copy(h.hdr[n:], tcp)
		ip := rewrite.IPv6(h.hdr[:])
		ip[6] = rewrite.ProtoTCP
		ip.SetPayloadLen(len(tcp) + p.PayloadLen())
	}
	h.hl = uint8(n)
	n += copy(h.hdr[n:n+wire.MaxReplyPrefix], p.Payload())
	h.n = uint16(n)
	return true
}
