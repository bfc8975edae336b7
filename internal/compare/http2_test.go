package compare

import (
	"bytes"
	"encoding/binary"
	"strconv"
	"testing"

	"golang.org/x/net/http2/hpack"
)

func h2frame(typ, flags byte, stream uint32, payload []byte) []byte {
	b := []byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), typ, flags, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[5:], stream)
	return append(b, payload...)
}

// serverSettings is what a server sends first: SETTINGS, WINDOW_UPDATE,
// a PING and an ACK of the client's SETTINGS.
func serverSettings() []byte {
	var b []byte
	b = append(b, h2frame(0x4, 0, 0, []byte{0, 3, 0, 0, 0, 100, 0, 4, 0, 1, 0, 0})...)
	b = append(b, h2frame(0x8, 0, 0, []byte{0, 0x0f, 0, 1})...)
	b = append(b, h2frame(0x6, 0, 0, make([]byte, 8))...)
	return append(b, h2frame(0x4, 1, 0, nil)...)
}

func encodeHeaders(t *testing.T, enc *hpack.Encoder, buf *bytes.Buffer, fields ...string) []byte {
	t.Helper()
	buf.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		if err := enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]}); err != nil {
			t.Fatal(err)
		}
	}
	return bytes.Clone(buf.Bytes())
}

// TestClassifyHTTP2Statuses encodes every status code with Go's HPACK
// encoder (static-table index for the seven, a Huffman-coded literal with
// an indexed name for the rest) behind a server's opening frames, and
// reads it back as its class.
func TestClassifyHTTP2Statuses(t *testing.T) {
	for code := 100; code <= 599; code++ {
		var buf bytes.Buffer
		enc := hpack.NewEncoder(&buf)
		block := encodeHeaders(t, enc, &buf, ":status", strconv.Itoa(code), "server", "nginx")
		resp := append(serverSettings(), h2frame(h2Headers, 0x4, 1, block)...)
		if got, want := ClassifyHead(HTTP2, resp), statusClass(code); got != want {
			t.Fatalf("status %d (block %x): %q, want %q", code, block, got, want)
		}
		// The same status again on the connection is a dynamic-table
		// reference for the codes the static table lacks: no head
		// alone resolves it.
		block = encodeHeaders(t, enc, &buf, ":status", strconv.Itoa(code))
		want := statusClass(code)
		if block[0]&0x80 != 0 && block[0]&0x7f > hpackStaticLen {
			want = ClassAnswered
		}
		if got := ClassifyHead(HTTP2, h2frame(h2Headers, 0x4, 3, block)); got != want {
			t.Fatalf("status %d again (block %x): %q, want %q", code, block, got, want)
		}
	}
}

