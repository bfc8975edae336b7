package e2e

import (
	"bufio"
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The systemd units in scripts/systemd and `make install`. These tests need
// neither root nor the lab.

// repoRoot is the module root, two levels above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "Makefile")); err != nil {
		t.Fatalf("repository root: %v", err)
	}
	return root
}

// unitFile is a parsed unit: section → key → values in order (a key may
// be given several times).
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" || strings.HasSuffix(line, `\`) {
				t.Fatalf("%s:%d: not KEY=VALUE in a section (continuation lines unsupported): %q", path, n, line)
			}
			k = strings.TrimSpace(k)
			u[section][k] = append(u[section][k], strings.TrimSpace(v))
		}
	}
	return u
}

// one returns the single value of key in section.
func (u unitFile) one(t *testing.T, section, key string) string {
	t.Helper()
	vs := u[section][key]
	if len(vs) != 1 {
		t.Fatalf("[%s] %s: %d values %q, want one", section, key, len(vs), vs)
	}
	return vs[0]
}

// sourceUnits lists the unit files in scripts/systemd.
func sourceUnits(t *testing.T) []string {
	t.Helper()
	units, err := filepath.Glob(filepath.Join(repoRoot(t), "scripts", "systemd", "*.service"))
	if err != nil || len(units) == 0 {
		t.Fatalf("no units in scripts/systemd: %v", err)
	}
	return units
}

// makeInstall runs `make install` with vars into a fresh DESTDIR and
// returns it. The binary is built into a temporary BIN so that the
// checkout's bin/ is left alone.
func makeInstall(t *testing.T, vars ...string) string {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skipf("make not installed: %v", err)
	}
	dest := t.TempDir()
	runMake(t, append([]string{"install", "DESTDIR=" + dest, "BIN=" + filepath.Join(t.TempDir(), "tcpshadow")}, vars...)...)
	return dest
}

