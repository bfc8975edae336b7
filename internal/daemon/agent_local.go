package daemon

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/intercept/divert"
	"github.com/tcpshadow/tcpshadow/intercept/tunnel"
	"github.com/tcpshadow/tcpshadow/internal/metrics"
)

// This file is the agent's two-host mode (intercept --local): on the
// shadow itself, the agent reads the shadow's packets to the pools from
// an NFQUEUE its nftables rules fill, instead of capturing them on an
// assist host. The relay behind it is the same.

// LocalConfig configures the two-host mode.
type LocalConfig struct {
	// Pools are the client pools whose packets are diverted: the copy
	// daemons' --client-pool prefixes, at most one per family is usual.
	Pools []netip.Prefix
	Queue divert.Config
	// Tunnel receives the copy daemons' tunnel (copy --transport udp) on
	// TunnelPort at the control channel's listening address, injecting
	// through raw sockets (CAP_NET_RAW).
	Tunnel     bool
	TunnelPort int
}

// DefaultLocalConfig returns the two-host mode's defaults: divert's, and
// no tunnel, on its default port when asked for.
func DefaultLocalConfig() LocalConfig {
	return LocalConfig{Queue: divert.DefaultConfig(), TunnelPort: tunnel.DefaultPort}
}

// validateLocal checks the two-host settings; errors are *FieldError.
func validateLocal(c *LocalConfig) error {
	if len(c.Pools) == 0 {
		return fieldErr("Local.Pools", nil, "is required: the client pools whose packets the agent takes")
	}
	for _, p := range c.Pools {
		// A short prefix would divert this host's other traffic, its
		// control channel to the copy daemons included.
		if !p.IsValid() || p.Bits() < minPoolBits(p) {
			return fieldErr("Local.Pools", p, fmt.Sprintf("want a prefix of at least /%d", minPoolBits(p)))
		}
	}
	if c.Tunnel && (c.TunnelPort < 1 || c.TunnelPort > 65535) {
		return fieldErr("Local.TunnelPort", c.TunnelPort, "want 1..65535")
	}
	if c.Queue.MaxLen < 1 {
		return fieldErr("Local.Queue.MaxLen", c.Queue.MaxLen, "want at least 1")
	}
	if c.Queue.CopyRange < 128 || c.Queue.CopyRange > 65535 {
		return fieldErr("Local.Queue.CopyRange", c.Queue.CopyRange, "want 128..65535")
	}
	return nil
}

// minPoolBits is the shortest pool prefix the agent diverts.
func minPoolBits(p netip.Prefix) int {
	if p.Addr().Is4() {
		return 8
	}
	return 32
}

// localSource is the queue as the agent's capture: closing it removes
// the rules, then unbinds the queue.
type localSource struct {
	*divert.Queue
	rules *divert.Rules
	log   *slog.Logger
	once  sync.Once
}

// openLocal binds the queue, then installs the rules (replacing those a
// killed run left, in one transaction). In this order no packet is lost
// to a missing listener; and in any order none leaves the host. Pools
// holding an address of this host are refused: its own traffic would be
// taken.
func openLocal(c LocalConfig, log *slog.Logger) (capture.Source, error) {
	if a, ok := localAddrIn(c.Pools); ok {
		return nil, fieldErr("Local.Pools", a, "holds an address of this host: its own traffic would be taken")
	}
	q, err := divert.Open(c.Queue)
	if err != nil {
		return nil, inField("Local.Queue.Num", err)
	}
	r := &divert.Rules{Queue: c.Queue.Num, Pools: c.Pools}
	replaced, err := r.Install()
	if err != nil {
		q.Close()
		return nil, err
	}
	if replaced {
		log.Warn("replaced the nftables rules a previous run left (killed?)", "table", "inet "+divert.TableName)
	}
	log.Info("diverting the pools' packets to the agent", "table", "inet "+divert.TableName,
		"queue", c.Queue.Num, "pools", c.Pools, "max_queued", c.Queue.MaxLen)
	return &localSource{Queue: q, rules: r, log: log}, nil
}

// Close removes the rules, then unbinds the queue: once; later calls do
// nothing.
func (s *localSource) Close() error {
	var err error
	s.once.Do(func() {
		if rerr := s.rules.Remove(); rerr != nil {
			s.log.Error("removing the nftables rules", "err", rerr)
			err = rerr
		} else {
			s.log.Info("removed the nftables rules", "table", "inet "+divert.TableName)
		}
		if cerr := s.Queue.Close(); err == nil {
			err = cerr
		}
	})
	return err
}

// localAddrIn returns an address of this host inside one of pools.
func localAddrIn(pools []netip.Prefix) (netip.Addr, bool) {
	as, _ := net.InterfaceAddrs()
	for _, a := range as {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		for _, p := range pools {
			if p.Contains(ip.Unmap()) {
				return ip.Unmap(), true
			}
		}
	}
	return netip.Addr{}, false
}

// LocalSamples are the queue's metrics, for an agent in the two-host
// mode; nil otherwise.
func LocalSamples(src capture.Source) []metrics.Sample {
	s, ok := src.(*localSource)
	if !ok {
		return nil
	}
	st := s.QueueStats()
	c := metrics.Counters("tcpshadow_intercept_queue_")
	return []metrics.Sample{
		c("read", "Packets to the pools read from the NFQUEUE (each dropped).", st.Read),
		c("malformed", "NFQUEUE messages not parsable as a packet.", st.Malformed),
		c("verdict_errors", "DROP verdicts the kernel refused.", st.VerdictErrors),
		c("overruns", "Reads finding the NFQUEUE socket had overflowed.", st.Overruns),
		c("dropped", "Packets the kernel dropped: the queue full (queue_dropped).", st.QueueDropped),
		c("user_dropped", "Packets the kernel dropped: the agent's socket full (user_dropped).", st.UserDropped),
		{Name: "tcpshadow_intercept_queue_held", Help: "Packets waiting in the NFQUEUE.", Kind: metrics.Gauge, Value: float64(st.QueueTotal)},
	}
}
