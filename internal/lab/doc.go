// Package lab builds the sealed four-host network (or, with
// Config.TwoHosts, three hosts and no assist: twohost.go) used by tcpshadow's
// end-to-end tests, the demo and the benchmarks.
//
// A Lab is five named network namespaces joined only to each other by veth
// pairs and one bridge:
//
//	client ns (eth0 198.18.0.2/24, 2001:2::2/64)
//	  └─veth─ prod ns (eth0 198.18.0.1/24, 2001:2::1/64 ; eth1 198.18.1.1/24, 2001:2:0:1::1/64)
//	                 └─veth─┐
//	switch ns: bridge br0 ──┼─veth─ shadow ns (eth0 198.18.1.2/24, 2001:2:0:1::2/64)
//	                        └─veth─ assist ns (eth0 198.18.1.3/24, 2001:2:0:1::3/64)
//
// The shadow routes the client net and the client pool via the assist, whose
// forwarding is off and which blackholes both, so the shadow's replies to
// mirrored connections die at the assist without an answer (no RST, no
// ICMP). No namespace has a default route and no interface reaches the
// root namespace. Every address lies in 198.18.0.0/15 or 2001:2::/48
// (RFC 2544 / RFC 5180 benchmarking space).
//
// What the package owns: creating and deleting the namespaces, their links,
// addresses, routes and sysctls; running processes and sockets inside them;
// stopping every process it started. What it must not do: touch the root
// namespace's links, routes or sysctls; send traffic to any address outside
// the lab ranges; signal any process it did not start.
//
// The package needs root and Linux; NewT skips a test otherwise.
package lab
