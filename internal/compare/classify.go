package compare

// Classes every protocol shares.
const (
	ClassAnswered = "answered" // bytes came back; the protocol says no more
	ClassReset    = "reset"
	ClassClosed   = "closed"
	ClassTimeout  = "timeout" // no answer within the datapath's timeout
	ClassShort    = "short"   // too few bytes to classify
	ClassGarbage  = "garbage" // bytes that are not this protocol
	ClassOther    = "other"   // a class beyond MaxClasses for its map and side
)

// Classify returns the class of one side's response under protocol p:
// its outcome unless answered, then what the response's first bytes say.
// The result is one of a bounded set of short printable strings for each
// protocol; a head cut anywhere classifies as far as it goes, or "short".
func Classify(p Protocol, r *Response) string {
	if r.Outcome != Answered {
		return r.Outcome.String()
	}
	return ClassifyHead(p, r.head())
}

// ClassifyPair is Classify knowing the request: for HTTP/2 the response's
// HEADERS frame is the one on the request's stream, so answers on a
// multiplexed connection are told apart.
func ClassifyPair(p Protocol, req []byte, r *Response) string {
	if p != HTTP2 || r.Outcome != Answered || r.HeadLen == 0 {
		return Classify(p, r)
	}
	return classifyHTTP2(r.head(), h2RequestStream(req))
}

// ClassifyHead classifies an answered response's first bytes.
func ClassifyHead(p Protocol, b []byte) string {
	if len(b) == 0 {
		return ClassShort
	}
	switch p {
	case HTTP1:
		return classifyHTTP1(b)
	case HTTP2:
		return classifyHTTP2(b, 0)
	case Redis:
		return classifyRedis(b)
	case Postgres:
		return classifyPostgres(b)
	case MySQL:
		return classifyMySQL(b)
	}
	return ClassAnswered
}
