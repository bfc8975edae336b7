// Package intercept carries the shadow's replies back to the copy daemon.
//
// The Agent runs on the assist host (or on the shadow itself, where package
// divert takes the replies from the host's output path and hands them to it
// as a capture.Source): it captures the shadow's replies, which are routed
// there and die there, looks up the
// copy daemon that registered each flow, and relays the replies' IP and TCP
// headers to it, each followed by the first bytes of its payload when that
// daemon asked for them in its hello (its reply prefix, at most
// wire.MaxReplyPrefix), in batches with a flush deadline. The Client runs
// inside the copy daemon: it keeps the set of flows it wants registered,
// sends what changes in it, reconnects by itself when the agent goes away
// (with a jittered backoff that only a connection that lived resets), and
// hands relayed replies to a callback. Probe and ProbeConn are the copier's side
// for diagnostics (tcpshadow doctor).
//
// The byte format of the control channel is package wire's; this package
// owns the connections, their admission (allowlist, limits on handshakes
// in flight, per address and on daemons, one deadline for TLS and the
// handshake, a small read buffer until authenticated), the handshake
// (versioned hello announcing the copier's pools, challenge-response
// authentication with a shared or per-daemon secret, TLS channel binding),
// sealing every later frame on plain TCP, the flow table and who owns each
// flow (pools, quotas, op rates, expiry of idle flows), the parking of
// replies that beat their registration, and the batching policy.
//
// What it must not do:
//
//   - Block the capture. A header the relay cannot take, or a batch a slow
//     daemon cannot take, is dropped and counted (DroppedQueue,
//     DroppedPeer); nothing the peers do makes the capture loop wait.
//   - Block the Client's callers on the connection: Register and
//     Deregister update the wanted set under a lock held for a map update;
//     nothing they ask is dropped.
//   - Serve a copy daemon that proved nothing: without a secret the agent
//     does not run unless told it is insecure on purpose; before a peer is
//     authenticated it holds a few KiB for it and tells it nothing (not
//     even its name); after, a frame that fails to open is skipped.
//   - Let one copy daemon take what another registered, register outside
//     the pools it announced, or hold more than its quota; nor stop
//     serving on a failed accept (EMFILE): it pauses and goes on.
//   - Interpret TCP beyond finding the flow key (and whether a reply is a
//     SYN-ACK or RST, which may be parked): sequence numbers, windows and
//     session state are tcpstate's; what the payload prefix says is the
//     comparison's. The agent only cuts it at the length asked for, or,
//     for the HTTP/2 ports a daemon names, walks the frames of its flows
//     with compare's walker to relay one record per HEADERS or RST_STREAM
//     (h2relay.go): a few bytes of state per flow, nothing of the payload.
//   - Hold memory that grows with the prefix asked for: captured replies
//     are fixed-size records, and a daemon's batches are sent once they
//     reach 128 KiB, so its write queue is bounded in bytes.
//   - Retain a caller's buffer: a captured packet's headers are copied
//     before the next capture Read, a flow is taken by value, and the
//     header handed to the Client's callback is valid during the call only.
//   - Encode or parse frames itself: every byte on the wire goes through
//     package wire.
//   - Log per packet: packets are counted (AgentStats, ClientStats);
//     logs are for connections, a refused address is logged once an hour
//     at most, and the lines a flood or a flapping link would repeat are
//     rate-limited.
//   - Give up: the Client redials with backoff for as long as it runs.
package intercept
