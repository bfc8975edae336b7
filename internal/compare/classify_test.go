package compare

import (
	"bufio"
	"bytes"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// recorded is one line of testdata/responses.txt.
type recorded struct {
	proto     Protocol
	class     string
	req, resp []byte
	line      int
}

func loadRecorded(t testing.TB) []recorded {
	t.Helper()
	f, err := os.Open("testdata/responses.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []recorded
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		fs := strings.Split(line, "\t")
		if len(fs) != 4 {
			t.Fatalf("responses.txt:%d: %d fields", n, len(fs))
		}
		p, err := ParseProtocol(fs[0])
		if err != nil {
			t.Fatalf("responses.txt:%d: %v", n, err)
		}
		req, err1 := strconv.Unquote(fs[2])
		resp, err2 := strconv.Unquote(fs[3])
		if err1 != nil || err2 != nil {
			t.Fatalf("responses.txt:%d: unquote: %v %v", n, err1, err2)
		}
		out = append(out, recorded{p, fs[1], []byte(req), []byte(resp), n})
	}
	if len(out) < 40 {
		t.Fatalf("only %d recorded responses", len(out))
	}
	return out
}

// classPatterns is each protocol's whole class vocabulary: what keeps
// label cardinality bounded whatever the bytes.
var classPatterns = map[Protocol]*regexp.Regexp{
	HTTP1:    regexp.MustCompile(`^([1-5][0-9][0-9]|[1-5]xx|short|garbage)$`),
	HTTP2:    regexp.MustCompile(`^([1-5][0-9][0-9]|[1-5]xx|short|garbage|answered|rst_stream|goaway)$`),
	Redis:    regexp.MustCompile(`^(ok|value|nil|-[A-Z]{2,12}|-other|short|garbage)$`),
	Postgres: regexp.MustCompile(`^([0-9A-Z]{5}|ok|error|auth|ssl|nossl|short|garbage)$`),
	MySQL:    regexp.MustCompile(`^([1-9][0-9]{3}|ok|rows|eof|greeting|infile|error|short|garbage)$`),
	Unknown:  regexp.MustCompile(`^(answered|short)$`),
}

// TestClassifyRecorded classifies real servers' responses: whole, cut at
// the default prefix, and cut at every length, where a cut response is
// either classified as the whole one is or "short", never something else.
func TestClassifyRecorded(t *testing.T) {
	for _, r := range loadRecorded(t) {
		if got := ClassifyHead(r.proto, r.resp); got != r.class {
			t.Errorf("line %d %s: class %q, want %q", r.line, r.proto, got, r.class)
		}
		if got := ClassifyHead(r.proto, r.resp[:min(len(r.resp), DefaultPrefix)]); got != r.class {
			t.Errorf("line %d %s: class at the %d-byte prefix %q, want %q", r.line, r.proto, DefaultPrefix, got, r.class)
		}
		for n := range len(r.resp) {
			got := ClassifyHead(r.proto, r.resp[:n])
			if got != r.class && got != ClassShort {
				t.Errorf("line %d %s: cut at %d: class %q, want %q or short", r.line, r.proto, n, got, r.class)
			}
		}
	}
}

// TestDetectRecorded detects each recorded request's protocol from its
// first bytes, or for MySQL from the server's greeting; requests that
// cannot tell (later PostgreSQL messages, inline Redis) say Unknown.
func TestDetectRecorded(t *testing.T) {
	saw := map[Protocol]int{}
	for _, r := range loadRecorded(t) {
		d := Detect(r.req)
		if d == Unknown && len(r.req) == 0 {
			d = DetectResponse(r.resp)
		}
		if d != Unknown && d != r.proto {
			t.Errorf("line %d: detected %s, want %s", r.line, d, r.proto)
		}
		if d == r.proto {
			saw[d]++
		}
	}
	for _, p := range []Protocol{HTTP1, HTTP2, Redis, Postgres, MySQL} {
		if saw[p] == 0 {
			t.Errorf("no recorded %s request detected as %s", p, p)
		}
	}
	for _, tc := range []struct {
		b    []byte
		want Protocol
	}{
		{[]byte("POST /cart HTTP/1.1\r\n"), HTTP1},
		{[]byte("GETX / HTTP/1.1"), Unknown},
		{[]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), HTTP2},
		{[]byte("*1\r\n$4\r\nPING\r\n"), Redis},
		{[]byte("*"), Unknown},
		{[]byte("\x00\x00\x00\x08\x04\xd2\x16\x2f"), Postgres},
		{[]byte("\x00\x00\x00\x09\x04\xd2\x16\x2f"), Unknown}, // an SSLRequest is exactly 8 bytes
		{[]byte("\x00\x01\x00\x00\x00\x03\x00\x00"), Unknown}, // a startup longer than the server takes
		{nil, Unknown},
	} {
		if got := Detect(tc.b); got != tc.want {
			t.Errorf("Detect(%q) = %s, want %s", tc.b, got, tc.want)
		}
	}
	if got := DetectResponse([]byte("HTTP/1.1 200 OK\r\n")); got != Unknown {
		t.Errorf("DetectResponse(HTTP) = %s, want unknown", got)
	}
}

