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
	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// AgentConfig configures an Agent. Zero fields take DefaultAgentConfig's
// values.
type AgentConfig struct {
	Name       string
	Secret     []byte         // shared secret; empty: no authentication
	TLS        *tls.Config    // nil: plain TCP (the secret still authenticates)
	Allow      []netip.Prefix // copy daemons allowed to connect; empty: any
	FlushDelay time.Duration  // longest a relayed header waits for its batch under load
	MaxFlows   int            // flow table bound
	ParkTime   time.Duration  // how long a SYN-ACK or RST may wait for its registration
	MaxParked  int            // parked replies bound
	QueueLen   int            // captured headers waiting for the relay
	PeerQueue  int            // batches waiting to be written to one daemon
}

// DefaultAgentConfig returns the configuration with every default filled
// in: what NewAgent uses for a zero field, and what a command line offers
// as its flags' defaults. The defaults are written here and nowhere else.
func DefaultAgentConfig() AgentConfig {
	return AgentConfig{
		FlushDelay: 200 * time.Microsecond,
		MaxFlows:   1 << 20,
		ParkTime:   time.Second,
		MaxParked:  4096,
		QueueLen:   16384,
		PeerQueue:  256,
	}
}

// defaults fills c's zero fields from DefaultAgentConfig.
func (c *AgentConfig) defaults() {
	d := DefaultAgentConfig()
	if c.FlushDelay == 0 {
		c.FlushDelay = d.FlushDelay
	}
	if c.MaxFlows == 0 {
		c.MaxFlows = d.MaxFlows
	}
	if c.ParkTime == 0 {
		c.ParkTime = d.ParkTime
	}
	if c.MaxParked == 0 {
		c.MaxParked = d.MaxParked
	}
	if c.QueueLen == 0 {
		c.QueueLen = d.QueueLen
	}
	if c.PeerQueue == 0 {
		c.PeerQueue = d.PeerQueue
	}
}

// AgentStats counts what the agent did. Every captured packet is counted
// once in Bad, DroppedQueue, NoOwner, Parked or Relayed; a parked one once
// more when it leaves the park, in ParkedDelivered (and then Relayed) or
// ParkedExpired. DroppedPeer counts relayed headers that a daemon's full
// write queue then lost.
type AgentStats struct {
	Captured        uint64 // IP packets read from the capture
	Bad             uint64 // not decodable as TCP, or a header a batch cannot take
	Relayed         uint64 // headers added to a copy daemon's batch
	NoOwner         uint64 // no registered flow and not parkable
	Parked          uint64 // SYN-ACK/RST parked awaiting registration
	ParkedDelivered uint64 // parked, then claimed in time by a registration
	ParkedExpired   uint64 // parked and never claimed in time (or evicted)
	DroppedQueue    uint64 // relay queue full: capture never waits
	DroppedPeer     uint64 // a daemon's write queue full
	Flows           int64  // registered flows (gauge)
	FlowsRejected   uint64 // flow table full
	Peers           int64  // connected daemons (gauge)
	PeersRefused    uint64 // failed handshake, authentication or allowlist
	PeerErrors      uint64 // connections closed on a protocol error
	Batches         uint64 // reply frames written
}

// Agent relays the shadow's reply headers to the copy daemons that
// registered their flows.
type Agent struct {
	cfg AgentConfig
	src capture.Source
	ln  net.Listener
	log *slog.Logger

	hdrs chan capturedHdr // capture → relay; full: dropped, counted
	ops  chan flowOp      // peers → relay; a peer waits here, the capture never does

	// st holds the counters: atomics, so the per-packet path takes no lock.
	st struct {
		captured, bad, relayed, noOwner, parked, parkedDelivered, parkedExpired atomic.Uint64
		droppedQueue, droppedPeer, flowsRejected, peersRefused, peerErrors      atomic.Uint64
		batches                                                                 atomic.Uint64
		flows, peers                                                            atomic.Int64
	}

	refusedMu sync.Mutex          // guards refused; taken per refused connection, never per packet
	refused   map[netip.Addr]bool // peers already logged as refused: log once
}

