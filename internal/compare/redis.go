package compare

import "bytes"

// Redis reply classes (RESP2 and RESP3): errors by their code, the rest
// by kind.
const (
	classRedisOK    = "ok"    // +OK
	classRedisValue = "value" // any other simple string, integer, bulk, array, map, ...
	classRedisNil   = "nil"   // $-1, *-1, RESP3 _
	classRedisError = "-other"
)

// redisErrorCodes are the error prefixes Redis itself sends; each is a
// class ("-ERR", "-WRONGTYPE"), any other is "-other".
var redisErrorCodes = map[string]string{}

func init() {
	for _, c := range []string{"ERR", "WRONGTYPE", "NOSCRIPT", "NOAUTH", "WRONGPASS", "NOPERM", "READONLY",
		"OOM", "BUSY", "BUSYKEY", "LOADING", "MOVED", "ASK", "TRYAGAIN", "CROSSSLOT", "CLUSTERDOWN",
		"MASTERDOWN", "MISCONF", "EXECABORT", "NOREPLICAS", "NOPROTO", "UNKILLABLE", "NOTBUSY"} {
		redisErrorCodes[c] = "-" + c
	}
}

// classifyRedis reads the first reply's type byte and, for errors, the
// error code (the first word).
func classifyRedis(b []byte) string {
	line := b[1:]
	switch b[0] {
	case '+':
		word, _, cut := bytes.Cut(line, []byte("\r"))
		switch {
		case string(word) == "OK":
			return classRedisOK
		case !cut && len(word) < len("OK") && bytes.HasPrefix([]byte("OK"), word):
			return ClassShort // "+OK" cut by the head
		}
		return classRedisValue
	case '-', '!': // '!' is a RESP3 bulk error: its length, CRLF, then the text
		if b[0] == '!' {
			i := bytes.Index(line, []byte("\r\n"))
			if i < 0 {
				return ClassShort
			}
			line = line[i+2:]
		}
		end := bytes.IndexAny(line, " \r")
		if end < 0 {
			if len(line) == len(b)-1 && len(line) < 16 {
				return ClassShort // the code may go on past the head
			}
			end = len(line)
		}
		if c, ok := redisErrorCodes[string(line[:end])]; ok {
			return c
		}
		return classRedisError
	case '$', '*':
		if bytes.HasPrefix(line, []byte("-1")) {
			return classRedisNil
		}
		if len(line) == 0 || string(line) == "-" {
			return ClassShort
		}
		if (line[0] < '0' || line[0] > '9') && line[0] != '?' {
			return ClassGarbage
		}
		return classRedisValue
	case '_':
		return classRedisNil
	case ':', ',', '#', '(', '=', '%', '~', '>', '|':
		return classRedisValue
	}
	return ClassGarbage
}

// redisCommand returns the command name of a RESP array request
// ("*2\r\n$3\r\nGET\r\n..." → "GET") or an inline one ("PING\r\n").
func redisCommand(b []byte) string {
	if len(b) > 0 && b[0] == '*' {
		i := bytes.Index(b, []byte("\r\n$"))
		if i < 0 {
			return ""
		}
		b = b[i+3:]
		j := bytes.Index(b, []byte("\r\n"))
		if j < 0 {
			return ""
		}
		b = b[j+2:]
	}
	end := bytes.IndexAny(b, " \r\n")
	if end < 0 {
		end = len(b)
	}
	return string(bytes.ToUpper(b[:min(end, 32)]))
}
