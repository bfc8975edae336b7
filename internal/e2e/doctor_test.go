package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// doctorResult is one run of tcpshadow doctor.
type doctorResult struct {
	out  string
	code int
}

// problems returns "STATUS CHECK" for every line that is not ok, in order.
func (d doctorResult) problems() []string {
	var out []string
	for _, line := range strings.Split(d.out, "\n") {
		status, rest, _ := strings.Cut(line, " ")
		if status != "warn" && status != "FAIL" {
			continue
		}
		// Check names hold colons (ports, IPv6); ": " ends them.
		check, _, _ := strings.Cut(strings.TrimSpace(rest), ": ")
		out = append(out, status+" "+check)
	}
	return out
}

// line returns the output line of check, or "".
func (d doctorResult) line(check string) string {
	for _, line := range strings.Split(d.out, "\n") {
		if len(line) > 5 && strings.HasPrefix(line[5:], check+": ") {
			return line
		}
	}
	return ""
}

// runDoctor runs the real binary's doctor in ns.
func runDoctor(t *testing.T, ns *lab.NS, args ...string) doctorResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := ns.Run(ctx, binPath, append([]string{"doctor"}, args...)...)
	d := doctorResult{out: string(out)}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		d.code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	t.Logf("doctor %s in %s: exit %d\n%s", strings.Join(args, " "), ns.Name(), d.code, d.out)
	return d
}

// expect checks the exit status and that exactly the named problems (and
// no others) were reported, each line containing its words.
func (d doctorResult) expect(t *testing.T, code int, problems map[string][]string) {
	t.Helper()
	if d.code != code {
		t.Errorf("exit status %d, want %d", d.code, code)
	}
	var want []string
	for p := range problems {
		want = append(want, p)
	}
	got := d.problems()
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("problems reported %q, want exactly %q", got, want)
	}
	for p, words := range problems {
		_, check, _ := strings.Cut(p, " ")
		line := d.line(check)
		for _, w := range words {
			if !strings.Contains(line, w) {
				t.Errorf("line %q does not say %q", line, w)
			}
		}
	}
}

func mustRun(t *testing.T, ns *lab.NS, name string, args ...string) {
	t.Helper()
	if _, err := ns.Run(context.Background(), name, args...); err != nil {
		t.Fatal(err)
	}
}

func mustSysctl(t *testing.T, ns *lab.NS, key, value string) {
	t.Helper()
	if err := ns.Sysctl(key, value); err != nil {
		t.Fatal(err)
	}
}

