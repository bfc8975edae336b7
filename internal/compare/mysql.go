package compare

// MySQL/MariaDB packets: a 3-byte little-endian payload length, a
// sequence number, then the payload, whose first byte tells its kind.
const (
	mysqlHeaderLen   = 4
	mysqlOK          = 0x00
	mysqlEOF         = 0xfe
	mysqlERR         = 0xff
	mysqlLocalInfile = 0xfb
	mysqlGreetingV10 = 0x0a
	mysqlMinErrCode  = 1000 // server errors start there; client ones at 2000
	mysqlMaxErrCode  = 9999
)

// Classes of MySQL responses that are not an error code.
const (
	classMySQLOK       = "ok"
	classMySQLRows     = "rows" // a result set: its column count first
	classMySQLEOF      = "eof"
	classMySQLGreeting = "greeting"
	classMySQLInfile   = "infile"
	classMySQLError    = "error" // an ERR packet with an odd code
)

// classifyMySQL reads the first packet: OK, EOF, a result set's column
// count, a greeting, or an ERR packet, which is its error code ("1146").
func classifyMySQL(b []byte) string {
	if len(b) < mysqlHeaderLen+1 {
		return ClassShort
	}
	n := int(b[0]) | int(b[1])<<8 | int(b[2])<<16
	if n == 0 {
		return ClassGarbage
	}
	p := b[mysqlHeaderLen:]
	switch p[0] {
	case mysqlOK:
		return classMySQLOK
	case mysqlEOF:
		if n < 9 {
			return classMySQLEOF
		}
		return classMySQLOK // an OK packet sent as 0xfe (CLIENT_DEPRECATE_EOF)
	case mysqlERR:
		if len(p) < 3 {
			return ClassShort
		}
		code := int(p[1]) | int(p[2])<<8
		if code < mysqlMinErrCode || code > mysqlMaxErrCode {
			return classMySQLError
		}
		return string([]byte{byte('0' + code/1000), byte('0' + code/100%10), byte('0' + code/10%10), byte('0' + code%10)})
	case mysqlLocalInfile:
		return classMySQLInfile
	case mysqlGreetingV10:
		if b[3] == 0 {
			return classMySQLGreeting
		}
	}
	// Anything else is a length-encoded column count (1..250, or 0xfc and
	// 0xfd for more): a result set follows.
	return classMySQLRows
}

// mysqlCommand names a client command packet: COM_QUERY by its SQL verb,
// others by name.
func mysqlCommand(b []byte) string {
	if len(b) < mysqlHeaderLen+1 {
		return ""
	}
	switch b[mysqlHeaderLen] {
	case 0x03:
		return firstWord(b[mysqlHeaderLen+1:])
	case 0x01:
		return "COM_QUIT"
	case 0x02:
		return "COM_INIT_DB"
	case 0x0e:
		return "COM_PING"
	case 0x16:
		return "COM_STMT_PREPARE"
	case 0x17:
		return "COM_STMT_EXECUTE"
	}
	return ""
}
