package compare

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzClassify classifies any bytes under every protocol: never a panic,
// always a class of the protocol's bounded vocabulary, and the same class
// through a Response cut at MaxPrefix as straight from the bytes.
func FuzzClassify(f *testing.F) {
	for _, r := range loadRecorded(f) {
		f.Add(r.resp)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		for p := Auto; p < numProtocols; p++ {
			got := ClassifyHead(p, b)
			re := classPatterns[p]
			if re == nil {
				re = classPatterns[Unknown]
			}
			if !re.MatchString(got) {
				t.Fatalf("%s: class %q outside its vocabulary (%x)", p, got, b)
			}
			var r Response
			r.SetHead(b)
			if want := ClassifyHead(p, b[:min(len(b), MaxPrefix)]); Classify(p, &r) != want {
				t.Fatalf("%s: through a Response %q, from the bytes %q", p, Classify(p, &r), want)
			}
		}
	})
}

// FuzzDetect: any first bytes detect as some protocol without a panic,
// and as the same one when more bytes follow a complete HTTP/2 preface or
// method (detection reads a prefix only).
func FuzzDetect(f *testing.F) {
	for _, r := range loadRecorded(f) {
		f.Add(r.req, r.resp)
	}
	f.Fuzz(func(t *testing.T, req, resp []byte) {
		d := Detect(req)
		if d >= numProtocols || d == Auto {
			t.Fatalf("Detect = %d", d)
		}
		if d == HTTP1 || d == HTTP2 {
			if Detect(append(bytes.Clone(req), 'x')) != d {
				t.Fatal("detection changed with a byte more")
			}
		}
		if r := DetectResponse(resp); r != Unknown && r != MySQL {
			t.Fatalf("DetectResponse = %s", r)
		}
	})
}

// FuzzSummarize: a summary is short and printable whatever the request.
func FuzzSummarize(f *testing.F) {
	for _, r := range loadRecorded(f) {
		f.Add(uint8(r.proto), r.req)
	}
	f.Fuzz(func(t *testing.T, p uint8, req []byte) {
		s := Summarize(Protocol(p%uint8(numProtocols)), req)
		if len(s) == 0 || len(s) > maxSummary || !printable(s) {
			t.Fatalf("summary %q", s)
		}
	})
}

// FuzzReportJSON parses any bytes as a snapshot and prints what it
// accepts: never a panic, and the text holds no byte that is not
// printable (a hostile server cannot drive the terminal).
func FuzzReportJSON(f *testing.F) {
	good, _ := json.Marshal(sampleComparer(f).Snapshot())
	f.Add(good)
	f.Add([]byte(`{"tool":"tcpshadow","maps":[{"map":"x","prod":{"classes":{"\u001b[2J":1}}}]}`))
	f.Add([]byte(`{"tool":"prometheus"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseReport(b)
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := WriteText(&out, r); err != nil {
			t.Fatal(err)
		}
		for _, c := range out.Bytes() {
			if (c < 0x20 && c != '\n') || c == 0x7f {
				t.Fatalf("control byte %#x in the text", c)
			}
		}
	})
}

// FuzzClassifyPair classifies any response against any request under
// every protocol (HTTP/2 reads the request's stream): never a panic,
// always a class of the protocol's vocabulary.
func FuzzClassifyPair(f *testing.F) {
	for _, r := range loadRecorded(f) {
		f.Add(r.req, r.resp)
	}
	f.Fuzz(func(t *testing.T, req, resp []byte) {
		var r Response
		r.SetHead(resp)
		for p := Auto; p < numProtocols; p++ {
			re := classPatterns[p]
			if re == nil {
				re = classPatterns[Unknown]
			}
			if got := ClassifyPair(p, req, &r); !re.MatchString(got) {
				t.Fatalf("%s: class %q outside its vocabulary", p, got)
			}
		}
	})
}
