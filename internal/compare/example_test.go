package compare_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"

	"github.com/tcpshadow/tcpshadow/internal/compare"
)

// Example shows the datapath's side: one Recorder per worker, a Pair
// filled from copies of the bytes and the timestamps it saw, handed over
// with Put (which never blocks); the Comparer's goroutine does the rest.
func Example() {
	c, err := compare.New(compare.Config{
		Maps:    []compare.MapConfig{{Name: "80-198.18.1.2:80", Protocol: compare.Auto}},
		Workers: 2,
	})
	if err != nil {
		panic(err)
	}
	// In a worker, when both sides have answered (or timed out):
	rec := c.Recorder(1)
	var p compare.Pair
	p.Map = 0
	p.Client = netip.MustParseAddrPort("198.51.100.7:50123")
	p.SetRequest([]byte("GET /checkout HTTP/1.1\r\nHost: shop\r\n\r\n"))
	p.Prod.SetHead([]byte("HTTP/1.1 200 OK\r\n"))
	p.Prod.Sent, p.Prod.FirstByte = 1_000_000, 3_000_000 // ns: 2ms
	p.Shadow.SetHead([]byte("HTTP/1.1 500 Internal Server Error\r\n"))
	p.Shadow.Sent, p.Shadow.FirstByte = 1_500_000, 9_500_000 // 8ms
	// false when the ring is full: counted as dropped, nothing else to do
	rec.Put(&p)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c.Run(ctx) // normally on its own goroutine until shutdown
	compare.WriteText(os.Stdout, c.Snapshot())
	fmt.Println(c.Dropped())
	// Output:
	// map 80-198.18.1.2:80 (http): 1 requests
	//   class           prod   share    shadow   share
	//   200                1  100.0%         0    0.0%
	//   500                0    0.0%         1  100.0%
	//   latency ms      prod            shadow
	//   p50            2.000             8.000
	//   p90            2.000             8.000
	//   p99            2.000             8.000
	//   mismatches (prod → shadow):
	//     200 → 500: 1 (100.0%)
	//   top divergent requests:
	//     count  prod → shadow  prod ms  shadow ms  request
	//     1      200 → 500      2.000    8.000      GET /checkout HTTP/1.1
	// 0
}
