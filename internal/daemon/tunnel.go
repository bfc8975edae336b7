package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"

	"github.com/tcpshadow/tcpshadow/intercept/tunnel"
	"github.com/tcpshadow/tcpshadow/internal/metrics"
	"github.com/tcpshadow/tcpshadow/internal/rawsock"
	"github.com/tcpshadow/tcpshadow/internal/tunnelsock"
	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// This file is the tunnel transport (copy --transport udp): the copy
// daemon seals each packet for the shadow into a UDP datagram to the
// agent on the shadow host (intercept --local), which injects it there;
// no forged packet crosses the network.

// Transport is how the copy daemon's packets reach the shadow.
type Transport string

const (
	// TransportDirect sends the forged packets themselves (Send says how).
	TransportDirect Transport = "direct"
	// TransportUDP seals them into UDP datagrams to the agent's tunnel
	// port on the shadow host, from prod's own address.
	TransportUDP Transport = "udp"
)

// TunnelMSS caps the segments sent through the tunnel so that a datagram
// fits a 1500-byte path: outer IPv6 and UDP (48) and the tunnel's
// overhead (36), inner IPv6 and TCP with timestamps (72).
const TunnelMSS = 1500 - 48 - tunnel.Overhead - 72

// validateTunnel checks the transport's settings.
func (c *CopyConfig) validateTunnel() error {
	switch c.Transport {
	case TransportDirect:
		return nil
	case TransportUDP:
	default:
		return fieldErr("Transport", c.Transport, "want direct or udp")
	}
	if c.Send != SendRaw {
		return fieldErr("Send", c.Send, "does not apply with the udp transport: datagrams leave through prod's own UDP socket")
	}
	if c.TunnelPort < 1 || c.TunnelPort > 65535 {
		return fieldErr("TunnelPort", c.TunnelPort, "want 1..65535")
	}
	if len(c.Client.Secret) == 0 {
		return fieldErr("Transport", c.Transport, "needs the control channel's secret: the tunnel's keys derive from it")
	}
	if c.Engine.Pool == nil {
		return fieldErr("Transport", c.Transport, "needs a client pool: the agent injects only packets from the pools announced")
	}
	return nil
}

// tunnelDst is the agent's tunnel address: the host of Client.Addr, at
// TunnelPort.
func (c *CopyConfig) tunnelDst(ctx context.Context) (netip.AddrPort, error) {
	host, _, err := net.SplitHostPort(c.Client.Addr)
	if err != nil {
		host = c.Client.Addr
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(addrs) == 0 {
		return netip.AddrPort{}, fmt.Errorf("the agent's address %q: %w", host, err)
	}
	return netip.AddrPortFrom(addrs[0].Unmap(), uint16(c.TunnelPort)), nil
}

// tunnelSenders returns how each worker's tunnel sender opens, and the
// link's metric samples. The client learns the link's keys (c.tunnel).
func (c *CopyConfig) tunnelSenders(log *slog.Logger) (func() (tcpstate.Sender, io.Closer, error), func() []metrics.Sample, error) {
	ctx, cancel := context.WithTimeout(context.Background(), resolveWait)
	dst, err := c.tunnelDst(ctx)
	cancel()
	if err != nil {
		return nil, nil, inField("Client.Addr", err)
	}
	link := &tunnelsock.Link{Dst: dst}
	c.tunnel = &link.Keys
	log.Info("sending through the udp tunnel", "to", dst.String())
	open := func() (tcpstate.Sender, io.Closer, error) {
		s, err := tunnelsock.Open(link)
		if err != nil {
			return nil, nil, inField("TunnelPort", err)
		}
		return s, s, nil // one sendmmsg per worker batch
	}
	return open, func() []metrics.Sample { return TunnelSendSamples(link) }, nil
}

// TunnelSendSamples renders the copy daemon's tunnel counters.
func TunnelSendSamples(l *tunnelsock.Link) []metrics.Sample {
	st := l.Stats()
	c := func(name, help string, v uint64) metrics.Sample {
		return metrics.Sample{Name: "tcpshadow_tunnel_" + name + "_total", Help: help, Value: float64(v)}
	}
	return []metrics.Sample{
		c("sent", "Datagrams sent to the agent's tunnel port.", st.Sent),
		c("send_failed", "Datagrams the kernel refused to send.", st.Failed),
		c("no_session", "Packets dropped: the control channel was down, so no tunnel keys.", st.NoSession),
		c("too_big", "Packets dropped: larger than a datagram may carry.", st.TooBig),
	}
}

// openTunnel starts the agent's tunnel receiver on the control channel's
// listening address at port, injecting through raw sockets. stop ends it.
func openTunnel(listen string, port int, peers *tunnel.Table, log *slog.Logger) (r *tunnelsock.Receiver, stop func(), err error) {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, nil, fieldErr("Listen", listen, "want [ADDR]:PORT")
	}
	addr := netip.IPv6Unspecified()
	if host != "" {
		if addr, err = netip.ParseAddr(host); err != nil {
			return nil, nil, fieldErr("Listen", listen, "want a numeric address with the tunnel")
		}
	}
	inj, err := rawsock.Open()
	if err != nil {
		return nil, nil, inField("Local.TunnelPort", err)
	}
	r, err = tunnelsock.Listen(netip.AddrPortFrom(addr.Unmap(), uint16(port)), peers, rawsock.NewBatch(inj))
	if err != nil {
		inj.Close()
		return nil, nil, inField("Local.TunnelPort", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := r.Run(ctx); err != nil {
			log.Error("tunnel receiver stopped", "err", err)
		}
	}()
	log.Info("receiving the udp tunnel", "listen", net.JoinHostPort(addr.String(), strconv.Itoa(port)))
	return r, func() { cancel(); <-done; inj.Close() }, nil
}

// TunnelRecvSamples renders the agent's tunnel counters; none without a
// receiver.
func TunnelRecvSamples(r *tunnelsock.Receiver) []metrics.Sample {
	if r == nil {
		return nil
	}
	st := r.Stats()
	c := func(name, help string, v uint64) metrics.Sample {
		return metrics.Sample{Name: "tcpshadow_tunnel_" + name + "_total", Help: help, Value: float64(v)}
	}
	return []metrics.Sample{
		c("received", "Tunnel datagrams read.", st.Received),
		c("injected", "Inner packets handed to this host's stack.", st.Injected),
		c("bad_mac", "Datagrams whose authentication tag did not verify; dropped.", st.BadMAC),
		c("replayed", "Datagrams of a counter already accepted or older than the window; dropped.", st.Replayed),
		c("malformed", "Datagrams too short, or of another version or type; dropped.", st.Malformed),
		c("too_big", "Datagrams larger than the tunnel allows; dropped.", st.TooBig),
		c("no_session", "Datagrams of a session no connected copy daemon has; dropped.", st.NoSession),
		c("refused", "Verified inner packets not IP, not from their copy daemon's pools or not to this host; dropped.", st.Refused),
		c("inject_failed", "Inner packets this host's stack refused.", st.Failed),
		c("probes", "Probes answered (tcpshadow doctor).", st.Probes),
	}
}