// TestDoctor runs doctor for each role on a healthy lab, then breaks one
// thing at a time and checks doctor names exactly that problem. Each case
// restores what it broke in its own cleanup, so the next starts healthy.
func TestDoctor(t *testing.T) {
	start := time.Now()
	e := newEnv(t, envOptions{lab: lab.Config{DisableOffloads: true}, lateCopier: true})
	l := e.lab
	agentAddr := net.JoinHostPort(lab.AssistV4.String(), agentPort)
	pool4, pool6 := lab.PoolV4.String(), lab.PoolV6.String()
	map4 := fmt.Sprintf("%s:80-%s:80", lab.ProdClientSideV4, lab.ShadowV4)
	map6 := fmt.Sprintf("[%s]:80-[%s]:80", lab.ProdClientSideV6, lab.ShadowV6)
	target4 := net.JoinHostPort(lab.ShadowV4.String(), "80")
	target6 := net.JoinHostPort(lab.ShadowV6.String(), "80")

	assist := []string{"--role", "assist", "--iface", lab.HostLink, "--to", pool4, "--to", pool6, "--listen", agentAddr}
	shadow := []string{"--role", "shadow", "--via", lab.AssistV4.String(), "--via", lab.AssistV6.String(),
		"--to", pool4, "--to", pool6, "--prod", lab.ProdV4.String()}
	prodNoSecret := []string{"--role", "prod", "--iface", lab.ProdClientLink, "--intercept", lab.AssistV4.String()}
	prod := append(slices.Clone(prodNoSecret), "--secret-file", e.secret)
	probe4 := append(slices.Clone(prod), "--probe", "--map", map4, "--client-pool", pool4)
	probeBoth := append(slices.Clone(prod), "--probe", "--map", map4, "--map", map6, "--client-pool", pool4, "--client-pool", pool6)

	t.Run("Healthy", func(t *testing.T) {
		runDoctor(t, l.Assist, assist...).expect(t, 0, nil)
		runDoctor(t, l.Shadow, shadow...).expect(t, 0, nil)
		d := runDoctor(t, l.Prod, probeBoth...)
		d.expect(t, 0, nil)
		for _, target := range []string{target4, target6} {
			if line := d.line("probe " + target); !strings.HasPrefix(line, "ok") || !strings.Contains(line, "SYN-ACK") {
				t.Errorf("probe of %s: %q, want ok with a relayed SYN-ACK", target, line)
			}
		}
		// The probe reset what it opened: the shadow holds nothing from the pool.
		waitFor(t, "the shadow to drop the probes' connections", 5*time.Second, func() bool {
			return len(shadowPoolSockets(t, l)) == 0
		})
	})

	t.Run("AssistForwarding", func(t *testing.T) {
		mustSysctl(t, l.Assist, "net.ipv4.ip_forward", "1")
		t.Cleanup(func() { mustSysctl(t, l.Assist, "net.ipv4.ip_forward", "0") })
		runDoctor(t, l.Assist, assist...).expect(t, 1, map[string][]string{
			"FAIL ip_forward": {"net.ipv4.ip_forward=1", "fix: sysctl -w net.ipv4.ip_forward=0"},
		})
	})

	t.Run("AssistNoIPv6Blackhole", func(t *testing.T) {
		mustRun(t, l.Assist, "ip", "-6", "route", "del", "blackhole", pool6)
		t.Cleanup(func() { mustRun(t, l.Assist, "ip", "-6", "route", "add", "blackhole", pool6) })
		runDoctor(t, l.Assist, assist...).expect(t, 0, map[string][]string{
			"warn blackhole " + pool6: {"ICMPv6 unreachable", "fix: ip -6 route replace blackhole " + pool6},
		})
	})

	t.Run("ShadowRouteRemoved", func(t *testing.T) {
		mustRun(t, l.Shadow, "ip", "route", "del", pool4)
		t.Cleanup(func() {
			mustRun(t, l.Shadow, "ip", "route", "add", pool4, "via", lab.AssistV4.String(), "dev", lab.HostLink)
		})
		runDoctor(t, l.Shadow, shadow...).expect(t, 1, map[string][]string{
			"FAIL route " + pool4: {"route missing", "fix: tcpshadow route add --via " + lab.AssistV4.String() + " --to " + pool4},
		})
		// The probe sees only that no reply came back, and that plain
		// connections work: it names the hops that remain.
		runDoctor(t, l.Prod, probe4...).expect(t, 1, map[string][]string{
			"FAIL probe " + target4: {"no reply at the assist host", "accepts plain connections", "route for " + pool4},
		})
	})

	t.Run("ShadowStrictRPFilter", func(t *testing.T) {
		// Strict with the route back leaving by the arrival interface:
		// works, but fragile.
		mustSysctl(t, l.Shadow, "net.ipv4.conf.all.rp_filter", "1")
		t.Cleanup(func() { mustSysctl(t, l.Shadow, "net.ipv4.conf.all.rp_filter", "0") })
		runDoctor(t, l.Shadow, shadow...).expect(t, 0, map[string][]string{
			"warn rp_filter " + pool4: {"strict", "works only while"},
		})

		// The assist is also reachable over a back link, and the pool's
		// route uses it: copies arrive on eth0, the route back leaves by
		// eth1, and strict rp_filter drops them.
		const back = "eth1"
		backAssist := "198.18.3.3"
		mustRun(t, l.Shadow, "ip", "link", "add", back, "type", "veth", "peer", "name", back, "netns", l.Assist.Name())
		t.Cleanup(func() {
			mustRun(t, l.Shadow, "ip", "link", "del", back)
			mustRun(t, l.Shadow, "ip", "route", "replace", pool4, "via", lab.AssistV4.String(), "dev", lab.HostLink)
		})
		mustRun(t, l.Shadow, "ip", "addr", "add", "198.18.3.2/24", "dev", back)
		mustRun(t, l.Assist, "ip", "addr", "add", backAssist+"/24", "dev", back)
		mustRun(t, l.Shadow, "ip", "link", "set", back, "up")
		mustRun(t, l.Assist, "ip", "link", "set", back, "up")
		mustRun(t, l.Shadow, "ip", "route", "replace", pool4, "via", backAssist, "dev", back)
		viaBack := []string{"--role", "shadow", "--via", backAssist, "--to", pool4, "--prod", lab.ProdV4.String()}
		dropsBefore := rpFilterDrops(t, l.Shadow)
		runDoctor(t, l.Shadow, viaBack...).expect(t, 1, map[string][]string{
			"FAIL rp_filter " + pool4: {"arrive on eth0", "leaves by eth1", "fix: sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.eth0.rp_filter=2"},
		})
		// The kernel agrees: the probe's forged SYN is dropped by rp_filter.
		runDoctor(t, l.Prod, probe4...).expect(t, 1, map[string][]string{"FAIL probe " + target4: {"no reply"}})
		if after := rpFilterDrops(t, l.Shadow); after <= dropsBefore {
			t.Errorf("shadow's IPReversePathFilter drops %d → %d: the probe's SYN was not dropped by rp_filter", dropsBefore, after)
		}
		// Loose mode fixes it, and nothing else is reported in this topology.
		mustSysctl(t, l.Shadow, "net.ipv4.conf.all.rp_filter", "2")
		runDoctor(t, l.Shadow, viaBack...).expect(t, 0, nil)
	})

	t.Run("ProdGRO", func(t *testing.T) {
		mustRun(t, l.Prod, "ethtool", "-K", lab.ProdClientLink, "gro", "on")
		t.Cleanup(func() { mustRun(t, l.Prod, "ethtool", "-K", lab.ProdClientLink, "gro", "off") })
		runDoctor(t, l.Prod, prod...).expect(t, 0, map[string][]string{
			"warn offload " + lab.ProdClientLink: {"GRO on", "fix: ethtool -K eth0 gro off lro off"},
		})
	})

	t.Run("AgentStopped", func(t *testing.T) {
		if err := e.agent.Stop(5 * time.Second); err != nil && !strings.Contains(err.Error(), "signal") {
			t.Fatal(err)
		}
		runDoctor(t, l.Prod, probe4...).expect(t, 1, map[string][]string{
			"FAIL agent " + agentAddr: {"agent unreachable", "connection refused"},
			"FAIL probe " + target4:   {"agent unreachable", "connection refused"},
		})
		runDoctor(t, l.Assist, assist...).expect(t, 0, map[string][]string{
			"warn agent_listen :" + agentPort: {"nothing listens"},
		})
	})

	t.Run("WrongSecret", func(t *testing.T) {
		dir := t.TempDir()
		secret := func(name, s string) string {
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}
		right := secret("right", "the-agent-secret-0123456789")
		wrong := secret("wrong", "another-secret-0123456789")
		agent, err := l.Assist.Start(context.Background(), binPath, "intercept", "--iface", lab.HostLink,
			"--filter", "tcp and src port 80", "--listen", agentAddr, "--secret-file", right, "--stats-interval", "0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = agent.Stop(5 * time.Second) })
		e.waitListening(l.Prod, agentAddr)
		runDoctor(t, l.Prod, prodNoSecret...).expect(t, 1, map[string][]string{
			"FAIL agent " + agentAddr: {"agent refused: auth", "requires authentication", "--secret-file"},
		})
		runDoctor(t, l.Prod, append(slices.Clone(prodNoSecret), "--secret-file", wrong)...).expect(t, 1, map[string][]string{
			"FAIL agent " + agentAddr: {"agent refused: auth: wrong secret"},
		})
		d := runDoctor(t, l.Prod, append(slices.Clone(probe4), "--secret-file", right)...)
		d.expect(t, 0, nil)
		if line := d.line("probe " + target4); !strings.Contains(line, "SYN-ACK") {
			t.Errorf("authenticated probe: %q", line)
		}
	})
	t.Logf("TestDoctor took %v", time.Since(start).Round(time.Millisecond))
}

// shadowPoolSockets lists the shadow's TCP sockets (any state) whose peer
// is in the IPv4 or IPv6 pool.
func shadowPoolSockets(t *testing.T, l *lab.Lab) []string {
	t.Helper()
	out, err := l.Shadow.Run(context.Background(), "ss", "-Htan")
	if err != nil {
		t.Fatal(err)
	}
	var socks []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "198.19.") || strings.Contains(line, "2001:2:0:ff:") {
			socks = append(socks, line)
		}
	}
	return socks
}

// rpFilterDrops reads the namespace's count of packets dropped by
// reverse-path filtering (TcpExt IPReversePathFilter in /proc/net/netstat).
func rpFilterDrops(t *testing.T, ns *lab.NS) int {
	t.Helper()
	out, err := ns.Run(context.Background(), "cat", "/proc/net/netstat")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(out), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != "TcpExt:" || len(values) != len(names) {
			continue
		}
		for j, n := range names {
			if n == "IPReversePathFilter" {
				v, _ := strconv.Atoi(values[j])
				return v
			}
		}
	}
	t.Fatal("no TcpExt IPReversePathFilter in /proc/net/netstat")
	return 0
}
