package compare

import "encoding/binary"

// PostgreSQL backend messages (protocol 3.0): a type byte, an Int32
// length counting itself, then the body.
const (
	pgHeaderLen      = 5
	pgErrorResponse  = 'E'
	pgAuthentication = 'R'
	pgFieldCode      = 'C' // ErrorResponse field: the SQLSTATE
	sqlstateLen      = 5
	pgMaxMessageLen  = 1 << 30
)

// Classes of PostgreSQL responses that are not an error code.
const (
	classPGOK      = "ok"
	classPGError   = "error" // an ErrorResponse whose SQLSTATE is not in the head
	classPGAuth    = "auth"  // the server asks the client to authenticate
	classPGSSLYes  = "ssl"   // 'S' to an SSLRequest
	classPGSSLNo   = "nossl" // 'N' to an SSLRequest
	pgBackendTypes = "123ACDEGHIKNRSTVWZcdnpstv"
)

// classifyPostgres walks the backend messages at the head of a response
// past the ones that say nothing of the request's fate (ParameterStatus,
// BackendKeyData, notices, notifications, AuthenticationOk), then: an
// ErrorResponse is its SQLSTATE ("42P01"), an authentication request is
// "auth", any other message is "ok". A lone 'S' or 'N' answers an
// SSLRequest.
func classifyPostgres(b []byte) string {
	if len(b) == 1 {
		switch b[0] {
		case 'S':
			return classPGSSLYes
		case 'N':
			return classPGSSLNo
		}
	}
	authOK := false // the startup succeeded: what follows until the cut is session parameters
	for {
		if len(b) < pgHeaderLen {
			if authOK {
				return classPGOK
			}
			return ClassShort
		}
		typ := b[0]
		n := binary.BigEndian.Uint32(b[1:])
		if !isPGBackendType(typ) || n < 4 || n > pgMaxMessageLen {
			return ClassGarbage
		}
		body := b[pgHeaderLen:]
		whole := uint64(len(body)) >= uint64(n-4)
		if whole {
			body = body[:n-4]
		}
		switch typ {
		case pgErrorResponse:
			return sqlstate(body, whole)
		case pgAuthentication:
			if len(body) < 4 {
				return ClassShort
			}
			if binary.BigEndian.Uint32(body) != 0 {
				return classPGAuth
			}
			authOK = true
		case 'S', 'K', 'N', 'A':
		default:
			return classPGOK
		}
		if !whole {
			if authOK {
				return classPGOK
			}
			return ClassShort
		}
		b = b[pgHeaderLen+n-4:]
	}
}

func isPGBackendType(c byte) bool {
	for i := range len(pgBackendTypes) {
		if pgBackendTypes[i] == c {
			return true
		}
	}
	return false
}

// sqlstate returns the SQLSTATE of an ErrorResponse body (fields: a code
// byte, a NUL-terminated string; a zero byte ends them), kept only when
// it is five digits or capital letters; "error" otherwise, or "short"
// when the body is cut before the code.
func sqlstate(body []byte, whole bool) string {
	for len(body) > 0 && body[0] != 0 {
		code := body[0]
		body = body[1:]
		end := -1
		for i, c := range body {
			if c == 0 {
				end = i
				break
			}
		}
		if end < 0 {
			break
		}
		if code == pgFieldCode {
			v := body[:end]
			if len(v) != sqlstateLen {
				return classPGError
			}
			for _, c := range v {
				if (c < '0' || c > '9') && (c < 'A' || c > 'Z') {
					return classPGError
				}
			}
			return string(v)
		}
		body = body[end+1:]
	}
	if !whole {
		return ClassShort // the code may be past the head
	}
	return classPGError
}

// sqlVerb returns the first word of a simple Query message ('Q', Int32,
// the SQL text), upper-cased: "SELECT", "INSERT"; or the message's name
// for the others a client starts with.
func sqlVerb(b []byte) string {
	if isPostgresStartup(b) {
		switch binary.BigEndian.Uint32(b[4:]) {
		case pgSSLRequest:
			return "SSLRequest"
		case pgGSSENCRequest:
			return "GSSENCRequest"
		case pgCancelRequest:
			return "CancelRequest"
		}
		return "StartupMessage"
	}
	if len(b) < pgHeaderLen {
		return ""
	}
	switch b[0] {
	case 'Q':
		return firstWord(b[pgHeaderLen:])
	case 'P': // Parse: a statement name (NUL-terminated), then the query
		body := b[pgHeaderLen:]
		for i, c := range body {
			if c == 0 {
				return firstWord(body[i+1:])
			}
		}
	case 'X':
		return "Terminate"
	case 'p':
		return "Password"
	}
	return ""
}

// firstWord returns the first run of letters of s, upper-cased, at most
// 16 of them, after leading spaces.
func firstWord(s []byte) string {
	i := 0
	for i < len(s) && (s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r' || s[i] == '(') {
		i++
	}
	j := i
	for j < len(s) && j-i < 16 && ((s[j]|0x20) >= 'a' && (s[j]|0x20) <= 'z') {
		j++
	}
	w := make([]byte, j-i)
	for k, c := range s[i:j] {
		w[k] = c &^ 0x20
	}
	return string(w)
}
