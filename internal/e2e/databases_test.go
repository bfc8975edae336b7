package e2e

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// mariadb is a MariaDB server of its own in a lab namespace: no
// passwords (grant tables skipped), so that a copied login succeeds.
type mariadb struct {
	dir  string
	proc *lab.Process
}

func startMariaDB(t *testing.T, ns *lab.NS, addr netip.AddrPort) *mariadb {
	t.Helper()
	for _, p := range []string{"/usr/sbin/mariadbd", "/usr/bin/mariadb-install-db", "/usr/bin/mariadb"} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("MariaDB not installed (scripts/deps.sh installs it): %v", err)
		}
	}
	dir, err := os.MkdirTemp("", "tcpshadow-mariadb-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	data := filepath.Join(dir, "data")
	if out, err := exec.Command("mariadb-install-db", "--no-defaults", "--user=root", "--datadir="+data,
		"--auth-root-authentication-method=normal", "--skip-test-db").CombinedOutput(); err != nil {
		t.Fatalf("mariadb-install-db: %v\n%s", err, out)
	}
	m := &mariadb{dir: dir}
	m.proc, err = ns.Start(context.Background(), "/usr/sbin/mariadbd", "--no-defaults", "--user=root",
		"--datadir="+data, "--socket="+m.socket(), "--pid-file="+filepath.Join(dir, "pid"),
		"--bind-address="+addr.Addr().String(), "--port="+strconv.Itoa(int(addr.Port())),
		"--skip-grant-tables", "--skip-log-bin", "--innodb-flush-log-at-trx-commit=0",
		"--innodb-buffer-pool-size=64M", "--skip-name-resolve")
	if err != nil {
		t.Fatal(err)
	}
	if !waitFor(t, "MariaDB on "+addr.String(), 30*time.Second, func() bool {
		_, err := m.sql("select 1")
		return err == nil
	}) {
		t.Fatalf("MariaDB did not come up:\n%s", m.proc.Output())
	}
	return m
}

func (m *mariadb) socket() string { return filepath.Join(m.dir, "sock") }

