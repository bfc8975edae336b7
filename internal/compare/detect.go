package compare

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
)

// Protocol is what a map's requests and responses are classified as.
type Protocol uint8

const (
	// Auto: detect from the first pair that tells (Detect, then
	// DetectResponse); until then, and for Unknown, responses classify by
	// outcome only ("answered").
	Auto Protocol = iota
	HTTP1
	HTTP2
	Redis
	Postgres
	MySQL
	// Unknown: detection found nothing it knows.
	Unknown
	numProtocols
)

var protocolNames = [numProtocols]string{Auto: "auto", HTTP1: "http", HTTP2: "http2", Redis: "redis",
	Postgres: "postgres", MySQL: "mysql", Unknown: "unknown"}

func (p Protocol) String() string {
	if p < numProtocols {
		return protocolNames[p]
	}
	return "unknown"
}

// ParseProtocol parses a map's protocol option: auto, http (or http1,
// http/1.1), http2 (h2, h2c), redis, postgres (postgresql, pg), mysql
// (mariadb).
func ParseProtocol(s string) (Protocol, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "auto":
		return Auto, nil
	case "http", "http1", "http/1", "http/1.0", "http/1.1":
		return HTTP1, nil
	case "http2", "h2", "h2c", "http/2":
		return HTTP2, nil
	case "redis", "resp":
		return Redis, nil
	case "postgres", "postgresql", "pg":
		return Postgres, nil
	case "mysql", "mariadb":
		return MySQL, nil
	}
	return Auto, fmt.Errorf("protocol %q: want auto, http, http2, redis, postgres or mysql", s)
}

// h2Preface is what every HTTP/2 client sends first (RFC 9113 §3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// httpMethods are the HTTP/1.x request methods Detect recognises, each
// followed by a space.
var httpMethods = []string{"GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS ", "PATCH ", "CONNECT ", "TRACE "}

// PostgreSQL's first client messages (protocol "Start-up"): an Int32
// length, then an Int32 version or request code.
const (
	pgProtocol3     = 3 << 16
	pgSSLRequest    = 80877103
	pgGSSENCRequest = 80877104
	pgCancelRequest = 80877102
	pgMaxStartupLen = 10000 // the server's own limit on a startup packet
)

// Detect tells the protocol from a connection's first request bytes; it
// returns Unknown when they match nothing. MySQL clients speak second:
// see DetectResponse.
func Detect(req []byte) Protocol {
	switch {
	case len(req) == 0:
		return Unknown
	case bytes.HasPrefix(req, []byte("PRI * HTTP/2")):
		return HTTP2
	case isHTTPRequest(req):
		return HTTP1
	case req[0] == '*' && len(req) > 1 && req[1] >= '0' && req[1] <= '9':
		return Redis // a RESP array: every command a client sends
	case isPostgresStartup(req):
		return Postgres
	}
	return Unknown
}

func isHTTPRequest(req []byte) bool {
	for _, m := range httpMethods {
		if bytes.HasPrefix(req, []byte(m)) {
			return true
		}
	}
	return false
}

func isPostgresStartup(req []byte) bool {
	if len(req) < 8 {
		return false
	}
	n := binary.BigEndian.Uint32(req)
	switch binary.BigEndian.Uint32(req[4:]) {
	case pgSSLRequest, pgGSSENCRequest:
		return n == 8
	case pgCancelRequest:
		return n == 16
	case pgProtocol3:
		return n > 8 && n <= pgMaxStartupLen
	}
	return false
}

// DetectResponse tells the protocol from a server's first bytes, for
// server-first protocols: a MySQL/MariaDB greeting (a packet with
// sequence number 0 whose payload starts with protocol version 10, or an
// ERR packet refusing the client). Unknown otherwise.
func DetectResponse(resp []byte) Protocol {
	if len(resp) < 5 {
		return Unknown
	}
	n := int(resp[0]) | int(resp[1])<<8 | int(resp[2])<<16
	if resp[3] != 0 || n < 1 {
		return Unknown
	}
	switch resp[4] {
	case mysqlGreetingV10:
		// The server version follows: printable up to its NUL.
		if len(resp) > 5 && resp[5] >= '0' && resp[5] <= '9' {
			return MySQL
		}
	case mysqlERR:
		if n >= 3 && n < 1024 {
			return MySQL
		}
	}
	return Unknown
}
