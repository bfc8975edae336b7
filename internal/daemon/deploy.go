package daemon

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"time"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/internal/linksock"
	"github.com/tcpshadow/tcpshadow/internal/metrics"
	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// This file is what a deployment mode changes in the copy daemon: where
// packets are read (a traffic-mirroring session instead of prod's
// interface) and how packets leave for the shadow (the datalink instead
// of raw IP sockets).

// SendMode is how the copy daemon's packets leave for the shadow.
type SendMode string

const (
	// SendRaw sends through raw IP sockets: the host's routing, its
	// netfilter OUTPUT and POSTROUTING rules and conntrack apply.
	SendRaw SendMode = "raw"
	// SendDatalink sends through packet sockets to the next hop's MAC:
	// no netfilter rule, no conntrack entry (package linksock).
	SendDatalink SendMode = "datalink"
)

// resolveWait bounds how long a starting copy daemon waits for the next
// hops of its targets to resolve before it runs anyway (their packets are
// dropped and counted until they do).
const resolveWait = 2 * time.Second

// mirrored reports whether the daemon reads a mirror session.
func (c *CopyConfig) mirrored() bool { return c.Mirror.Proto != "" }

// validateSource checks the capture, or the mirror session replacing it.
func (c *CopyConfig) validateSource() error {
	if !c.mirrored() {
		return validateCapture(&c.Capture)
	}
	m := c.Mirror
	if m.Proto != capture.MirrorVXLAN && m.Proto != capture.MirrorGeneve {
		return fieldErr("Mirror.Proto", m.Proto, "want vxlan or geneve")
	}
	if !m.Addr.IsValid() || m.Addr.Port() == 0 {
		return fieldErr("Mirror.Addr", m.Addr, "want ADDR:PORT to receive the mirror session on")
	}
	if m.VNI != capture.AnyVNI && (m.VNI < 0 || m.VNI >= 1<<24) {
		return fieldErr("Mirror.VNI", m.VNI, "want 0..16777215")
	}
	if c.Engine.TrustInbound {
		return fieldErr("Engine.TrustInbound", true, "a mirror session carries prod's side: nothing to trust blindly")
	}
	return nil
}

// validateSend checks the send mode.
func (c *CopyConfig) validateSend() error {
	if err := c.validateTunnel(); err != nil {
		return err
	}
	switch c.Send {
	case SendRaw, SendDatalink:
		return nil
	}
	return fieldErr("Send", c.Send, "want raw or datalink")
}

// openSource opens what the engine's first Input reads: the mirror
// session (both directions of prod's traffic, classified by the engine:
// a packet to a map's local endpoint is a client's, one from it prod's),
// or the capture of client packets on prod's interface.
func (c *CopyConfig) openSource(h host, cc capture.Config) (capture.Source, error) {
	if !c.mirrored() {
		return h.openCapture(cc)
	}
	m := c.Mirror
	if m.BufferSize == 0 {
		m.BufferSize = c.Capture.BufferSize
	}
	src, err := h.openMirror(m)
	if err != nil {
		return nil, inField("Mirror.Addr", err)
	}
	return src, nil
}

// senders returns how each worker's sender opens, the send path's metric
// samples, and stop, which ends what runs beside the senders once they
// are closed. With SendDatalink a resolver keeps the targets' next hops.
func (c *CopyConfig) senders(h host, log *slog.Logger) (open func() (tcpstate.Sender, io.Closer, error), samples func() []metrics.Sample, stop func(), err error) {
	none := func() []metrics.Sample { return nil }
	if c.Transport == TransportUDP {
		open, samples, err := c.tunnelSenders(log)
		return open, samples, func() {}, err
	}
	if c.Send != SendDatalink {
		return h.openSender, none, func() {}, nil
	}
	var dests []netip.Addr
	for _, m := range c.Engine.Maps {
		dests = append(dests, m.Target.Addr())
	}
	res, err := linksock.NewResolver(dests, resolveWait, log)
	if err != nil {
		return nil, nil, nil, inField("Send", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); res.Run(ctx) }()
	stop = func() { cancel(); <-done; res.Close() }
	open = func() (tcpstate.Sender, io.Closer, error) {
		s, err := linksock.Open(res)
		if err != nil {
			return nil, nil, inField("Send", err)
		}
		return linksock.NewBatch(s), s, nil // one sendmmsg per worker batch
	}
	return open, func() []metrics.Sample { return LinkSamples(res) }, stop, nil
}

// MirrorSamples renders a mirror source's counters; none for another
// source.
func MirrorSamples(src capture.Source) []metrics.Sample {
	ms, ok := src.(capture.MirrorStatser)
	if !ok {
		return nil
	}
	st := ms.MirrorStats()
	c := metrics.Counters("tcpshadow_mirror_")
	return []metrics.Sample{
		c("datagrams", "Mirror session datagrams received.", st.Datagrams),
		c("frames", "Inner IP packets handed to the engine.", st.Frames),
		c("bad_tunnel", "Datagrams with a malformed VXLAN or GENEVE header, dropped.", st.BadTunnel),
		c("other_vni", "Datagrams of another VNI than the one asked for, dropped.", st.OtherVNI),
		c("non_ip", "Inner frames that were not IP, dropped.", st.NonIP),
		c("nested", "Frames that were VXLAN inside the outer tunnel (AWS GWLB).", st.Nested),
		c("truncated", "Frames cut short of their IP length by the mirror; never copied as client data.", st.Truncated),
		c("out_of_order", "TCP segments below the highest sequence seen in their flow: reordered by the mirror, or retransmitted.", st.OutOfOrder),
		c("oversize", "Datagrams larger than the read buffer.", st.Oversize),
	}
}

// LinkSamples renders the datalink send path's counters.
func LinkSamples(r *linksock.Resolver) []metrics.Sample {
	st := r.Stats()
	c := metrics.Counters("tcpshadow_datalink_")
	return []metrics.Sample{
		c("no_neighbour", "Packets dropped: the next hop's MAC address was not resolved yet.", st.NoNeighbour),
		c("no_route", "Packets dropped: no next hop known for their destination.", st.NoRoute),
		c("resolutions", "Neighbour resolutions asked of the kernel.", st.Resolutions),
		c("refreshes", "Next-hop table rebuilds.", st.Refreshes),
	}
}

// logDeployment logs what a mode changed, if anything.
func (c *CopyConfig) logDeployment(log *slog.Logger, cc capture.Config) {
	if !c.mirrored() && c.Send == SendRaw && c.Transport != TransportUDP {
		return
	}
	src := cc.Interface
	if c.mirrored() {
		src = c.Mirror.String()
	}
	log.Info("deployment", "reading", src, "send", string(c.Send), "transport", string(c.Transport))
}