// sql runs statements over the server's unix socket (never copied) and
// returns the output, tab-separated, without column names.
func (m *mariadb) sql(stmt string) (string, error) {
	out, err := exec.Command("mariadb", "--no-defaults", "-S", m.socket(), "-u", "root", "-N", "-B", "-e", stmt).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// TestDatabasesCopiedExactly: write workloads from the databases' own
// benchmark clients, against prod; afterwards the shadow's data equal
// prod's exactly. PostgreSQL with pgbench (TPC-B-like, 4 connections,
// no password), Redis with redis-benchmark pipelining 16 commands,
// MariaDB with sysbench's oltp_write_only (one thread, so that the order
// of statements, and so the final rows, are prod's; 100 transactions a
// second: one connection's statements go one round trip through the
// agent at a time, about a millisecond each in this lab, so a client
// faster than that makes the copy lag behind prod, as the pacing drift
// reports).
func TestDatabasesCopiedExactly(t *testing.T) {
	const pgPort, redisPort, myPort = 5432, 6379, 3306
	at := func(a netip.Addr, port int) netip.AddrPort { return netip.AddrPortFrom(a, uint16(port)) }
	var mapArgs []string
	for _, p := range []int{pgPort, redisPort, myPort} {
		mapArgs = append(mapArgs, at(lab.ProdClientSideV4, p).String()+"-"+at(lab.ShadowV4, p).String())
	}
	e := newEnv(t, envOptions{
		noProdHTTP: true, noShadowHTTP: true, maps: mapArgs,
		agentFilter: fmt.Sprintf("tcp and (src port %d or src port %d or src port %d)", pgPort, redisPort, myPort),
	})
	e.explainFailures(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	t.Run("PostgresPgbench", func(t *testing.T) {
		prod := startPostgres(t, e.lab.Prod, at(lab.ProdClientSideV4, pgPort), "")
		shadow := startPostgres(t, e.lab.Shadow, at(lab.ShadowV4, pgPort), "")
		for _, p := range []*postgres{prod, shadow} {
			out, err := exec.Command("setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--",
				filepath.Join(pgBin, "pgbench"), "-i", "-s", "1", "-q", "-h", p.dir, "-U", "postgres", "postgres").CombinedOutput()
			if err != nil {
				t.Fatalf("pgbench -i: %v\n%s", err, out)
			}
		}
		out, err := e.lab.Client.Run(ctx, filepath.Join(pgBin, "pgbench"), "-h", lab.ProdClientSideV4.String(),
			"-p", strconv.Itoa(pgPort), "-U", "postgres", "-c", "4", "-t", "1500", "-n", "postgres")
		if err != nil {
			t.Fatalf("pgbench on prod: %v\n%s", err, out)
		}
		t.Logf("pgbench on prod:\n%s", out)
		// A fixed number of transactions, not a duration: the copy
		// replays each round trip through the agent's capture and relay,
		// so on a slow host it may take several times prod's run.
		e.drained(t, 90*time.Second)
		const q = "select (select sum(abalance) from pgbench_accounts), (select sum(bbalance) from pgbench_branches), " +
			"(select count(*) from pgbench_history), (select sum(delta) from pgbench_history)"
		want, got := pgQuery(t, prod, q), pgQuery(t, shadow, q)
		if want != got || strings.HasPrefix(want, " 0 |") {
			t.Fatalf("prod: %s\nshadow: %s", want, got)
		}
		t.Logf("prod and shadow: %s (balances, history rows, deltas)", want)
	})

	t.Run("RedisPipelined", func(t *testing.T) {
		prod, shadow := at(lab.ProdClientSideV4, redisPort), at(lab.ShadowV4, redisPort)
		startRedis(t, e.lab.Prod, prod)
		startRedis(t, e.lab.Shadow, shadow)
		out, err := e.lab.Client.Run(ctx, "redis-benchmark", "-h", prod.Addr().String(), "-p", strconv.Itoa(redisPort),
			"-P", "16", "-c", "8", "-n", "50000", "-r", "2000", "-t", "set,incr,lpush", "-q")
		if err != nil {
			t.Fatalf("redis-benchmark on prod: %v\n%s", err, out)
		}
		lines := strings.Split(strings.TrimSpace(strings.ReplaceAll(string(out), "\r", "\n")), "\n")
		t.Logf("redis-benchmark on prod: %s", strings.Join(lines[max(0, len(lines)-3):], "; "))
		e.drained(t, 30*time.Second)
		ps, pd, err := redisDump(e.lab.Prod, prod)
		if err != nil {
			t.Fatal(err)
		}
		ss, sd, err := redisDump(e.lab.Shadow, shadow)
		if err != nil {
			t.Fatal(err)
		}
		if ps == 0 || ps != ss || !maps.Equal(pd, sd) {
			diff := 0
			for k, v := range pd {
				if sd[k] != v {
					diff++
				}
			}
			t.Fatalf("prod holds %d keys, the shadow %d; %d differ", ps, ss, diff)
		}
		t.Logf("prod and shadow hold the same %d keys", ps)
	})

	t.Run("MariaDBSysbench", func(t *testing.T) {
		if _, err := exec.LookPath("sysbench"); err != nil {
			t.Fatalf("sysbench not installed (scripts/deps.sh installs it): %v", err)
		}
		prod := startMariaDB(t, e.lab.Prod, at(lab.ProdClientSideV4, myPort))
		shadow := startMariaDB(t, e.lab.Shadow, at(lab.ShadowV4, myPort))
		common := []string{"oltp_write_only", "--db-driver=mysql", "--mysql-user=root", "--mysql-db=sbtest",
			"--tables=1", "--table-size=2000", "--rand-seed=7"}
		for _, m := range []*mariadb{prod, shadow} {
			if _, err := m.sql("create database sbtest"); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("sysbench", append(common, "--mysql-socket="+m.socket(), "prepare")...).CombinedOutput(); err != nil {
				t.Fatalf("sysbench prepare: %v\n%s", err, out)
			}
		}
		out, err := e.lab.Client.Run(ctx, "sysbench", append(common, "--mysql-host="+lab.ProdClientSideV4.String(),
			"--mysql-port="+strconv.Itoa(myPort), "--threads=1", "--rate=100", "--time=5", "--report-interval=0", "run")...)
		if err != nil {
			t.Fatalf("sysbench on prod: %v\n%s", err, out)
		}
		if i := strings.Index(string(out), "SQL statistics"); i >= 0 {
			t.Logf("sysbench on prod:\n%s", out[i:min(len(out), i+600)])
		}
		e.drained(t, 30*time.Second)
		const q = "checksum table sbtest.sbtest1; select count(*) from sbtest.sbtest1"
		want, err := prod.sql(q)
		if err != nil {
			t.Fatal(err)
		}
		got, err := shadow.sql(q)
		if err != nil {
			t.Fatal(err)
		}
		if want != got {
			t.Fatalf("prod: %s\nshadow: %s", want, got)
		}
		t.Logf("prod and shadow: %s", strings.ReplaceAll(want, "\n", "; "))
	})
}

// pgQuery runs a query over the server's unix socket and returns its
// one row as psql prints it unaligned.
func pgQuery(t *testing.T, p *postgres, q string) string {
	t.Helper()
	out, err := exec.Command("setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--",
		"psql", "-h", p.dir, "-U", "postgres", "-X", "-A", "-t", "-c", q, "postgres").CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}
