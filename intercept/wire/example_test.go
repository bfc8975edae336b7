package wire_test

import (
	"bytes"
	"fmt"
	"net/netip"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// The copier registers a flow, the agent answers with a batch of reply
// headers, and the copier walks them.
func Example() {
	var conn bytes.Buffer // stands in for the TCP connection

	flow := rewrite.TupleOf(netip.MustParseAddrPort("10.9.0.5:40000"), netip.MustParseAddrPort("192.0.2.7:80"))
	conn.Write(wire.AppendFlows(nil, wire.TypeRegister, []rewrite.Tuple{flow}))

	var batch wire.ReplyBatch
	hdr := make([]byte, 52) // IPv4 + TCP with timestamps, as captured
	for ts := int64(1); ts <= 3; ts++ {
		if batch.Add(ts, hdr) {
			continue
		}
		if !batch.Full() {
			continue // header length out of range: drop and count it
		}
		conn.Write(batch.Frame())
		batch.Reset()
		batch.Add(ts, hdr)
	}
	conn.Write(batch.Frame())

	r := wire.NewReader(&conn)
	for {
		typ, p, err := r.Next()
		if err != nil {
			fmt.Println(err)
			return
		}
		switch typ {
		case wire.TypeRegister:
			wire.ForEachFlow(p, func(t rewrite.Tuple) { fmt.Println("register", t) })
		case wire.TypeReplies:
			n, _ := wire.ForEachReply(p, func(ts int64, hdr []byte) {})
			fmt.Println(n, "replies")
		}
	}
	// Output:
	// register 10.9.0.5:40000->192.0.2.7:80
	// 3 replies
	// EOF
}
