// Package tcpstate plays the client's side of TCP toward the shadow.
//
// For every captured client flow it keeps a session: it registers the
// forged flow with the intercept agent, opens the connection on the
// shadow, queues the client's data and sends it with the ACK field
// translated into the shadow's sequence space, paces requests so the
// shadow answers each before the next (keeping prod's think time),
// acknowledges the shadow's data, retransmits what the shadow lost, and
// ends on FIN, RST or a timeout, counting why.
//
// A packet's path, in the order of the files and of the functions in them:
//
//  1. engine.go: the capture goroutine hands a packet to Engine.HandleCaptured,
//     which decodes it once, matches it to a map and copies it, with its
//     Layout, to the worker owning its flow; the control channel hands
//     reply headers to Engine.HandleReply the same way. Queues never block
//     the caller for long (a full one is waited on for at most 25 ms, while
//     the kernel's ring buffers): what does not fit is shed and counted.
//  2. client.go: the worker finds the packet's session (admit.go starts one
//     on a SYN, on data of an unknown flow, or reconnects after the shadow
//     closed) and queues its data in sequence order.
//  3. shadow.go: reply headers complete the handshake, acknowledge queued
//     data, move the window and carry the shadow's data and FIN.
//  4. send.go: at the end of each batch of events, Flush sends what the
//     changes made possible: queued data as pacing and the window allow,
//     ACKs, FINs.
//  5. close.go: sessions end for one counted reason and linger; timers.go
//     runs the deadlines (retransmission, pacing, delayed ACK, timeouts).
//
// Sessions are sharded over workers by a seeded hash of the forged client
// endpoint, which both captured packets and relayed replies carry, so each
// session is owned by one goroutine and the per-packet path takes no lock
// and allocates nothing.
//
// What the package must not do: any I/O of its own (it writes through a
// Sender and registers through a Registrar, so tests drive it with fakes
// and a fake clock); block its callers; log per packet (it counts); hold
// more than its budgets; exit or panic on any input.
//
// Scenario numbers in comments and test names refer to the catalogue in
// SCENARIOS.md, next to this file.
package tcpstate
