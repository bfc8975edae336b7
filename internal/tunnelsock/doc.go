// Package tunnelsock owns the UDP sockets of the tunnel transport (copy
// --transport udp): on prod, a Sender per worker seals each packet for
// the shadow into a datagram (package tunnel) and sends a worker's batch
// with one sendmmsg to the agent's tunnel port; on the shadow host, the
// Receiver reads batches of datagrams with recvmmsg, opens them with the
// keys of the copy daemon's control-channel connection, and injects each
// inner packet into this host's own stack.
//
// Injection is a raw IP socket (package rawsock) sending the inner packet
// to its destination, an address of this host: the kernel loops it back
// through its input path to the shadow's listening socket, as if it had
// arrived from the client. A TUN device would need the pool routed to it,
// and then the shadow's replies to the pool would arrive at the TUN too,
// beside the two-host mode's nftables rules that already take them: two
// owners of one route, and a device to create and tear down. The raw
// socket needs nothing configured and is gone with the process.
//
// What it must not do: inject a packet that is not from the copy
// daemon's announced pools or not to an address of this host (else an
// authenticated peer could make the agent's host forge packets onto the
// network); inject anything whose datagram failed its tag, replayed a
// counter or was cut; block a copy daemon's worker (sends are
// MSG_DONTWAIT; a datagram without a session is dropped, counted);
// allocate per datagram; log per datagram (every refusal has a counter).
package tunnelsock
