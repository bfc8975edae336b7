package daemon

import (
	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/intercept"
	"github.com/tcpshadow/tcpshadow/internal/metrics"
	"github.com/tcpshadow/tcpshadow/internal/pcapdump"
	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// metricPrefix starts every metric name; the stats log leaves it out.
const metricPrefix = "tcpshadow_"

// CopySamples renders the copy daemon's counters as metric samples: the
// engine's, the control channel's and the captures' (prodSrc, prod's
// side, may be nil).
func CopySamples(eng *tcpstate.Engine, client *intercept.Client, src, prodSrc capture.Source) []metrics.Sample {
	st := eng.Stats()
	out := make([]metrics.Sample, 0, 64)
	st.EachCounter(func(name string, v uint64) {
		out = append(out, metrics.Sample{
			Name: "tcpshadow_copy_events_total", Help: "Copy datapath events by stage.",
			Labels: []string{"event", name}, Value: float64(v),
		})
	})
	st.EachEnded(func(reason string, v uint64) {
		out = append(out, metrics.Sample{
			Name: "tcpshadow_copy_sessions_ended_total", Help: "Sessions ended, by reason.",
			Labels: []string{"reason", reason}, Value: float64(v),
		})
	})
	st.EachState(func(state string, n int64) {
		out = append(out, metrics.Sample{
			Name: "tcpshadow_copy_sessions", Help: "Sessions held, by state.", Kind: metrics.Gauge,
			Labels: []string{"state", state}, Value: float64(n),
		})
	})
	for _, m := range st.Maps {
		out = append(out, metrics.Sample{
			Name: "tcpshadow_copy_shadow_rejected_total", Help: "Client connections no longer copied: the shadow kept closing fresh connections before answering as prod did.",
			Labels: []string{"map", m.Map.String()}, Value: float64(m.ShadowRejected),
		})
	}
	if prodSrc != nil {
		ps := prodSrc.Stats()
		out = append(out,
			metrics.Sample{Name: "tcpshadow_capture_prod_kernel_received_total", Help: "Packets of prod's side the kernel passed the filter.", Value: float64(ps.KernelRecv)},
			metrics.Sample{Name: "tcpshadow_capture_prod_kernel_dropped_total", Help: "Packets of prod's side dropped by the kernel for lack of buffer.", Value: float64(ps.KernelDropped)},
		)
	}
	cs := client.Stats()
	connected := 0.0
	if cs.Connected {
		connected = 1
	}
	capst := src.Stats()
	out = append(out,
		metrics.Sample{Name: "tcpshadow_copy_sessions_active", Help: "Sessions held, lingering ones included.", Kind: metrics.Gauge, Value: float64(st.Active)},
		metrics.Sample{Name: "tcpshadow_copy_buffered_bytes", Help: "Client data buffered for the shadow.", Kind: metrics.Gauge, Value: float64(st.Buffered)},
		metrics.Sample{Name: "tcpshadow_capture_kernel_received_total", Help: "Packets the kernel passed the filter.", Value: float64(capst.KernelRecv)},
		metrics.Sample{Name: "tcpshadow_capture_kernel_dropped_total", Help: "Packets dropped by the kernel for lack of buffer.", Value: float64(capst.KernelDropped)},
		metrics.Sample{Name: "tcpshadow_capture_interface_dropped_total", Help: "Packets dropped by the interface.", Value: float64(capst.IfDropped)},
		metrics.Sample{Name: "tcpshadow_capture_non_ip_total", Help: "Captured frames that were not IP.", Value: float64(capst.NonIP)},
		metrics.Sample{Name: "tcpshadow_capture_other_host_total", Help: "Captured frames addressed to another host, not copied.", Value: float64(capst.OtherHost)},
		metrics.Sample{Name: "tcpshadow_agent_connected", Help: "1 when the control channel to the agent is up.", Kind: metrics.Gauge, Value: connected},
		metrics.Sample{Name: "tcpshadow_agent_connects_total", Help: "Control channel connections made.", Value: float64(cs.Connects)},
		metrics.Sample{Name: "tcpshadow_agent_disconnects_total", Help: "Control channel connections lost.", Value: float64(cs.Disconnects)},
		metrics.Sample{Name: "tcpshadow_agent_connect_failures_total", Help: "Failed attempts to reach the agent.", Value: float64(cs.ConnectFailures)},
		metrics.Sample{Name: "tcpshadow_agent_registrations_total", Help: "Flow registrations sent.", Value: float64(cs.Registered)},
		metrics.Sample{Name: "tcpshadow_agent_deregistrations_total", Help: "Flow de-registrations sent.", Value: float64(cs.Deregistered)},
		metrics.Sample{Name: "tcpshadow_agent_resyncs_total", Help: "Times every live registration was sent again.", Value: float64(cs.Resyncs)},
		metrics.Sample{Name: "tcpshadow_agent_flows", Help: "Flows the copier wants registered with the agent.", Kind: metrics.Gauge, Value: float64(cs.Flows)},
		metrics.Sample{Name: "tcpshadow_agent_bad_frames_total", Help: "Frames from the agent that failed authentication, skipped.", Value: float64(cs.BadFrames)},
		metrics.Sample{Name: "tcpshadow_agent_reply_frames_total", Help: "Reply frames received from the agent.", Value: float64(cs.ReplyFrames)},
		metrics.Sample{Name: "tcpshadow_agent_replies_total", Help: "Reply headers received from the agent.", Value: float64(cs.Replies)},
	)
	return append(out, ringSamples("tcpshadow_capture_", capst)...)
}

// ringSamples renders a live capture ring's size and growth.
func ringSamples(prefix string, cs capture.Stats) []metrics.Sample {
	c := func(name, help string, v uint64) metrics.Sample {
		return metrics.Sample{Name: prefix + name, Help: help, Value: float64(v)}
	}
	return []metrics.Sample{
		{Name: prefix + "ring_bytes", Help: "Size of the capture ring now; it grows with the rate up to the capture buffer's.", Kind: metrics.Gauge, Value: float64(cs.RingBytes)},
		c("ring_grown_total", "Times the capture ring was replaced by a bigger one.", cs.RingGrown),
		c("ring_grow_failed_total", "Times a bigger capture ring could not be had (memory); retried 10s later.", cs.RingGrowFailed),
		c("ring_cut_total", "Packets cut to fit a small ring's blocks (the ring then grows).", cs.RingCut),
		c("ring_duplicates_total", "Packets read from both rings during a switch, skipped the second time.", cs.RingDuplicates),
	}
}

// ControlSamples renders the load-test controls in effect (they change
// on SIGHUP) and the copied share now, on its ramp.
func ControlSamples(eng *tcpstate.Engine) []metrics.Sample {
	c, share := eng.ControlsNow()
	g := func(control string, v float64) metrics.Sample {
		return metrics.Sample{Name: "tcpshadow_copy_control", Help: "Load-test controls in effect: sample (share), share_now (on its ramp), multiply, ramp_seconds, max_new_sessions (0: no cap).",
			Kind: metrics.Gauge, Labels: []string{"control", control}, Value: v}
	}
	return []metrics.Sample{
		g("sample", c.Sample), g("share_now", share), g("multiply", float64(c.Multiply)),
		g("ramp_seconds", c.Ramp.Seconds()), g("max_new_sessions", c.MaxNewSessions),
	}
}

// AgentSamples renders the agent's counters and its capture's as metric
// samples.
func AgentSamples(a *intercept.Agent, src capture.Source) []metrics.Sample {
	st := a.Stats()
	cs := src.Stats()
	c := metrics.Counters("tcpshadow_intercept_")
	g := func(name, help string, v int64) metrics.Sample {
		return metrics.Sample{Name: "tcpshadow_intercept_" + name, Help: help, Kind: metrics.Gauge, Value: float64(v)}
	}
	return append([]metrics.Sample{
		c("captured", "Reply packets captured.", st.Captured),
		c("bad", "Captured packets not decodable as TCP.", st.Bad),
		c("relayed", "Reply headers queued to a copy daemon.", st.Relayed),
		c("no_owner", "Replies of flows nobody registered.", st.NoOwner),
		c("parked", "SYN-ACK/RST replies parked until their registration.", st.Parked),
		c("parked_delivered", "Parked replies delivered.", st.ParkedDelivered),
		c("parked_expired", "Parked replies never claimed.", st.ParkedExpired),
		c("dropped_queue", "Replies dropped: relay queue full.", st.DroppedQueue),
		c("dropped_peer", "Replies dropped: a copy daemon's queue full.", st.DroppedPeer),
		c("outside_pools", "Replies to an address no copy daemon's pool holds.", st.OutsidePools),
		c("flows_rejected", "Registrations refused: flow table or the daemon's quota full.", st.FlowsRejected),
		c("flows_conflict", "Registrations refused: another copy daemon holds the flow.", st.FlowsConflict),
		c("flows_outside_pool", "Registrations refused: outside the daemon's announced pools.", st.FlowsOutsidePool),
		c("flows_local", "Registrations refused: the forged end is an address of the agent's host.", st.FlowsLocal),
		c("flows_expired", "Flows dropped after going without a reply or registration too long.", st.FlowsExpired),
		c("peers_refused", "Connections refused (allowlist, version, authentication).", st.PeersRefused),
		c("peer_errors", "Connections closed on a protocol error.", st.PeerErrors),
		c("conns_shed", "Connections closed at once: too many handshakes, from one address, or daemons.", st.ConnsShed),
		c("accept_errors", "Failed accepts (such as EMFILE), retried after a pause.", st.AcceptErrors),
		c("bad_frames", "Frames from copy daemons that failed authentication, skipped.", st.BadFrames),
		c("peer_throttled", "Times a copy daemon's reads waited for its flow rate.", st.PeerThrottled),
		c("batches", "Reply frames written.", st.Batches),
		c("h2_walked", "Replies of HTTP/2 flows walked for H2 records.", st.H2Walked),
		c("h2_records", "H2 records (one per HEADERS or RST_STREAM frame) relayed.", st.H2Records),
		c("h2_dropped", "HEADERS or RST_STREAM frames whose record did not fit its reply's.", st.H2Dropped),
		c("h2_lost", "HTTP/2 flows whose walk lost sync: none of their records relayed after.", st.H2Lost),
		c("h2_not_h2", "Flows on an HTTP/2 port whose reply did not begin like HTTP/2: relayed as any.", st.H2NotH2),
		g("flows", "Registered flows.", st.Flows),
		g("peers", "Connected copy daemons.", st.Peers),
		c("kernel_received", "Packets the kernel passed the filter.", cs.KernelRecv),
		c("kernel_dropped", "Packets the kernel dropped for lack of capture buffer.", cs.KernelDropped),
		c("interface_dropped", "Packets dropped by the interface.", cs.IfDropped),
		c("non_ip", "Captured frames that were not IP.", cs.NonIP),
	}, ringSamples("tcpshadow_intercept_", cs)...)
}

// DumpSamples renders a dump's counters; none without a dump.
func DumpSamples(d *pcapdump.Dump) []metrics.Sample {
	if d == nil {
		return nil
	}
	st := d.Stats()
	return []metrics.Sample{
		{Name: "tcpshadow_dump_packets_total", Help: "Packets written to the pcap dump.", Value: float64(st.Packets)},
		{Name: "tcpshadow_dump_errors_total", Help: "Dump write, open and rotation errors.", Value: float64(st.Errors)},
		{Name: "tcpshadow_dump_dropped_total", Help: "Packets not dumped because of an error.", Value: float64(st.Dropped)},
		{Name: "tcpshadow_dump_rotations_total", Help: "Dump files started because the current one was full.", Value: float64(st.Rotations)},
	}
}
