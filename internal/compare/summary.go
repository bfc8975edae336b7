package compare

import (
	"bytes"
	"encoding/hex"
)

// maxSummary bounds a request summary: a log line and a label of the
// report, never the payload.
const maxSummary = 80

// summaryHexBytes is how many first bytes a summary shows in hex when the
// protocol gives nothing better.
const summaryHexBytes = 16

// Summarize returns a short printable summary of a request: the HTTP/1.x
// request line, an HTTP/2 request's method and path, a Redis command
// name, an SQL verb (PostgreSQL or MySQL), or the first bytes in hex.
func Summarize(p Protocol, req []byte) string {
	var s string
	switch p {
	case HTTP1, Auto, Unknown:
		if isHTTPRequest(req) {
			s = firstLine(req)
		}
	case HTTP2:
		s = h2RequestLine(req)
	case Redis:
		s = redisCommand(req)
	case Postgres:
		s = sqlVerb(req)
	case MySQL:
		s = mysqlCommand(req)
	}
	if s == "" || !printable(s) {
		n := min(len(req), summaryHexBytes)
		s = "hex:" + hex.EncodeToString(req[:n])
	}
	if len(s) > maxSummary {
		s = s[:maxSummary]
	}
	return s
}

func firstLine(b []byte) string {
	if i := bytes.IndexAny(b, "\r\n"); i >= 0 {
		b = b[:i]
	}
	return string(b[:min(len(b), maxSummary)])
}

func printable(s string) bool {
	for i := range len(s) {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
