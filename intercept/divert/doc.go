// Package divert takes the shadow host's own packets to the client pools
// away from the network and hands them to the intercept agent: the
// two-host deployment, where the agent runs on the shadow and no assist
// host or route to one exists.
//
// Rules installs, in a table of its own (inet tcpshadow_local), one base
// chain on the output hook at priority -310 (before conntrack at -200 and
// NAT at -100: a diverted packet never takes a conntrack entry, and its
// destination is still the pool address) holding, for each pool, a rule
// "ip[6] daddr POOL counter queue num N" (the
// x_tables NFQUEUE target through nftables' compat expression, since
// kernels without the native queue expression have it). Queue reads that queue through
// its own NFQUEUE netlink socket and returns each packet's first bytes as
// a capture.Source, so the agent's relay takes it exactly as it takes the
// assist host's pcap capture; every packet read gets a DROP verdict.
//
// Why NFQUEUE with a DROP verdict, and not NFLOG plus a drop rule: a
// queue with no listener drops (the rule carries no bypass flag), a full
// queue drops (the fail-open flag is never set) and a socket that cannot
// take a packet drops it, so nothing to a pool leaves the host whether the
// agent runs, lags or died (fail closed); and the kernel counts each of
// those drops per queue (/proc/net/netfilter/nfnetlink_queue), which
// doctor and the metrics read. NFLOG would drop just as surely, but its
// losses are not counted where doctor can see them, and its binding tells
// nothing of the rule. The reader is written here, on raw netlink, rather
// than with a netlink library: the per-packet path (one read, one verdict
// write) then allocates nothing.
//
// What it must not do:
//
//   - Let a packet to a pool leave the host: no bypass flag, no fail-open
//     flag, and a leftover table from a killed run is replaced in the same
//     netlink transaction that installs the new one, so there is no
//     moment between the two without the rules.
//   - Touch any table but its own: it adds and deletes only its table.
//   - Hold a packet: each one read gets its verdict before Read returns.
//   - Allocate, or log, per packet: drops and malformed messages are
//     counted (Stats), never logged.
//   - Interpret TCP: the agent's relay does.
package divert
