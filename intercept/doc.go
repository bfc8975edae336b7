// Package intercept carries the shadow's replies back to the copy daemon.
//
// The Agent runs on the assist host (or on the shadow itself): it captures
// the shadow's replies, which are routed there and die there, looks up the
// copy daemon that registered each flow, and relays the replies' IP and TCP
// headers to it in batches with a flush deadline. The Client runs inside
// the copy daemon: it registers and deregisters flows, reconnects by itself
// when the agent goes away, and hands relayed headers to a callback. Probe
// and ProbeConn are the copier's side for diagnostics (tcpshadow doctor).
//
// The byte format of the control channel is package wire's; this package
// owns the connections, the handshake (versioned hello, optional
// challenge-response authentication, TLS, allowlist), the flow table, the
// parking of replies that beat their registration, and the batching policy.
//
// What it must not do:
//
//   - Block the capture. A header the relay cannot take, or a batch a slow
//     daemon cannot take, is dropped and counted (DroppedQueue,
//     DroppedPeer); nothing the peers do makes the capture loop wait.
//   - Block the Client's callers: Register and Deregister only queue, and
//     what does not fit is counted (QueueFull).
//   - Interpret TCP beyond finding the flow key (and whether a reply is a
//     SYN or RST, which may be parked): sequence numbers, windows and
//     session state are tcpstate's.
//   - Retain a caller's buffer: a captured packet's headers are copied
//     before the next capture Read, a flow is taken by value, and the
//     header handed to the Client's callback is valid during the call only.
//   - Encode or parse frames itself: every byte on the wire goes through
//     package wire.
//   - Log per packet: packets are counted (AgentStats, ClientStats);
//     logs are for connections, and a refused peer is logged once.
//   - Give up: the Client redials with backoff for as long as it runs.
package intercept
