// Package tunnel is the datagram format of the UDP transport (copy
// --transport udp): the copy daemon sends each packet meant for the
// shadow sealed in one UDP datagram to the agent on the shadow host
// (intercept --local), which opens it and hands the inner IP packet to
// its own stack. No forged packet crosses the network: on the wire there
// is only UDP from prod's own address to the shadow's, which anti-spoofing
// (cloud source/destination checks, CNIs, rp_filter) lets through.
//
// A datagram is
//
//	0      version (1)
//	1      type: packet, probe, probe ack
//	2..4   zero
//	4..12  session: the control-channel connection whose keys seal it
//	12..20 counter: this datagram's index under the session's key
//	20..   the inner bytes, AES-256-GCM sealed, header as additional data
//	       (TagLen bytes of tag at the end)
//
// Keys come from the control channel's handshake: the same secret and
// transcript as its session keys (wire.SessionKeys), with labels of their
// own, one key per direction; the nonce is the session's last four bytes
// and the counter, so it never repeats under a key and the control
// channel's nonces are never reused. The session is the transcript's
// first eight bytes: fresh for every connection, and public. The receiver
// keeps a sliding window of the counters it accepted (Window): a replayed
// or too old datagram is refused before it is opened, and a datagram
// counts in the window only once its tag verified, so forged datagrams
// cannot move it.
//
// What it must not do: allocate per datagram (sealing and opening work
// in the caller's buffers); accept a datagram whose tag fails, whose
// counter it already saw or that is larger than MaxDatagram; own
// sockets or decide what an inner packet may be (package tunnelsock
// and the agent do).
package tunnel
