package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

const nginxBin = "/usr/sbin/nginx"

// nginx is a Debian nginx instance with its own generated config, every
// file of it in a temp dir.
type nginx struct {
	dir  string
	proc *lab.Process
}

// startNginx runs nginx in ns on addr, answering every request with a
// short body, closing keep-alive connections after keepalive idle.
func startNginx(t *testing.T, ns *lab.NS, addr netip.AddrPort, keepalive time.Duration) *nginx {
	t.Helper()
	return startNginxWith(t, ns, addr, nginxOptions{keepalive: keepalive})
}

// nginxOptions shape the generated configuration.
type nginxOptions struct {
	keepalive time.Duration // idle keep-alive connections are closed after this
	http2     bool          // HTTP/2 on the cleartext listener (prior knowledge, h2c)
	// locations are extra server-block lines, e.g. a location that
	// answers 500; the default location answers "ok".
	locations string
}

func startNginxWith(t *testing.T, ns *lab.NS, addr netip.AddrPort, o nginxOptions) *nginx {
	t.Helper()
	if _, err := os.Stat(nginxBin); err != nil {
		t.Skipf("nginx not installed: %v", err)
	}
	dir := t.TempDir()
	tmp := func(name string) string { return filepath.Join(dir, name) }
	h2 := ""
	if o.http2 {
		h2 = " http2"
	}
	// One process, in the foreground: the lab stops it by PID.
	conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %s;
error_log %s info;
events { worker_connections 256; }
http {
	log_format e2e '$remote_addr:$remote_port $request_uri $status';
	access_log %s e2e;
	client_body_temp_path %s;
	proxy_temp_path %s;
	fastcgi_temp_path %s;
	uwsgi_temp_path %s;
	scgi_temp_path %s;
	keepalive_timeout %dms;
	keepalive_requests 100000;
	http2_max_concurrent_streams 256;
	server {
		listen %s%s;
		location / { return 200 "ok\n"; }
		%s
	}
}
`, tmp("nginx.pid"), tmp("error.log"), tmp("access.log"), tmp("body"), tmp("proxy"),
		tmp("fastcgi"), tmp("uwsgi"), tmp("scgi"), o.keepalive.Milliseconds(), addr, h2, o.locations)
	path := tmp("nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	n := &nginx{dir: dir}
	var err error
	n.proc, err = ns.Start(context.Background(), nginxBin, "-p", dir, "-e", tmp("error.log"), "-c", path)
	if err != nil {
		t.Fatal(err)
	}
	ok := waitFor(t, "nginx on "+addr.String(), 10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		c, err := ns.DialContext(ctx, "tcp", addr.String())
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	if !ok {
		log, _ := os.ReadFile(tmp("error.log"))
		t.Fatalf("nginx did not come up; output:\n%s\nerror log:\n%s", n.proc.Output(), log)
	}
	return n
}

// accessEntry is one line of the access log.
type accessEntry struct {
	from netip.AddrPort
	path string
}

// accessed returns the logged requests whose path has prefix.
func (n *nginx) accessed(t testing.TB, prefix string) []accessEntry {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.dir, "access.log"))
	if err != nil {
		t.Fatal(err)
	}
	var out []accessEntry
	for _, line := range strings.Split(string(b), "\n") {
		fs := strings.Fields(line)
		if len(fs) < 2 || !strings.HasPrefix(fs[1], prefix) {
			continue
		}
		// $remote_addr:$remote_port, IPv6 addresses unbracketed.
		i := strings.LastIndexByte(fs[0], ':')
		if i < 0 {
			continue
		}
		host, port := fs[0][:i], fs[0][i+1:]
		ap, err := netip.ParseAddrPort(net.JoinHostPort(host, port))
		if err != nil {
			continue
		}
		out = append(out, accessEntry{from: ap, path: fs[1]})
	}
	return out
}

// errorLog returns nginx's error log, for diagnosis.
func (n *nginx) errorLog() string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "error.log"))
	return string(b)
}