func runMake(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", append([]string{"-C", repoRoot(t)}, args...)...)
	// Under `make test` the outer make's jobserver and flags must not leak
	// into this one.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "MAKEFLAGS" && k != "MFLAGS" && k != "MAKELEVEL" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// tree lists the regular files under dir as "mode path".
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		files = append(files, fi.Mode().String()+" /"+rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(files)
	return files
}

// TestMakeInstall installs into a DESTDIR for several PREFIX/UNITDIR
// choices and checks the exact file tree and modes, that every unit's
// ExecStart runs the installed binary with the unit's subcommand and flags
// that subcommand has, that no other path of the default PREFIX is left,
// and that `make uninstall` removes every file again.
func TestMakeInstall(t *testing.T) {
	root := repoRoot(t)
	example := filepath.Join(root, "scripts", "tcpshadow.example.toml")
	_, err := os.Stat(example)
	haveExample := err == nil
	if !haveExample {
		t.Logf("%s absent: no example config expected", example)
	}
	for _, tc := range []struct {
		name      string
		vars      []string
		bin       string // installed binary path
		unitDir   string
		sysctlDir string
	}{
		{"PrefixUsr", []string{"PREFIX=/usr"}, "/usr/bin/tcpshadow", "/usr/lib/systemd/system", "/usr/lib/sysctl.d"},
		{"DefaultPrefix", nil, "/usr/local/bin/tcpshadow", "/usr/local/lib/systemd/system", "/usr/local/lib/sysctl.d"},
		{"OptWithUnitdir", []string{"PREFIX=/opt/tcpshadow", "UNITDIR=/etc/systemd/system", "SYSCTLDIR=/etc/sysctl.d"},
			"/opt/tcpshadow/bin/tcpshadow", "/etc/systemd/system", "/etc/sysctl.d"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dest := makeInstall(t, tc.vars...)
			want := []string{"-rwxr-xr-x " + tc.bin, "-rw-r--r-- " + tc.sysctlDir + "/60-tcpshadow.conf"}
			for _, u := range sourceUnits(t) {
				want = append(want, "-rw-r--r-- "+tc.unitDir+"/"+filepath.Base(u))
			}
			if haveExample {
				want = append(want, "-rw-r--r-- /etc/tcpshadow/tcpshadow.toml.example")
			}
			slices.Sort(want)
			if got := tree(t, dest); !slices.Equal(got, want) {
				t.Fatalf("installed files:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}

			for _, src := range sourceUnits(t) {
				name := filepath.Base(src)
				path := filepath.Join(dest, tc.unitDir, name)
				u := parseUnit(t, path)
				cmdline := strings.Fields(u.one(t, "Service", "ExecStart"))
				sub := strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(name, "tcpshadow-"), ".service"), "@")
				if len(cmdline) < 2 || cmdline[0] != tc.bin || cmdline[1] != sub {
					t.Errorf("%s: ExecStart %q, want %s %s ...", name, cmdline, tc.bin, sub)
				}
				b, _ := os.ReadFile(path)
				if tc.bin != "/usr/local/bin/tcpshadow" && bytes.Contains(b, []byte("/usr/local/bin")) {
					t.Errorf("%s still names /usr/local/bin", name)
				}
				// Every flag ExecStart passes exists in the installed binary.
				help, err := exec.Command(filepath.Join(dest, tc.bin), sub, "--help").CombinedOutput()
				if err != nil {
					t.Fatalf("%s %s --help: %v\n%s", tc.bin, sub, err, help)
				}
				for _, arg := range cmdline[2:] {
					if strings.HasPrefix(arg, "--") && !bytes.Contains(help, []byte(" "+arg+" ")) {
						t.Errorf("%s: ExecStart passes %s, which `tcpshadow %s --help` does not list", name, arg, sub)
					}
				}
			}
			if haveExample {
				a, _ := os.ReadFile(example)
				b, _ := os.ReadFile(filepath.Join(dest, "etc/tcpshadow/tcpshadow.toml.example"))
				if !bytes.Equal(a, b) {
					t.Error("installed example config differs from scripts/tcpshadow.example.toml")
				}
			}
			if out, err := exec.Command(filepath.Join(dest, tc.bin), "version").CombinedOutput(); err != nil {
				t.Errorf("installed binary: %v: %s", err, out)
			}

			runMake(t, append([]string{"uninstall", "DESTDIR=" + dest}, tc.vars...)...)
			if got := tree(t, dest); len(got) != 0 {
				t.Errorf("left after make uninstall:\n%s", strings.Join(got, "\n"))
			}
		})
	}
}

// TestUnitsAgree: the units share one sandbox. The template differs from
// tcpshadow-copy.service only in its instance's config and logs directory;
// the intercept unit only in its command, its capabilities and its OOM
// preference. A hardening line added to one unit and forgotten in another
// fails here.
func TestUnitsAgree(t *testing.T) {
	dir := filepath.Join(repoRoot(t), "scripts", "systemd")
	copyU := parseUnit(t, filepath.Join(dir, "tcpshadow-copy.service"))
	for _, tc := range []struct {
		unit string
		may  []string // [Service] keys allowed to differ
	}{
		{"tcpshadow-copy@.service", []string{"ExecStart", "LogsDirectory", "User"}},
		{"tcpshadow-intercept.service", []string{"ExecStart", "AmbientCapabilities", "CapabilityBoundingSet", "OOMScoreAdjust"}},
	} {
		u := parseUnit(t, filepath.Join(dir, tc.unit))
		for _, section := range []string{"Unit", "Service", "Install"} {
			keys := map[string]bool{}
			for k := range copyU[section] {
				keys[k] = true
			}
			for k := range u[section] {
				keys[k] = true
			}
			for k := range keys {
				if k == "Description" || section == "Service" && slices.Contains(tc.may, k) {
					continue
				}
				if a, b := copyU[section][k], u[section][k]; !slices.Equal(a, b) {
					t.Errorf("%s [%s] %s = %q, tcpshadow-copy.service has %q", tc.unit, section, k, b, a)
				}
			}
		}
	}
}