// TestClassifyHTTP2Frames covers padding, priority, a table size update
// first, a literal name, and frames that decide without a status.
func TestClassifyHTTP2Frames(t *testing.T) {
	status418 := []byte{0x08, 0x03, '4', '1', '8'} // literal without indexing, name index 8
	padded := append(append([]byte{3}, 0x8d), 0, 0, 0)
	prio := append([]byte{0, 0, 0, 0, 16}, 0x8c)
	for name, tc := range map[string]struct {
		b    []byte
		want string
	}{
		"static 404":        {h2frame(h2Headers, 4, 1, []byte{0x8d}), "404"},
		"padded":            {h2frame(h2Headers, 4|h2FlagPadded, 1, padded), "404"},
		"priority":          {h2frame(h2Headers, 4|h2FlagPriority, 1, prio), "400"},
		"size update first": {h2frame(h2Headers, 4, 1, []byte{0x3f, 0xe1, 0x1f, 0x88}), "200"},
		"literal 418":       {h2frame(h2Headers, 4, 1, status418), "4xx"},
		"literal name":      {h2frame(h2Headers, 4, 1, append([]byte{0x00, 7}, []byte(":status\x03503")...)), "503"},
		"cut literal":       {h2frame(h2Headers, 4, 1, status418)[:12], "short"},
		"regular first":     {h2frame(h2Headers, 4, 1, []byte{0xb6}), "garbage"}, // index 54: server
		"authority first":   {h2frame(h2Headers, 4, 1, []byte{0x81}), "garbage"},
		"index 0":           {h2frame(h2Headers, 4, 1, []byte{0x80}), "garbage"},
		"status 2000":       {h2frame(h2Headers, 4, 1, []byte{0x08, 0x04, '2', '0', '0', '0'}), "garbage"},
		"rst_stream":        {append(serverSettings(), h2frame(h2RSTStream, 0, 1, []byte{0, 0, 0, 2})...), "rst_stream"},
		"goaway":            {h2frame(h2GoAway, 0, 0, make([]byte, 8)), "goaway"},
		"data first":        {h2frame(h2Data, 0, 1, []byte("hi")), "garbage"},
		"headers stream 0":  {h2frame(h2Headers, 4, 0, []byte{0x88}), "garbage"},
		"settings cut":      {serverSettings()[:20], "short"},
		"huge int":          {h2frame(h2Headers, 4, 1, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}), "garbage"},
		"bad huffman":       {h2frame(h2Headers, 4, 1, []byte{0x08, 0x82, 0xff, 0xff}), "garbage"},
		"padding past end":  {h2frame(h2Headers, 4|h2FlagPadded, 1, []byte{9, 0x88}), "short"},
		"http/1 by mistake": {[]byte("HTTP/1.1 200 OK\r\n\r\n"), "garbage"},
		"dynamic first":     {h2frame(h2Headers, 4, 1, []byte{0xbe}), "answered"}, // index 62
	} {
		if got := ClassifyHead(HTTP2, tc.b); got != tc.want {
			t.Errorf("%s (%x): %q, want %q", name, tc.b, got, tc.want)
		}
	}
}

// TestClassifyHTTP2Multiplexed: on a connection carrying several streams,
// a pair's response is the HEADERS frame on its request's stream, other
// streams' HEADERS, DATA and resets skipped.
func TestClassifyHTTP2Multiplexed(t *testing.T) {
	req := func(stream uint32) []byte {
		return append([]byte(h2Preface), append(h2frame(0x4, 0, 0, nil), h2frame(h2Headers, 5, stream, []byte{0x82, 0x84})...)...)
	}
	var resp []byte
	resp = append(resp, serverSettings()...)
	resp = append(resp, h2frame(h2Headers, 4, 3, []byte{0x88})...)         // stream 3: 200
	resp = append(resp, h2frame(h2Data, 0, 3, []byte("ok\n"))...)          // its body
	resp = append(resp, h2frame(h2RSTStream, 0, 7, []byte{0, 0, 0, 8})...) // stream 7: cancelled
	resp = append(resp, h2frame(h2Headers, 4, 5, []byte{0x8e})...)         // stream 5: 500
	resp = append(resp, h2frame(h2Headers, 4, 1, []byte{0x8d})...)         // stream 1: 404
	for stream, want := range map[uint32]string{1: "404", 3: "200", 5: "500", 7: "rst_stream", 9: "short"} {
		var r Response
		r.SetHead(resp)
		if got := ClassifyPair(HTTP2, req(stream), &r); got != want {
			t.Errorf("stream %d: %q, want %q", stream, got, want)
		}
	}
	var r Response
	r.SetHead(resp)
	if got := ClassifyPair(HTTP2, nil, &r); got != "200" {
		t.Errorf("no request stream: %q, want the first HEADERS' 200", got)
	}
	if got := ClassifyPair(HTTP1, nil, &r); got != "garbage" {
		t.Errorf("HTTP/1 of HTTP/2 bytes: %q", got)
	}
	if got := h2RequestStream(req(5)[:40]); got != 0 {
		t.Errorf("stream of a cut request: %d", got)
	}
}
