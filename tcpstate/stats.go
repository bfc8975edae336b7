package tcpstate

import (
	"sync/atomic"
)

// Counter names one per-stage counter of the copy datapath. Every packet
// that enters the engine ends in exactly one place that counts it, so loss
// is never silent.
type Counter int

const (
	CtrCaptured Counter = iota // IP packets handed to the engine
	CtrIgnoredTruncated
	CtrIgnoredBadHeader
	CtrIgnoredFragment
	CtrIgnoredNotTCP
	CtrIgnoredNoMap     // no --map matches the destination
	CtrIgnoredFamily    // target of another address family
	CtrIgnoredNoSession // pure ACK/FIN/RST of a flow without a session
	CtrShedQueue        // worker queue full: capture never waits
	CtrShedSessions     // session limit reached
	CtrShedMemory       // buffered-bytes budget exhausted
	CtrShedPorts        // no free forged tuple
	CtrSessionsStarted
	CtrJoinedMidstream // sessions started from data without a SYN (scenario 5)
	CtrSynRetransmit   // client SYN with the session's ISN (scenario 2)
	CtrClientDupData   // client data already queued (scenario 12)
	CtrClientTrimmed   // client data partially overlapping, trimmed
	CtrSplit           // oversized captured segments split (scenario 24)
	CtrPacketsSent     // handed to the socket layer
	CtrBytesSent
	CtrSendErrors  // of those, refused by the kernel (never fatal)
	CtrRetransmits // segments re-sent to the shadow (scenario 13)
	CtrFastRetransmits
	CtrReplies
	CtrRepliesBad
	CtrRepliesNoSession
	CtrRepliesQueueFull
	CtrRepliesStale     // reply of an earlier incarnation (scenario 6)
	CtrLateReplyRST     // replies to ended sessions answered with RST (scenario 20)
	CtrShadowDupData    // shadow retransmitted data, re-ACKed (scenario 16)
	CtrGreetingWaits    // requests held for a server greeting (scenario 10)
	CtrReconnects       // fresh shadow connections after the shadow closed (scenario 19)
	CtrPortReuseLagging // port reused while the old copy was still under way (scenario 3)
	CtrOddPackets       // other odd packets ignored (scenario 25)
	CtrRequests         // request starts sent after pacing (scenarios 7-8)
	CtrDriftMicros      // sum of how much later than on prod requests reached the shadow
	CtrFromProd         // packets prod sent on a copied flow
	CtrProdNoSession    // of those, of flows without a session
	CtrNotAccepted      // flows prod never accepted: nothing of them reached the shadow (scenario 33)
	CtrNotAcceptedBytes // client bytes prod never acknowledged, not copied (33)
	CtrPacingShort      // rounds released after the shadow answered less than prod (8)
	CtrPacingNoAnswer   // rounds released after no answer from the shadow (9)
	CtrShadowRejected   // client flows given up: the shadow kept closing fresh connections (32)
	CtrReconnectsDeferred
	CtrDrainCut         // data prod accepted before the client's FIN or RST, cut by DrainTimeout (30)
	CtrIgnoredBigPacket // GRO/GSO super-packets past 64 KiB (BIG TCP), jumbograms: their length cannot be trusted
	CtrIgnoredMapped    // IPv6 packets with an IPv4-mapped address
	CtrIgnoredNotLocal  // to a port-only map's port, but not to one of this host's addresses
	CtrFastOpenSYNs     // client SYNs carrying data (TCP Fast Open): the data follows the handshake
	CtrRSTsLimited      // RSTs not sent: one per session per lateRSTGap
	CtrRepliesDeferred  // loop turns that left replies queued so that captured packets go first
	CtrComparePairs     // requests paired with both responses, handed to the comparison (42)
	CtrCompareDropped   // of those, refused by a full comparison queue
	CtrCompareOverflow  // rounds left unpaired: the shadow lagged more than maxPendingRounds behind
	CtrCompareSkipped   // sessions not compared: maxComparedSessions were
	CtrCompareResync    // the walk of the shadow's responses lost sync: a boundary out of the relayed prefix
	CtrCompareUnpaired  // shadow responses that began with no request released left to answer
	CtrCompareH2Lost    // HTTP/2 connections whose walk lost sync on a side: their pending streams unpaired
	CtrCompareH2Bad     // replies of an HTTP/2 map relayed without H2 records (a payload prefix)
	CtrSkippedSample    // client connections --sample (on its ramp) left out, counted at their SYN (43, 45)
	CtrSkippedRate      // shadow sessions not started: --max-new-sessions (46)
	CtrIgnoredSkipped   // packets of connections (or copies) the controls left out
	numCounters
)

