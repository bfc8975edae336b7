// Package compare tells whether the shadow answers like prod: it takes one
// Pair per request (the request's first bytes, the first bytes of prod's
// and of the shadow's response, their outcomes and timestamps), classifies
// both responses per protocol (HTTP/1.x status, HTTP/2 :status, Redis
// reply type, PostgreSQL SQLSTATE, MySQL error code, or answered / reset /
// closed / no answer), and aggregates: responses by map, side and class,
// mismatches by (prod class, shadow class), latency histograms per side,
// the most divergent requests, and a size-bounded divergence log. It
// serves all of it as Prometheus samples, a JSON snapshot (/report.json)
// and an HTML page (/report).
//
// The datapath hands pairs over through a Recorder, one per worker: Put
// copies a fixed-size value into a bounded single-producer ring, never
// allocates, never blocks, and counts a drop when the ring is full. One
// consumer goroutine (Comparer.Run) drains the rings.
//
// What the datapath does (the integration):
//
//	c, err := compare.New(compare.Config{Maps: …, Workers: engine workers, Divergence: …})
//	go c.Run(ctx)                         // until shutdown; closes the log
//	metrics.ServeWith(ctx, addr, append-c.Samples-to-the-source, pprof, c.Handlers(), log)
//	rec := c.Recorder(w)                  // worker w's; nil when comparison is off
//	// per request, in the worker: a Pair (or the fields it needs) kept
//	// with the session while it is pending:
//	p.Map, p.Client = mapIndex, client
//	p.AppendRequest(payload)              // the request's packets
//	p.Prod.Sent = requestLastByteSeen     // ns, one monotonic clock
//	p.Prod.Append(prodPayload, prefix, now)
//	p.Shadow.Sent = requestLastByteSent
//	p.Shadow.Append(relayedPrefix, prefix, now)
//	p.Shadow.Outcome = compare.Reset      // or Closed; NoAnswer is the zero value
//	rec.Put(&p)                           // when both sides are settled; never blocks
//
// It must not touch the datapath: it pairs nothing, reads no packets and
// holds no packet buffer; a Pair carries copies. Its memory is bounded:
// classes per map and side (MaxClasses, the rest "other"), divergent
// request summaries (MaxTopDivergent), histograms of fixed buckets, and a
// log rotated at a size with a bounded number of old files.
package compare
