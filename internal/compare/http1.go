package compare

import "bytes"

// knownStatus are the HTTP status codes kept as their own class; every
// other valid code is bucketed by its hundred ("1xx" … "5xx"), which keeps
// the label set bounded whatever a server sends.
var knownStatus = map[int]string{}

func init() {
	for _, c := range []int{100, 101, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308,
		400, 401, 403, 404, 405, 408, 409, 410, 413, 415, 422, 429,
		500, 501, 502, 503, 504} {
		knownStatus[c] = string([]byte{byte('0' + c/100), byte('0' + c/10%10), byte('0' + c%10)})
	}
}

var statusBuckets = [6]string{"", "1xx", "2xx", "3xx", "4xx", "5xx"}

// statusClass returns the class of a status code, "garbage" outside
// 100..599.
func statusClass(code int) string {
	if s, ok := knownStatus[code]; ok {
		return s
	}
	if code < 100 || code > 599 {
		return ClassGarbage
	}
	return statusBuckets[code/100]
}

// classifyHTTP1 reads the status line "HTTP/1.x NNN reason". Interim 1xx
// responses (100 Continue, 103 Early Hints) are skipped when the final
// status line follows within the head; 101 Switching Protocols is final.
func classifyHTTP1(b []byte) string {
	for {
		const proto = "HTTP/1."
		n := min(len(b), len(proto))
		if !bytes.Equal(b[:n], []byte(proto)[:n]) {
			return ClassGarbage
		}
		if len(b) < len("HTTP/1.1 200") {
			return ClassShort
		}
		if b[7] < '0' || b[7] > '9' || b[8] != ' ' {
			return ClassGarbage
		}
		code := 0
		for _, c := range b[9:12] {
			if c < '0' || c > '9' {
				return ClassGarbage
			}
			code = code*10 + int(c-'0')
		}
		if len(b) > 12 && b[12] != ' ' && b[12] != '\r' && b[12] != '\n' {
			return ClassGarbage // a fourth digit or worse
		}
		if code < 100 || code >= 200 || code == 101 {
			return statusClass(code)
		}
		end := bytes.Index(b, []byte("\r\n\r\n"))
		if end < 0 || end+4 == len(b) {
			return statusClass(code) // the final status is past the head
		}
		b = b[end+4:]
	}
}