// TestSummarizeRecorded names each recorded request briefly.
func TestSummarizeRecorded(t *testing.T) {
	want := map[int]string{}
	rs := loadRecorded(t)
	for _, r := range rs {
		s := Summarize(r.proto, r.req)
		if len(s) > maxSummary || !printable(s) {
			t.Errorf("line %d: summary %q: not short and printable", r.line, s)
		}
		want[r.line] = s
	}
	has := func(s string) {
		t.Helper()
		for _, v := range want {
			if v == s {
				return
			}
		}
		t.Errorf("no summary %q among %v", s, want)
	}
	has("GET /fail HTTP/1.1")
	has("GET /teapot") // HTTP/2: the path is Huffman-coded in curl's HEADERS
	has("GET /")
	has("LPUSH")
	has("FLUSHALL")
	has("SELECT")
	has("INSERT")
	has("SSLRequest")
	has("StartupMessage")
	has("UPDATE")
	if got := Summarize(Unknown, []byte{0xde, 0xad, 0xbe, 0xef}); got != "hex:deadbeef" {
		t.Errorf("summary of unknown bytes %q", got)
	}
	if got := Summarize(HTTP1, bytes.Repeat([]byte("GET /"), 100)); len(got) > maxSummary {
		t.Errorf("summary of %d bytes", len(got))
	}
}