var counterNames = [numCounters]string{
	CtrCaptured:           "captured",
	CtrIgnoredTruncated:   "ignored_truncated",
	CtrIgnoredBadHeader:   "ignored_bad_header",
	CtrIgnoredFragment:    "ignored_fragment",
	CtrIgnoredNotTCP:      "ignored_not_tcp",
	CtrIgnoredNoMap:       "ignored_no_map",
	CtrIgnoredFamily:      "ignored_family",
	CtrIgnoredNoSession:   "ignored_no_session",
	CtrShedQueue:          "shed_queue_full",
	CtrShedSessions:       "shed_session_limit",
	CtrShedMemory:         "shed_memory",
	CtrShedPorts:          "shed_no_forged_port",
	CtrSessionsStarted:    "sessions_started",
	CtrJoinedMidstream:    "sessions_joined_midstream",
	CtrSynRetransmit:      "client_syn_retransmits",
	CtrClientDupData:      "client_duplicate_segments",
	CtrClientTrimmed:      "client_trimmed_segments",
	CtrSplit:              "oversized_split",
	CtrPacketsSent:        "packets_sent",
	CtrBytesSent:          "bytes_sent",
	CtrSendErrors:         "send_errors",
	CtrRetransmits:        "retransmits",
	CtrFastRetransmits:    "fast_retransmits",
	CtrReplies:            "replies",
	CtrRepliesBad:         "replies_bad",
	CtrRepliesNoSession:   "replies_no_session",
	CtrRepliesQueueFull:   "replies_queue_full",
	CtrRepliesStale:       "replies_stale",
	CtrLateReplyRST:       "late_replies_reset",
	CtrShadowDupData:      "shadow_duplicate_data",
	CtrGreetingWaits:      "greeting_waits",
	CtrReconnects:         "shadow_reconnects",
	CtrPortReuseLagging:   "port_reuse_lagging",
	CtrOddPackets:         "odd_packets",
	CtrRequests:           "paced_requests",
	CtrDriftMicros:        "pacing_drift_microseconds",
	CtrFromProd:           "from_prod",
	CtrProdNoSession:      "prod_no_session",
	CtrNotAccepted:        "not_accepted",
	CtrNotAcceptedBytes:   "not_accepted_bytes",
	CtrPacingShort:        "pacing_short_answers",
	CtrPacingNoAnswer:     "pacing_no_answer",
	CtrShadowRejected:     "shadow_rejected",
	CtrReconnectsDeferred: "reconnects_deferred",
	CtrDrainCut:           "drain_cut",
	CtrIgnoredBigPacket:   "ignored_big_packet",
	CtrIgnoredMapped:      "ignored_v4_mapped",
	CtrIgnoredNotLocal:    "ignored_not_local",
	CtrFastOpenSYNs:       "client_fast_open_syns",
	CtrRSTsLimited:        "rsts_limited",
	CtrRepliesDeferred:    "replies_deferred",
	CtrComparePairs:       "compare_pairs",
	CtrCompareDropped:     "compare_dropped",
	CtrCompareOverflow:    "compare_overflow",
	CtrCompareSkipped:     "compare_skipped",
	CtrCompareResync:      "compare_resync",
	CtrCompareUnpaired:    "compare_unpaired",
	CtrCompareH2Lost:      "compare_h2_lost",
	CtrCompareH2Bad:       "compare_h2_bad",
	CtrSkippedSample:      "sessions_skipped_sample",
	CtrSkippedRate:        "sessions_skipped_max_new",
	CtrIgnoredSkipped:     "ignored_skipped",
}

func (c Counter) String() string { return counterNames[c] }

// EndReason says why a session ended; each has its own counter.
type EndReason uint8

