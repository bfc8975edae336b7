// Package rewrite owns the bytes of TCP/IP packets: header views for IPv4,
// IPv6 and TCP, decoding without allocation, in-place rewriting of
// addresses, ports, sequence space fields and options with incremental
// checksum updates (RFC 1624), construction of the copier's own segments,
// and the mapping of client addresses into a forged-address pool.
//
// It keeps no state between packets and never does I/O: callers own every
// buffer they pass in, and nothing here retains one after returning.
package rewrite