// TestClassifyHTTP1 covers what the recording does not: odd codes go to
// their bucket, interim responses give way to the final one, garbage is
// garbage.
func TestClassifyHTTP1(t *testing.T) {
	for in, want := range map[string]string{
		"HTTP/1.1 200 OK\r\n":                                     "200",
		"HTTP/1.0 404 Not Found\r\n":                              "404",
		"HTTP/1.1 299 Odd\r\n":                                    "2xx",
		"HTTP/1.1 599\r\n":                                        "5xx",
		"HTTP/1.1 600 Beyond\r\n":                                 "garbage",
		"HTTP/1.1 099 Before\r\n":                                 "garbage",
		"HTTP/1.1 2000 Long\r\n":                                  "garbage",
		"HTTP/1.1 20x OK\r\n":                                     "garbage",
		"HTTP/2 200\r\n":                                          "garbage",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 ":              "201",
		"HTTP/1.1 100 Continue\r\n\r\n":                           "100",
		"HTTP/1.1 103 Early\r\nLink: x\r\n\r\nHTTP/1.1 500 E\r\n": "500",
		"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81":            "101",
		"HTTP/1.1 100 Continue\r\n\r\nSSH-2.0":                    "garbage",
		"<html>":                                                  "garbage",
		"HTTP/1.1 2":                                              "short",
		"HTTP/":                                                   "short",
	} {
		if got := ClassifyHead(HTTP1, []byte(in)); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

// TestClassifyRedis covers RESP3 and error codes beyond the recording.
func TestClassifyRedis(t *testing.T) {
	for in, want := range map[string]string{
		"+OK\r\n": "ok", "+O": "short", "+QUEUED\r\n": "value", "-NOSCRIPT No matching\r\n": "-NOSCRIPT",
		"-MOVED 3999 127.0.0.1:6381\r\n": "-MOVED", "-CUSTOMTHING x\r\n": "-other", "-ER": "short",
		"-ERR": "short", "-VERYLONGERRORCODEWORD": "-other", "!21\r\nSYNTAX invalid syntax\r\n": "-other",
		"!9\r\nERR wrong\r\n": "-ERR", "_\r\n": "nil", "*-1\r\n": "nil", "$-": "short", "$x\r\n": "garbage",
		"%2\r\n": "value", "#t\r\n": "value", ",1.5\r\n": "value", ">3\r\n": "value", "~1\r\n": "value",
		"HTTP/1.1 200": "garbage",
	} {
		if got := ClassifyHead(Redis, []byte(in)); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

// TestClassifyPostgres covers a SQLSTATE that is not one, an error
// without a code, an authentication request, and messages that are not
// the protocol's.
func TestClassifyPostgres(t *testing.T) {
	msg := func(typ byte, body string) string {
		n := len(body) + 4
		return string([]byte{typ, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}) + body
	}
	for in, want := range map[string]string{
		msg('E', "SERROR\x00C42p01\x00Mx\x00\x00"):             "error", // lower case: not a SQLSTATE
		msg('E', "SERROR\x00C4201\x00\x00"):                    "error",
		msg('E', "SERROR\x00Mno code\x00\x00"):                 "error",
		msg('E', "SFATAL\x00C28P01\x00\x00"):                   "28P01",
		msg('R', "\x00\x00\x00\x0a"):                           "auth",
		msg('S', "a\x00b\x00") + msg('E', "C57P01\x00\x00"):    "57P01",
		msg('N', "SNOTICE\x00\x00") + msg('C', "SELECT 1\x00"): "ok",
		"E\x00\x00\x00\x02xx":                                  "garbage", // a length below its own four bytes
		"Q\x00\x00\x00\x05x":                                   "garbage", // a client message type
		"HTTP/1.1 200 OK":                                      "garbage",
		"E\x00\x00":                                            "short",
		"S":                                                    "ssl",
	} {
		if got := ClassifyHead(Postgres, []byte(in)); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

// TestClassifyMySQL covers codes outside the server's range and a
// zero-length packet.
func TestClassifyMySQL(t *testing.T) {
	for in, want := range map[string]string{
		"\x09\x00\x00\x01\xff\x10\x00#HY000": "error", // code 16
		"\x03\x00\x00\x01\xff\x7a\x04":       "1146",
		"\x03\x00\x00\x01\xff\x7a":           "short",
		"\x00\x00\x00\x01\x00":               "garbage",
		"\x01\x00\x00\x01\xfb":               "infile",
		"\x01\x00\x00":                       "short",
	} {
		if got := ClassifyHead(MySQL, []byte(in)); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

// TestClassifyOutcomes: a side that did not answer is its outcome,
// whatever its head holds, for every protocol; an unknown protocol's
// answer is "answered".
func TestClassifyOutcomes(t *testing.T) {
	for p := Auto; p < numProtocols; p++ {
		for o, want := range map[Outcome]string{NoAnswer: "timeout", Reset: "reset", Closed: "closed", Outcome(9): "garbage"} {
			r := Response{Outcome: o}
			r.HeadLen = uint16(copy(r.Head[:], "HTTP/1.1 200 OK\r\n"))
			if got := Classify(p, &r); got != want {
				t.Errorf("%s %d: %q, want %q", p, o, got, want)
			}
		}
		var r Response
		r.SetHead(nil)
		if got := Classify(p, &r); got != ClassShort {
			t.Errorf("%s: an empty answer is %q, want short", p, got)
		}
	}
	var r Response
	r.SetHead([]byte("SSH-2.0-OpenSSH"))
	if got := Classify(Unknown, &r); got != ClassAnswered {
		t.Errorf("unknown protocol: %q", got)
	}
	r.HeadLen = 60000 // more than the array: clamped, not a panic
	if got := Classify(HTTP1, &r); got != ClassGarbage {
		t.Errorf("overlong HeadLen: %q", got)
	}
}

func TestParseProtocol(t *testing.T) {
	for in, want := range map[string]Protocol{"": Auto, "auto": Auto, "HTTP": HTTP1, "h2c": HTTP2, "http2": HTTP2,
		"redis": Redis, "PostgreSQL": Postgres, "pg": Postgres, "mariadb": MySQL, "mysql": MySQL} {
		got, err := ParseProtocol(in)
		if err != nil || got != want {
			t.Errorf("ParseProtocol(%q) = %s, %v; want %s", in, got, err, want)
		}
		if want != Auto {
			if back, err := ParseProtocol(got.String()); err != nil || back != want {
				t.Errorf("%s does not parse back: %s, %v", got, back, err)
			}
		}
	}
	if _, err := ParseProtocol("smtp"); err == nil || !strings.Contains(err.Error(), "smtp") {
		t.Errorf("smtp: %v", err)
	}
}

// TestClassifySplit feeds each recorded response in pieces of every size
// from 1 byte, as packets would bring it, through Response.Append at the
// default prefix: the class is the one of the prefix in one piece.
func TestClassifySplit(t *testing.T) {
	for _, rec := range loadRecorded(t) {
		want := ClassifyHead(rec.proto, rec.resp[:min(len(rec.resp), DefaultPrefix)])
		for size := 1; size <= len(rec.resp); size++ {
			var p Pair
			for i := 0; i < len(rec.req); i += size {
				p.AppendRequest(rec.req[i:min(i+size, len(rec.req))])
			}
			for i := 0; i < len(rec.resp); i += size {
				p.Shadow.Append(rec.resp[i:min(i+size, len(rec.resp))], DefaultPrefix, int64(100+i))
			}
			if got := ClassifyPair(rec.proto, p.request(), &p.Shadow); got != want {
				t.Fatalf("line %d in %d-byte pieces: %q, want %q", rec.line, size, got, want)
			}
			if p.Shadow.FirstByte != 100 || int(p.Shadow.HeadLen) != min(len(rec.resp), DefaultPrefix) ||
				!bytes.Equal(p.request(), rec.req[:min(len(rec.req), RequestHeadLen)]) {
				t.Fatalf("line %d in %d-byte pieces: first byte at %d, head %d bytes, request %q",
					rec.line, size, p.Shadow.FirstByte, p.Shadow.HeadLen, p.request())
			}
		}
	}
}