// TestUnitsVerify runs `systemd-analyze verify` on the installed units
// (PREFIX=/usr), the template both as is and instantiated. verify resolves
// ExecStart on this host, so the checked copies point ExecStart at the
// binary installed in DESTDIR (TestMakeInstall checks the real path).
// verify exits 0 on unknown keys and bad values, so any message naming
// one of our units fails the test. It also logs `systemd-analyze security`
// and fails if systemd rates a unit worse than "OK".
func TestUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skipf("systemd-analyze not installed (package systemd): %v", err)
	}
	dest := makeInstall(t, "PREFIX=/usr")
	check := t.TempDir()
	var paths []string
	for _, src := range sourceUnits(t) {
		name := filepath.Base(src)
		b, err := os.ReadFile(filepath.Join(dest, "usr/lib/systemd/system", name))
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.ReplaceAll(b, []byte("=/usr/bin/tcpshadow "), []byte("="+filepath.Join(dest, "usr/bin/tcpshadow")+" "))
		p := filepath.Join(check, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
		if strings.HasSuffix(name, "@.service") {
			// An instance, so that %i is expanded and checked too.
			paths = append(paths, filepath.Join(check, strings.TrimSuffix(name, ".service")+"test.service"))
		}
	}
	run := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, analyze, args...)
		cmd.Dir = check
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("systemd-analyze %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	out := run(append([]string{"verify"}, paths...)...)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.Contains(line, "tcpshadow") {
			t.Errorf("systemd-analyze verify: %s", line)
		} else if line != "" {
			t.Logf("systemd-analyze verify (not about our units): %s", line)
		}
	}

	for _, name := range []string{"tcpshadow-copy.service", "tcpshadow-intercept.service"} {
		out := run("security", "--offline=yes", name)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		last := lines[len(lines)-1]
		t.Logf("systemd-analyze security %s", last)
		var level string
		if i := strings.Index(last, name+": "); i >= 0 {
			if f := strings.Fields(last[i+len(name)+2:]); len(f) >= 2 {
				level = f[1]
			}
		}
		if level != "OK" && level != "SAFE" {
			t.Errorf("%s rated %q by systemd-analyze security, want OK or SAFE:\n%s", name, level, out)
		}
	}
}

// TestUnitsHarden: every unit bounds its memory, tasks and CPU share,
// denies IP traffic but to the addresses it lists, has a watchdog the
// daemons pet, and grants no CAP_NET_ADMIN (the sysctl.d file raises
// wmem_max instead); each template instance runs as a user of its own;
// the sysctl file raises what the raw sockets ask for.
func TestUnitsHarden(t *testing.T) {
	for _, src := range sourceUnits(t) {
		name := filepath.Base(src)
		u := parseUnit(t, src)
		for _, key := range []string{"MemoryHigh", "MemoryMax", "TasksMax", "CPUWeight", "WatchdogSec"} {
			if v := u.one(t, "Service", key); v == "" || v == "infinity" {
				t.Errorf("%s: %s=%q", name, key, v)
			}
		}
		if v := u.one(t, "Service", "IPAddressDeny"); v != "any" {
			t.Errorf("%s: IPAddressDeny=%q, want any", name, v)
		}
		if allow := u["Service"]["IPAddressAllow"]; !slices.Contains(allow, "localhost") || len(allow) < 2 {
			t.Errorf("%s: IPAddressAllow %q, want localhost and the hosts", name, allow)
		}
		for _, key := range []string{"AmbientCapabilities", "CapabilityBoundingSet"} {
			if strings.Contains(u.one(t, "Service", key), "CAP_NET_ADMIN") {
				t.Errorf("%s: %s grants CAP_NET_ADMIN", name, key)
			}
		}
		if strings.HasSuffix(name, "@.service") && !strings.Contains(u.one(t, "Service", "User"), "%i") {
			t.Errorf("%s: User=%q is shared by every instance", name, u.one(t, "Service", "User"))
		}
	}
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "scripts", "sysctl.d", "60-tcpshadow.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "net.core.wmem_max = 4194304") {
		t.Errorf("sysctl.d file does not raise net.core.wmem_max to the raw sockets' 4 MiB:\n%s", b)
	}
}
