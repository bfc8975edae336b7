package e2e

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// capBits maps the capability names the units may grant to their bits.
var capBits = map[string]uint{
	"CAP_NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE,
	"CAP_NET_ADMIN":        unix.CAP_NET_ADMIN,
	"CAP_NET_RAW":          unix.CAP_NET_RAW,
}

// unitCaps returns the capabilities a unit grants its daemon: its
// AmbientCapabilities=, which must equal its CapabilityBoundingSet=.
func unitCaps(t *testing.T, unit string) []string {
	t.Helper()
	u := parseUnit(t, filepath.Join(repoRoot(t), "scripts", "systemd", unit))
	amb := strings.Fields(u.one(t, "Service", "AmbientCapabilities"))
	bnd := strings.Fields(u.one(t, "Service", "CapabilityBoundingSet"))
	slices.Sort(amb)
	slices.Sort(bnd)
	if !slices.Equal(amb, bnd) || len(amb) == 0 {
		t.Fatalf("%s: AmbientCapabilities %q and CapabilityBoundingSet %q differ", unit, amb, bnd)
	}
	for _, c := range amb {
		if _, ok := capBits[c]; !ok {
			t.Fatalf("%s grants %s: add it to capBits", unit, c)
		}
	}
	return amb
}

// unprivileged returns the command prefix that runs a program as the
// units run it, minus systemd: user and group nobody without
// supplementary groups, exactly caps (inheritable, ambient and bounding
// sets), no_new_privs, and RLIMIT_MEMLOCK 0 (the units set no
// LimitMEMLOCK=; 0 is stricter than systemd's default of 8 MiB).
func unprivileged(caps []string) []string {
	var set []string
	for _, c := range caps {
		set = append(set, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	s := "-all," + strings.Join(set, ",")
	return []string{"prlimit", "--memlock=0:0", "--",
		"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--no-new-privs",
		"--inh-caps=" + s, "--ambient-caps=" + s, "--bounding-set=" + s, "--"}
}

// worldExecutable copies the binary into a 0755 directory: TestMain builds
// it in a 0700 one that user nobody cannot enter.
func worldExecutable(t *testing.T, bin string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tcpshadow-caps-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst := filepath.Join(dir, "tcpshadow")
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(f, src); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// checkRunsAs reads /proc/PID/status and limits and fails unless the
// process is tcpshadow running as nobody with exactly caps in its
// effective, permitted, ambient and bounding sets, no_new_privs, and
// RLIMIT_MEMLOCK 0: so the test cannot pass by running as root.
func checkRunsAs(t *testing.T, what string, pid int, caps []string) {
	t.Helper()
	var want uint64
	for _, c := range caps {
		want |= 1 << capBits[c]
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	status := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			status[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	wantStatus := map[string]string{
		"Name":       "tcpshadow",
		"Uid":        "65534 65534 65534 65534",
		"Gid":        "65534 65534 65534 65534",
		"Groups":     "",
		"NoNewPrivs": "1",
	}
	for k, v := range wantStatus {
		if status[k] != v {
			t.Errorf("%s (pid %d): %s %q, want %q", what, pid, k, status[k], v)
		}
	}
	for _, k := range []string{"CapEff", "CapPrm", "CapAmb", "CapBnd"} {
		got, err := strconv.ParseUint(status[k], 16, 64)
		if err != nil || got != want {
			t.Errorf("%s (pid %d): %s %q, want %016x (%s)", what, pid, k, status[k], want, strings.Join(caps, " "))
		}
	}
	limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(limits), "\n") {
		if strings.HasPrefix(line, "Max locked memory") {
			if f := strings.Fields(line); len(f) < 5 || f[3] != "0" || f[4] != "0" {
				t.Errorf("%s (pid %d): %q, want RLIMIT_MEMLOCK 0", what, pid, line)
			}
		}
	}
}

// TestCapsOnly runs the agent and the copy daemon as their systemd units
// do, without root: as user nobody with only the capabilities each unit
// grants (read from scripts/systemd, so the test follows the units),
// no_new_privs and RLIMIT_MEMLOCK 0. It checks they really run that way,
// then that HTTP traffic over IPv4 and IPv6 is copied to the shadow in
// full (scenarios 1, 2, 4 and 7 by real stacks): capture (AF_PACKET), the
// raw senders of both families, the control channel and metrics all work
// with the units' privileges and without locked memory.
func TestCapsOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (lab, setpriv)")
	}
	for _, tool := range []string{"setpriv", "prlimit"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (util-linux): %v", tool, err)
		}
	}
	caps := map[string][]string{
		"copy":      unitCaps(t, "tcpshadow-copy.service"),
		"intercept": unitCaps(t, "tcpshadow-intercept.service"),
	}
	t.Logf("capabilities: copy %v, intercept %v", caps["copy"], caps["intercept"])
	e := newEnv(t, envOptions{
		bin:       worldExecutable(t, binPath),
		prefix:    func(sub string) []string { return unprivileged(caps[sub]) },
		secretUID: 65534, // the daemons' user reads it, as from systemd's credentials
	})
	checkRunsAs(t, "agent", e.agent.PID(), caps["intercept"])
	checkRunsAs(t, "copy daemon", e.copier.PID(), caps["copy"])
	if t.Failed() {
		t.FailNow()
	}

	v4 := netip.AddrPortFrom(lab.ProdClientSideV4, 80).String()
	v6 := netip.AddrPortFrom(lab.ProdClientSideV6, 80).String()
	keepAlive(t, e.lab, v4, "/caps/v4", 4, 25)
	keepAlive(t, e.lab, v6, "/caps/v6", 4, 25)
	e.checkCopied(t, "/caps/", 200)
	e.drained(t, 30*time.Second)
	if n := e.shadowLeaks(); n != 0 {
		t.Fatalf("%d shadow packets reached the client", n)
	}
}
