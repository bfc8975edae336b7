// Package tcpstate plays the client's side of TCP toward the shadow.
//
// For every captured client flow it keeps a session: it registers the
// forged flow with the intercept agent, forwards the SYN, learns the
// shadow's ISN, window and options from the relayed SYN-ACK, completes the
// handshake, queues the client's data and sends it with the ACK field
// translated into the shadow's sequence space, paces requests so the
// shadow answers each before the next (keeping prod's think time),
// acknowledges the shadow's data, retransmits what the shadow lost, and
// ends on FIN, RST or a timeout, counting why.
//
// Sessions are sharded over workers by a seeded hash of the forged client
// endpoint, which both captured packets and relayed replies carry, so each
// session is owned by one goroutine and the per-packet path takes no lock.
// The package does no I/O of its own: it writes through a Sender and
// registers through a Registrar, so tests drive it with fakes and a fake
// clock. Scenario numbers in comments refer to §3 of the copier-behaviour
// reference.
package tcpstate
