package e2e

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// pgBin is where Debian's PostgreSQL server programs are.
const pgBin = "/usr/lib/postgresql/15/bin"

// postgres is a PostgreSQL server of its own in a lab namespace, run as
// the postgres user, logging every connection.
type postgres struct {
	dir  string
	proc *lab.Process
}

// startPostgres runs PostgreSQL in ns on addr, with password for user
// postgres checked by SCRAM-SHA-256 on TCP connections; without a
// password TCP connections are trusted (a copied login then succeeds).
func startPostgres(t *testing.T, ns *lab.NS, addr netip.AddrPort, password string) *postgres {
	t.Helper()
	if _, err := os.Stat(filepath.Join(pgBin, "postgres")); err != nil {
		t.Skipf("PostgreSQL not installed: %v", err)
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Skipf("no postgres user: %v", err)
	}
	// Outside t.TempDir, whose parent only root may enter.
	dir, err := os.MkdirTemp("", "tcpshadow-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte(cmp.Or(password, "unused")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, pw} {
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	data := filepath.Join(dir, "data")
	asPostgres := func(name string, args ...string) []string {
		return append([]string{"--reuid=postgres", "--regid=postgres", "--clear-groups", "--", filepath.Join(pgBin, name)}, args...)
	}
	if out, err := exec.Command("setpriv", asPostgres("initdb", "-D", data, "-U", "postgres",
		"--auth-host=scram-sha-256", "--auth-local=trust", "--pwfile="+pw, "-E", "UTF8", "--no-sync")...).CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	auth := "scram-sha-256"
	if password == "" {
		auth = "trust"
	}
	hba := "local all all trust\nhost all all 0.0.0.0/0 " + auth + "\nhost all all ::/0 " + auth + "\n"
	if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chown(filepath.Join(data, "pg_hba.conf"), uid, gid)
	p := &postgres{dir: dir}
	p.proc, err = ns.Start(context.Background(), "setpriv", asPostgres("postgres", "-D", data,
		"-c", "listen_addresses="+addr.Addr().String(), "-c", "port="+strconv.Itoa(int(addr.Port())),
		"-c", "unix_socket_directories="+dir, "-c", "log_connections=on", "-c", "fsync=off",
		"-c", "max_connections=200", "-c", "logging_collector=off")...)
	if err != nil {
		t.Fatal(err)
	}
	// SIGINT is PostgreSQL's fast shutdown: its backends end with it,
	// before the lab looks for processes left in the namespace.
	t.Cleanup(func() {
		_ = p.proc.Signal(os.Interrupt)
		select {
		case <-p.proc.Done():
		case <-time.After(15 * time.Second):
		}
	})
	if !waitFor(t, "PostgreSQL on "+addr.String(), 20*time.Second, func() bool {
		return p.sql(t, "select 1") == nil
	}) {
		t.Fatalf("PostgreSQL did not come up:\n%s", p.proc.Output())
	}
	return p
}

// sql runs a statement over the server's unix socket (never copied).
func (p *postgres) sql(t testing.TB, stmt string) error {
	out, err := exec.Command("setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--",
		"psql", "-h", p.dir, "-U", "postgres", "-X", "-q", "-c", stmt).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// tcpConnections counts the TCP connections the server logged, the unix
// socket's left out.
func (p *postgres) tcpConnections() int {
	n := 0
	for _, line := range strings.Split(p.proc.Output(), "\n") {
		if strings.Contains(line, "connection received: host=") && !strings.Contains(line, "host=[local]") {
			n++
		}
	}
	return n
}
