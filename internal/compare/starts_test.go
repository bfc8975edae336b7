package compare

import (
	"bytes"
	"encoding/binary"
	"slices"
	"testing"
)

// startsOf feeds stream to a fresh walker cut into packets of the given
// lengths, each kept up to prefix bytes, and returns the starts as stream
// offsets.
func startsOf(p Protocol, stream []byte, cuts []int, prefix int) (starts []int, lost uint32) {
	var t Starts
	var offs [MaxStarts]uint16
	at := 0
	for _, n := range cuts {
		pkt := stream[at : at+n]
		k := t.Packet(p, pkt[:min(len(pkt), prefix)], len(pkt), offs[:])
		for _, o := range offs[:k] {
			starts = append(starts, at+int(o))
		}
		at += n
	}
	return starts, t.Lost()
}

func pgMsg(typ byte, body string) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	return append(b, body...)
}

// TestStartsRecorded: response starts in recorded streams of Redis
// (redis-server 7's replies, one of them a renamed command's error, a
// long bulk string spanning packets, nested arrays, nulls), PostgreSQL
// (a startup answer, a query's rows, an ErrorResponse) and HTTP/1 and
// MySQL at packet starts, under several packetizations and prefixes:
// the same offsets whenever every boundary is in view.
func TestStartsRecorded(t *testing.T) {
	long := bytes.Repeat([]byte("v"), 3000)
	redis := [][]byte{
		[]byte(":1\r\n"),
		[]byte("-ERR unknown command 'SETNX', with args beginning with: 'k1' 'v' \r\n"),
		[]byte("+OK\r\n"),
		append(append([]byte("$3000\r\n"), long...), "\r\n"...),
		[]byte("$-1\r\n"),
		[]byte("*2\r\n*2\r\n$1\r\na\r\n:7\r\n$2\r\nbc\r\n"),
		[]byte("*-1\r\n"),
		[]byte("%1\r\n+k\r\n*0\r\n"),
		[]byte("$0\r\n\r\n"),
	}
	pg := [][]byte{
		slices.Concat(pgMsg('R', "\x00\x00\x00\x00"), pgMsg('S', "client_encoding\x00UTF8\x00"), pgMsg('K', "12345678"), pgMsg('Z', "I")),
		slices.Concat(pgMsg('T', "\x00\x01?column?\x00"+string(make([]byte, 18))), pgMsg('D', "\x00\x01\x00\x00\x00\x011"), pgMsg('C', "SELECT 1\x00"), pgMsg('Z', "I")),
		slices.Concat(pgMsg('E', "SERROR\x00C42P01\x00Mrelation \"only_on_prod\" does not exist\x00\x00"), pgMsg('Z', "I")),
		slices.Concat(pgMsg('T', "\x00\x01x\x00"+string(make([]byte, 18))), pgMsg('D', string(make([]byte, 2000))), pgMsg('C', "SELECT 1\x00"), pgMsg('Z', "I")),
	}
	for _, tc := range []struct {
		p      Protocol
		rsps   [][]byte
		lost64 uint32
	}{{Redis, redis, 1}, {Postgres, pg, 3}} {
		stream := slices.Concat(tc.rsps...)
		var want []int
		at := 0
		for _, r := range tc.rsps {
			want = append(want, at)
			at += len(r)
		}
		// One packet per response, kept whole: every start.
		var perRsp []int
		for _, r := range tc.rsps {
			perRsp = append(perRsp, len(r))
		}
		for _, c := range []struct {
			name   string
			cuts   []int
			prefix int
		}{
			{"one packet per response", perRsp, 1 << 16},
			{"all in one packet", []int{len(stream)}, 1 << 16},
			{"cut every 7 bytes", cutEvery(len(stream), 7), 1 << 16},
			{"cut every byte", cutEvery(len(stream), 1), 1},
		} {
			got, lost := startsOf(tc.p, stream, c.cuts, c.prefix)
			if !slices.Equal(got, want) || lost != 0 {
				t.Errorf("%s, %s: starts %v lost %d, want %v", tc.p, c.name, got, lost, want)
			}
		}
		// One packet per response, kept to 64 bytes: a long body is
		// skipped by its length; a response whose end is out of view
		// loses sync (Redis: the 67-byte error line; PostgreSQL: the
		// three longer than 64 bytes), found again at the next packet.
		if got, lost := startsOf(tc.p, stream, perRsp, 64); !slices.Equal(got, want) || lost != tc.lost64 {
			t.Errorf("%s, 64-byte prefixes: starts %v lost %d, want %v lost %d", tc.p, got, lost, want, tc.lost64)
		}
	}

	// Coalesced replies past the prefix: sync is lost, and found again at
	// the next packet that starts with a reply.
	stream := slices.Concat(redis[1], redis[0], redis[2], redis[0])
	cut := len(redis[1]) + len(redis[0])
	got, lost := startsOf(Redis, stream, []int{cut, len(stream) - cut}, 32)
	if !slices.Equal(got, []int{0, cut, cut + 5}) || lost != 1 {
		t.Errorf("coalesced past the prefix: starts %v lost %d, want [0 %d %d] lost 1", got, lost, cut, cut+5)
	}

	h1 := []byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
	if got, _ := startsOf(HTTP1, slices.Concat(h1, h1[:20], h1[20:]), []int{len(h1), 20, len(h1) - 20}, 64); !slices.Equal(got, []int{0, len(h1)}) {
		t.Errorf("HTTP/1: starts %v, want [0 %d]", got, len(h1))
	}
	greeting := []byte("\x05\x00\x00\x00\x0a8.0\x00")
	ok := []byte("\x07\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00")
	row := []byte("\x02\x00\x00\x05\x01a")
	if got, _ := startsOf(MySQL, slices.Concat(greeting, ok, row), []int{len(greeting), len(ok), len(row)}, 64); !slices.Equal(got, []int{0, len(greeting)}) {
		t.Errorf("MySQL: starts %v, want [0 %d]", got, len(greeting))
	}
	if Ordered(HTTP2) || Ordered(Auto) || !Ordered(Redis) {
		t.Error("Ordered: HTTP/2 and Auto are not, Redis is")
	}
}