const (
	EndClosed           EndReason = iota // FIN exchanged both ways
	EndClientReset                       // client RST (scenario 18)
	EndShadowReset                       // shadow RST
	EndShadowClosed                      // shadow FIN first while the client went on (scenario 19)
	EndHandshakeTimeout                  // no SYN-ACK in time (scenario 4)
	EndIdle                              // keep-alive idle (scenario 26)
	EndRetransmitLimit                   // shadow never acknowledged (scenario 13)
	EndBufferLimit                       // per-session buffer bound (scenario 27)
	EndCaptureGap                        // missing client data never came (scenario 11)
	EndPortReuse                         // new SYN with a new ISN (scenario 3)
	EndShutdown                          // daemon stopping
	EndProdReset                         // prod reset the client's connection (scenario 30)
	EndDrainTimeout                      // what prod accepted did not reach the shadow in time (30)
	numEndReasons
)

var endReasonNames = [numEndReasons]string{
	EndClosed:           "closed",
	EndClientReset:      "client_reset",
	EndShadowReset:      "shadow_reset",
	EndShadowClosed:     "shadow_closed",
	EndHandshakeTimeout: "handshake_timeout",
	EndIdle:             "idle",
	EndRetransmitLimit:  "retransmit_limit",
	EndBufferLimit:      "buffer_limit",
	EndCaptureGap:       "capture_gap",
	EndPortReuse:        "port_reuse",
	EndShutdown:         "shutdown",
	EndProdReset:        "prod_reset",
	EndDrainTimeout:     "drain_timeout",
}

func (r EndReason) String() string { return endReasonNames[r] }

// counters is one owner's set of counters. Only the owning goroutine
// writes; readers use atomic loads, so a snapshot never races.
type counters struct {
	c     [numCounters]atomic.Uint64
	ended [numEndReasons]atomic.Uint64
	// gauges
	active   atomic.Int64 // sessions in the table, lingering ones included
	buffered atomic.Int64 // bytes of client data held for the shadow
	states   [numStates]atomic.Int64
	_        [64]byte // keep workers' counters off each other's cache lines
}

func (c *counters) inc(k Counter)        { c.c[k].Add(1) }
func (c *counters) add(k Counter, n int) { c.c[k].Add(uint64(n)) }

// mapCounters are one worker's counters of one map, for the metrics that
// operators read per map.
type mapCounters struct {
	shadowRejected atomic.Uint64
}

// MapSnapshot is a map's counters, summed over the workers.
type MapSnapshot struct {
	Map            Map
	ShadowRejected uint64 // client flows given up: the shadow kept rejecting them (32)
}

// Snapshot is a point-in-time copy of the engine's counters.
type Snapshot struct {
	Counters [numCounters]uint64
	Ended    [numEndReasons]uint64
	States   [numStates]int64 // sessions held, by state
	Active   int64
	Buffered int64
	Maps     []MapSnapshot
}

func (s *Snapshot) addFrom(c *counters) {
	for i := range c.c {
		s.Counters[i] += c.c[i].Load()
	}
	for i := range c.ended {
		s.Ended[i] += c.ended[i].Load()
	}
	for i := range c.states {
		s.States[i] += c.states[i].Load()
	}
	s.Active += c.active.Load()
	s.Buffered += c.buffered.Load()
}

// Get returns one counter.
func (s *Snapshot) Get(k Counter) uint64 { return s.Counters[k] }

// EachCounter calls fn for every counter with its name.
func (s *Snapshot) EachCounter(fn func(name string, v uint64)) {
	for i, v := range s.Counters {
		fn(counterNames[i], v)
	}
}

// EachEnded calls fn for every end reason with its name.
func (s *Snapshot) EachEnded(fn func(reason string, v uint64)) {
	for i, v := range s.Ended {
		fn(endReasonNames[i], v)
	}
}

// EachState calls fn for every session state with the sessions in it.
func (s *Snapshot) EachState(fn func(state string, n int64)) {
	for st := stateProdOpening; st < numStates; st++ {
		fn(stateNames[st], s.States[st])
	}
}

// CounterNames lists every counter name, for exporters.
func CounterNames() []string { return counterNames[:] }

// StateNames lists every session state, for exporters.
func StateNames() []string { return stateNames[stateProdOpening:] }

// EndReasonNames lists every end reason, for exporters.
func EndReasonNames() []string { return endReasonNames[:] }
