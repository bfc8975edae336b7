package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

const redisServer = "/usr/bin/redis-server"

// startRedis runs Debian's redis-server in ns on addr with its own config,
// no persistence, and every file under a temp dir. The lab stops it.
func startRedis(t *testing.T, ns *lab.NS, addr netip.AddrPort) { startRedisConf(t, ns, addr, "") }

// startRedisConf is startRedis with extra configuration lines.
func startRedisConf(t *testing.T, ns *lab.NS, addr netip.AddrPort, extra string) {
	t.Helper()
	if _, err := os.Stat(redisServer); err != nil {
		t.Skipf("redis-server not installed: %v", err)
	}
	dir := t.TempDir()
	conf := fmt.Sprintf(`port %d
bind %s
protected-mode no
daemonize no
save ""
appendonly no
dir %s
pidfile %s
logfile %s
`, addr.Port(), addr.Addr(), dir, filepath.Join(dir, "redis.pid"), filepath.Join(dir, "redis.log")) + extra
	path := filepath.Join(dir, "redis.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := ns.Start(context.Background(), redisServer, path)
	if err != nil {
		t.Fatal(err)
	}
	ok := waitFor(t, "redis on "+addr.String(), 10*time.Second, func() bool {
		c, err := dialRESP(ns, addr)
		if err != nil {
			return false
		}
		defer c.Close()
		r, err := c.do("PING")
		return err == nil && r == "PONG"
	})
	if !ok {
		log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
		t.Fatalf("redis did not come up; output:\n%s\nlog:\n%s", p.Output(), log)
	}
}

// respConn is a minimal RESP2 client: enough for SET, INCR, LPUSH, GET,
// LRANGE, KEYS and DBSIZE, with pipelining.
type respConn struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

// respError is an error reply from the server.
type respError string

func (e respError) Error() string { return "redis: " + string(e) }

func dialRESP(ns *lab.NS, addr netip.AddrPort) (*respConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return nil, err
	}
	return &respConn{c: c, r: bufio.NewReader(c), w: bufio.NewWriter(c)}, nil
}

func (c *respConn) Close() error { return c.c.Close() }

// send buffers one command; flush sends what is buffered.
func (c *respConn) send(args ...string) {
	fmt.Fprintf(c.w, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(c.w, "$%d\r\n%s\r\n", len(a), a)
	}
}

func (c *respConn) flush() error {
	_ = c.c.SetDeadline(time.Now().Add(10 * time.Second))
	return c.w.Flush()
}

// do sends one command and reads its reply.
func (c *respConn) do(args ...string) (any, error) {
	c.send(args...)
	if err := c.flush(); err != nil {
		return nil, err
	}
	return c.read()
}

// read reads one reply: string (simple or bulk), int64, nil (null bulk or
// array), []any, or a respError value (not as the error).
func (c *respConn) read() (any, error) {
	_ = c.c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := c.r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("redis: bad reply line %q", line)
	}
	kind, body := line[0], line[1:len(line)-2]
	switch kind {
	case '+':
		return body, nil
	case '-':
		return respError(body), nil
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil || n < -1 {
			return nil, fmt.Errorf("redis: bad bulk length %q", body)
		}
		if n == -1 {
			return nil, nil
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(c.r, b); err != nil {
			return nil, err
		}
		return string(b[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil || n < -1 {
			return nil, fmt.Errorf("redis: bad array length %q", body)
		}
		if n == -1 {
			return nil, nil
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = c.read(); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("redis: unknown reply type %q", kind)
}

// redisDump is a server's whole dataset: key → value, lists rendered as
// their LRANGE elements joined by NUL.
func redisDump(ns *lab.NS, addr netip.AddrPort) (size int64, data map[string]string, err error) {
	c, err := dialRESP(ns, addr)
	if err != nil {
		return 0, nil, err
	}
	defer c.Close()
	r, err := c.do("DBSIZE")
	if err != nil {
		return 0, nil, fmt.Errorf("dbsize: %w", err)
	}
	size, ok := r.(int64)
	if !ok {
		return 0, nil, fmt.Errorf("dbsize: reply %v", r)
	}
	r, err = c.do("KEYS", "*")
	if err != nil {
		return 0, nil, fmt.Errorf("keys: %w", err)
	}
	keys, ok := r.([]any)
	if !ok {
		return 0, nil, fmt.Errorf("keys: reply %v", r)
	}
	data = make(map[string]string, len(keys))
	for _, k := range keys {
		key, _ := k.(string)
		r, err := c.do("TYPE", key)
		if err != nil {
			return 0, nil, fmt.Errorf("type %s: %w", key, err)
		}
		switch r {
		case "string":
			v, err := c.do("GET", key)
			if err != nil {
				return 0, nil, fmt.Errorf("get %s: %w", key, err)
			}
			data[key] = fmt.Sprint(v)
		case "list":
			v, err := c.do("LRANGE", key, "0", "-1")
			if err != nil {
				return 0, nil, fmt.Errorf("lrange %s: %w", key, err)
			}
			items, _ := v.([]any)
			s := ""
			for _, it := range items {
				s += fmt.Sprint(it) + "\x00"
			}
			data[key] = s
		default:
			return 0, nil, errors.New("key " + key + " of unexpected type " + fmt.Sprint(r))
		}
	}
	return size, data, nil
}