func cutEvery(n, k int) []int {
	var cuts []int
	for n > 0 {
		c := min(k, n)
		cuts = append(cuts, c)
		n -= c
	}
	return cuts
}

// TestStartsNoAllocs: walking a packet allocates nothing.
func TestStartsNoAllocs(t *testing.T) {
	b := []byte(":1\r\n+OK\r\n$3\r\nabc\r\n")
	var s Starts
	var offs [MaxStarts]uint16
	if n := testing.AllocsPerRun(100, func() { s.Packet(Redis, b, len(b), offs[:]) }); n != 0 {
		t.Errorf("%v allocations per packet", n)
	}
}

// FuzzStarts walks any bytes cut anywhere under every protocol: never a
// panic, offsets inside the kept bytes and increasing, never more than
// offs holds.
func FuzzStarts(f *testing.F) {
	f.Add([]byte(":1\r\n+OK\r\n$3\r\nabc\r\n*2\r\n$1\r\na\r\n:1\r\n"), uint8(5), uint8(64))
	f.Add(pgMsg('Z', "I"), uint8(2), uint8(3))
	f.Fuzz(func(t *testing.T, stream []byte, cut, prefix uint8) {
		for p := Auto; p < numProtocols; p++ {
			var s Starts
			var offs [4]uint16
			for rest := stream; len(rest) > 0; {
				n := min(len(rest), int(cut)+1)
				kept := rest[:min(n, int(prefix))]
				k := s.Packet(p, kept, n, offs[:])
				if k > len(offs) {
					t.Fatalf("%s: %d starts", p, k)
				}
				for i, o := range offs[:k] {
					if int(o) >= len(kept) || i > 0 && o <= offs[i-1] {
						t.Fatalf("%s: offsets %v in %d kept bytes", p, offs[:k], len(kept))
					}
				}
				rest = rest[n:]
			}
		}
	})
}