// opsQueue bounds the peers' flow operations waiting for the relay.
const opsQueue = 1024

// NewAgent returns an agent reading replies from src and serving copy
// daemons on ln. Run starts it.
func NewAgent(cfg AgentConfig, src capture.Source, ln net.Listener, log *slog.Logger) *Agent {
	cfg.defaults()
	return &Agent{
		cfg: cfg, src: src, ln: ln, log: log,
		hdrs:    make(chan capturedHdr, cfg.QueueLen),
		ops:     make(chan flowOp, opsQueue),
		refused: make(map[netip.Addr]bool),
	}
}

// Stats returns a snapshot of the counters.
func (a *Agent) Stats() AgentStats {
	s := &a.st
	return AgentStats{
		Captured: s.captured.Load(), Bad: s.bad.Load(), Relayed: s.relayed.Load(),
		NoOwner: s.noOwner.Load(), Parked: s.parked.Load(), ParkedDelivered: s.parkedDelivered.Load(),
		ParkedExpired: s.parkedExpired.Load(), DroppedQueue: s.droppedQueue.Load(),
		DroppedPeer: s.droppedPeer.Load(), Flows: s.flows.Load(), FlowsRejected: s.flowsRejected.Load(),
		Peers: s.peers.Load(), PeersRefused: s.peersRefused.Load(), PeerErrors: s.peerErrors.Load(),
		Batches: s.batches.Load(),
	}
}

// Addr returns the listening address.
func (a *Agent) Addr() net.Addr { return a.ln.Addr() }

// Run serves until ctx is done or the capture or the listener fails.
// Shutdown: cancelling closes the listener and the source, which ends
// Accept and Read; the relay closes every peer as it returns.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Add(3)
	go func() {
		defer wg.Done()
		errc <- a.captureLoop(ctx)
		cancel()
	}()
	go func() {
		defer wg.Done()
		a.relayLoop(ctx)
	}()
	go func() {
		defer wg.Done()
		errc <- a.acceptLoop(ctx)
		cancel()
	}()
	<-ctx.Done()
	a.ln.Close()
	a.src.Close()
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			return err
		}
	}
	return nil
}

// capturedHdr is one captured reply as the relay needs it: its headers,
// copied out of the capture's buffer, and its flow key.
type capturedHdr struct {
	ts  int64
	n   uint8
	hdr [wire.MaxReplyHeader]byte
	key rewrite.Tuple // reply direction: shadow → forged client
	syn bool          // SYN or RST: may beat its registration
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
		select {
		case a.hdrs <- h:
		default:
			a.st.droppedQueue.Add(1)
		}
	}
	return nil
}

// relayHeader fills h with the header to relay for captured packet pkt:
// the IP header (IPv6 extension headers dropped) and the TCP header. It
// reports false when pkt is not TCP or its headers do not fit h. It is
// on the per-packet path: no allocation.
func relayHeader(pkt []byte, h *capturedHdr) bool {
	var p rewrite.Packet
	if p.DecodeHeader(pkt) != nil {
		return false
	}
	tcp := p.TCP()
	h.key = p.Tuple()
	h.syn = tcp.Flags()&(rewrite.FlagSYN|rewrite.FlagRST) != 0
	if !p.IsV6() {
		hdrs := p.Headers()
		if len(hdrs) > len(h.hdr) {
			return false
		}
		h.n = uint8(copy(h.hdr[:], hdrs))
		return true
	}
	// IPv6: the fixed header, rewritten as if TCP followed it directly.
	n := copy(h.hdr[:rewrite.IPv6HeaderLen], pkt[:rewrite.IPv6HeaderLen])
	n += copy(h.hdr[n:], tcp)
	ip := rewrite.IPv6(h.hdr[:])
	ip[6] = rewrite.ProtoTCP
	ip.SetPayloadLen(len(tcp) + p.PayloadLen())
	h.n = uint8(n)
	return true
}
