package main

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/tcpshadow/tcpshadow/internal/conffile"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

const examplePath = "../../scripts/tcpshadow.example.toml"

// writeConfig writes a config file in a test directory.
func writeConfig(t testing.TB, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tcpshadow.toml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// exampleConfig returns a copy of the shipped example whose secret_file
// keys name a secret in a test directory: the example's own,
// /etc/tcpshadow/secret, is the host's.
func exampleConfig(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	const want = `secret_file = "/etc/tcpshadow/secret"`
	if strings.Count(string(b), want) != 2 {
		t.Fatalf("the example does not set %s in both tables", want)
	}
	secret := writeSecret(t, "0123456789abcdef-example\n")
	return writeConfig(t, strings.ReplaceAll(string(b), want, `secret_file = "`+secret+`"`))
}

// fields normalises the alignment of config check's output.
func fields(s string) string { return strings.Join(strings.Fields(s), " ") }

// TestExampleConfig checks the shipped example validates for both daemons
// and sets every key there is, so it documents them all.
func TestExampleConfig(t *testing.T) {
	var out bytes.Buffer
	if err := configCheck(exampleConfig(t), nil, &out); err != nil {
		t.Fatalf("config check %s: %v", examplePath, err)
	}
	f, err := conffile.Load(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	for _, table := range fileTables {
		cmd, _, _ := daemonCmd(table)
		from, err := applyFile(f, cmd.Flags(), table)
		if err != nil {
			t.Fatal(err)
		}
		for _, flag := range append(slices.Clone(topLevelFlags), tableFlags(table)...) {
			if _, ok := from.keys[flag]; !ok {
				t.Errorf("the example does not set %s", conffile.KeyName(table, flag))
			}
		}
	}
	if !strings.Contains(fields(out.String()), fields(`map = ["198.18.0.1:80-198.18.1.2:80", "[2001:2::1]:80-[2001:2:0:1::2]:80"]`)) {
		t.Errorf("output lacks the maps:\n%s", out.String())
	}
}

// TestEveryFlagHasAKey checks the file mirrors the daemons' flags: every
// flag has a key at the top or in its table, except --config and --help.
func TestEveryFlagHasAKey(t *testing.T) {
	for _, table := range fileTables {
		cmd, _, _ := daemonCmd(table)
		keys := tableFlags(table)
		cmd.Flags().VisitAll(func(f *pflag.Flag) {
			if !slices.Contains(keys, f.Name) && !slices.Contains(topLevelFlags, f.Name) && f.Name != "config" {
				t.Errorf("--%s of %s has no key in the config file", f.Name, table)
			}
		})
		for _, k := range []string{"config", "log-file", "log-level", "log-format"} {
			if slices.Contains(keys, k) {
				t.Errorf("[%s] takes %s, which belongs to the top level or the command line", table, k)
			}
		}
	}
}

// TestConfigCheckRoundTrip feeds config check's output back to it: the
// printed configuration is itself a valid file meaning the same, which
// checks every value type is printed as TOML the decoder takes back.
func TestConfigCheckRoundTrip(t *testing.T) {
	for _, src := range []string{exampleConfig(t), writeConfig(t, "[copy]\niface = \"eth0\"\nmap = [\"80-198.18.1.2\"]\nintercept = \"198.18.1.3\"\n[intercept]\niface = \"eth1\"\ninsecure_no_auth = true\n")} {
		var first, second bytes.Buffer
		if err := configCheck(src, nil, &first); err != nil {
			t.Fatal(err)
		}
		// Drop the first line, which names the file.
		_, body, _ := strings.Cut(first.String(), "\n")
		p := writeConfig(t, body)
		if err := configCheck(p, nil, &second); err != nil {
			t.Fatalf("config check of its own output: %v\n%s", err, body)
		}
		_, body2, _ := strings.Cut(second.String(), "\n")
		// Every key is now set by the file: only the "# default" marks differ.
		if fields(strings.ReplaceAll(body, "# default", "")) != fields(body2) {
			t.Errorf("round trip changed the configuration:\n%s\n---\n%s", body, body2)
		}
	}
}

func TestConfigCheckValid(t *testing.T) {
	tests := []struct {
		name string
		file string
		want []string // lines of the output, compared without alignment
		not  []string
	}{
		{
			name: "CopyOnlyDefaults",
			file: `[copy]
iface = "eth0"
map = ["80-198.18.1.2:80"]
intercept = "198.18.1.3"
`,
			want: []string{
				`log_level = "info" # default`,
				`[copy]`,
				`iface = "eth0"`,
				`workers = `, // the CPU count
				`linger = "2s" # default`,
				`dump_max_mb = 100 # default`,
				`# agent address 198.18.1.3:36524`,
				`# dump off`,
				`# capture filter tcp and ((dst port 80 and ip)) and not (dst host 198.18.1.2 and dst port 80)`,
			},
			not: []string{"[intercept]"},
		},
		{
			name: "InterceptOnly",
			file: `log_format = "json"
[intercept]
iface = "eth1"
insecure_no_auth = true
allow = ["198.18.0.1", "198.18.0.0/24"]
flush_delay = "1ms"
dump = "` + filepath.Join(os.TempDir(), "agent.pcap") + `"
dump_files = 3
`,
			want: []string{
				`log_format = "json"`,
				`[intercept]`,
				`flush_delay = "1ms"`,
				`allow = ["198.18.0.1", "198.18.0.0/24"]`,
				`# copy daemons allowed 198.18.0.1/32, 198.18.0.0/24`,
				`dump_files = 3`,
				`, rotated at 100 MiB, 3 files kept`,
			},
			not: []string{"[copy]"},
		},
		{
			name: "BothTablesDurationsAndPools",
			file: `log_level = "debug"
[copy]
iface = "any"
map = ["198.18.0.1:80-198.18.1.2:8080", "[2001:2::1]:443-[2001:2:0:1::2]"]
intercept = "[2001:2:0:1::3]:4000"
client_pool = ["198.19.7.7/16"]
no_pacing = true
idle_timeout = "1m30s"
quiet_period = "500us"
pool_seed = 7
pool_slot = "1/4"
[intercept]
iface = "eth0"
secret_file = "` + writeSecret(t, "a 0123456789abcdef\nb 0123456789abcdeg\n") + `"
`,
			want: []string{
				`log_level = "debug"`,
				`no_pacing = true`,
				`idle_timeout = "1m30s"`,
				`quiet_period = "500us"`,
				`pool_seed = 7`,
				`# agent address [2001:2:0:1::3]:4000`,
				`# forged clients 198.19.0.0/16`,
				`pool_slot = "1/4"`,
				`# authentication a secret per copy daemon: a, b`,
				`# capture filter tcp and not (dst port 36524)`,
				`# copies 198.18.0.1:80 → 198.18.1.2:8080, [2001:2::1]:443 → [2001:2:0:1::2]:443`,
				`[intercept]`,
				`listen = ":36524" # default`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := configCheck(writeConfig(t, tt.file), nil, &out); err != nil {
				t.Fatal(err)
			}
			got := "\n" + fields(strings.ReplaceAll(out.String(), "\n", " \x00 ")) + "\n"
			for _, w := range tt.want {
				if !strings.Contains(got, fields(w)) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			for _, w := range tt.not {
				if strings.Contains(out.String(), w) {
					t.Errorf("output has %q:\n%s", w, out.String())
				}
			}
		})
	}
}

// copyFile is a valid [copy] table for invalid files to add to.
const copyFile = "[copy]\niface = \"eth0\"\nmap = [\"80-198.18.1.2:80\"]\nintercept = \"198.18.1.3\"\n"

func TestConfigCheckInvalid(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		file string
		want []string // in the error: the key, and what is allowed
	}{
		{"UnknownKey", copyFile + "workerz = 2\n", []string{"unknown key copy.workerz", "workers"}},
		{"UnknownTopKey", "workers = 2\n" + copyFile, []string{"unknown key workers", "log_format"}},
		{"UnknownTable", copyFile + "[shadow]\nx = 1\n", []string{"unknown table [shadow]", "[copy]"}},
		{"DashedKey", copyFile + "flush-delay = \"1ms\"\n", []string{"unknown key copy.flush-delay"}},
		{"KeyOfTheOtherTable", copyFile + "flush_delay = \"1ms\"\n", []string{"unknown key copy.flush_delay"}},
		{"ConfigKey", copyFile + "config = \"/etc/x\"\n", []string{"unknown key copy.config"}},
		{"LogKeyInTable", copyFile + "log_level = \"debug\"\n", []string{"unknown key copy.log_level"}},
		{"NoTable", "log_level = \"info\"\n", []string{"want a [copy] or an [intercept] table"}},
		{"Syntax", "[copy\n", []string{"line 2"}},
		{"DuplicateKey", copyFile + "workers = 1\nworkers = 2\n", []string{"copy.workers", "already been defined"}},
		{"IntAsString", copyFile + "workers = \"four\"\n", []string{"copy.workers", "want an integer", `"four"`}},
		{"BoolAsString", copyFile + "no_pacing = \"yes\"\n", []string{"copy.no_pacing", "want true or false"}},
		{"StringAsInt", copyFile + "filter = 80\n", []string{"copy.filter", "want a string"}},
		{"ListAsString", "[copy]\niface = \"eth0\"\nmap = \"80-198.18.1.2:80\"\nintercept = \"198.18.1.3\"\n", []string{"copy.map", "want an array of strings"}},
		{"ListElementType", "[copy]\niface = \"eth0\"\nmap = [\"80-198.18.1.2:80\", 81]\nintercept = \"198.18.1.3\"\n", []string{"copy.map[1]", "want a string"}},
		{"NegativeSeed", copyFile + "pool_seed = -1\n", []string{"copy.pool_seed", "from 0"}},
		{"FloatInt", copyFile + "mss = 1460.5\n", []string{"copy.mss", "want an integer"}},
		{"BadMap", "[copy]\niface = \"eth0\"\nmap = [\"80-198.18.1.2:80\", \"80\"]\nintercept = \"198.18.1.3\"\n", []string{"copy.map[1]", "want [LOCALADDR:]PORT-TARGETADDR:PORT"}},
		{"DuplicateMap", "[copy]\niface = \"eth0\"\nmap = [\"80-198.18.1.2:80\", \"80-198.18.1.2:80\"]\nintercept = \"198.18.1.3\"\n", []string{"copy.map"}},
		{"BadDuration", copyFile + "linger = \"5q\"\n", []string{"copy.linger", `"5q"`, "want a duration"}},
		{"DurationWithoutUnit", copyFile + "linger = 5\n", []string{"copy.linger", "duration string"}},
		{"NonPositiveDuration", copyFile + "linger = \"0s\"\n", []string{"copy.linger", "must be positive"}},
		{"FlushDelayRange", "[intercept]\niface = \"eth0\"\nflush_delay = \"2s\"\n", []string{"intercept.flush_delay", "want (0, 1s]"}},
		{"BadPrefix", copyFile + "client_pool = [\"198.19.0.0/33\"]\n", []string{"copy.client_pool[0]", "want a prefix"}},
		{"BadAllow", "[intercept]\niface = \"eth0\"\nallow = [\"198.18.0.1\", \"copy-daemon\"]\n", []string{"intercept.allow[1]", "want an address or a prefix"}},
		{"BadListen", "[intercept]\niface = \"eth0\"\nlisten = \"198.18.1.3\"\n", []string{"intercept.listen", "want [ADDR]:PORT"}},
		{"BadAgent", "[copy]\niface = \"eth0\"\nmap = [\"80-198.18.1.2:80\"]\nintercept = \"198.18.1.3:0\"\n", []string{"copy.intercept", "want 1..65535"}},
		{"WorkersRange", copyFile + "workers = 2000\n", []string{"copy.workers", "want 1..1024"}},
		{"MissingIface", "[copy]\nmap = [\"80-198.18.1.2:80\"]\nintercept = \"198.18.1.3\"\n", []string{"copy.iface", "required"}},
		{"MissingMap", "[copy]\niface = \"eth0\"\nintercept = \"198.18.1.3\"\n", []string{"copy.map", "required"}},
		{"BadLogLevel", "log_level = \"loud\"\n" + copyFile, []string{"log_level", "want debug, info, warn or error"}},
		{"BadLogFormat", "log_format = \"xml\"\n" + copyFile, []string{"log_format", "want text or json"}},
		{"LogFileDirMissing", "log_file = \"" + dir + "/none/x.log\"\n" + copyFile, []string{"log_file", "existing directory"}},
		{"DumpDirMissing", copyFile + "dump = \"" + dir + "/none/x.pcap\"\n", []string{"copy.dump", "existing directory"}},
		{"DumpNotRegular", copyFile + "dump = \"" + dir + "\"\n", []string{"copy.dump", "regular file"}},
		{"DumpMaxMB", "[intercept]\niface = \"eth0\"\ndump_max_mb = 0\n", []string{"intercept.dump_max_mb", "want 1..1048576"}},
		{"DumpFiles", "[intercept]\niface = \"eth0\"\ndump_files = 1001\n", []string{"intercept.dump_files", "want 1..1000"}},
		{"SecretMissing", copyFile + "secret_file = \"" + dir + "/none\"\n", []string{"copy.secret_file"}},
		// An invalid [intercept] fails the check even when [copy] is fine.
		{"OtherTableInvalid", copyFile + "[intercept]\niface = \"eth0\"\nmax_flows = 0\n", []string{"intercept.max_flows", "at least 1"}},
		{"OtherTableWrongType", copyFile + "[intercept]\niface = \"eth0\"\nmax_flows = \"many\"\n", []string{"intercept.max_flows", "want an integer"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := configCheck(writeConfig(t, tt.file), nil, &out)
			if err == nil {
				t.Fatalf("accepted:\n%s", out.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if out.Len() != 0 {
				t.Errorf("printed a configuration for an invalid file:\n%s", out.String())
			}
		})
	}
}

// TestConfigCheckCommand runs config check through the command tree: it
// succeeds on the example and fails, naming the key, on a bad file.
func TestConfigCheckCommand(t *testing.T) {
	out, _, err := execute(t, "config", "check", exampleConfig(t))
	if err != nil || !strings.Contains(out, "is valid") {
		t.Fatalf("config check of the example: %v\n%s", err, out)
	}
	_, _, err = execute(t, "config", "check", writeConfig(t, copyFile+"linger = \"soon\"\n"))
	if err == nil || !strings.Contains(err.Error(), "copy.linger") {
		t.Fatalf("config check of a bad file: error %v, want one naming copy.linger", err)
	}
	for _, args := range [][]string{{"config", "check"}, {"config", "check", "a", "b"}} {
		if _, _, err := execute(t, args...); err == nil {
			t.Errorf("%q succeeded", args)
		}
	}
	if _, _, err := execute(t, "config", "check", filepath.Join(t.TempDir(), "none.toml")); err == nil {
		t.Error("config check of a missing file succeeded")
	}
}

// daemonFromFile parses args with a daemon's flags, applies the config
// file as RunE does and returns the validated options.
func daemonFromFile(t testing.TB, table, path string, args ...string) (any, error) {
	t.Helper()
	cmd, g, opts := daemonCmd(table)
	f := parseFlags(t, cmd, args)
	from, err := applyConfigFile(f, table, path)
	if err != nil {
		return nil, err
	}
	if err := g.checkLog(from); err != nil {
		return nil, err
	}
	switch o := opts.(type) {
	case *copyOptions:
		o.from = from
		return o.config()
	case *interceptOptions:
		o.from = from
		return o.config()
	}
	panic("unreachable")
}

// TestFlagsOverrideFile checks a flag given on the command line wins over
// the file, the file wins over the defaults, and errors name whichever
// the bad value came from.
func TestFlagsOverrideFile(t *testing.T) {
	p := writeConfig(t, copyFile+"workers = 3\nlinger = \"7s\"\nclient_pool = [\"198.19.0.0/16\"]\n"+
		"[intercept]\niface = \"eth1\"\ninsecure_no_auth = true\nflush_delay = \"1ms\"\nallow = [\"198.18.0.1\"]\n")
	c, err := daemonFromFile(t, "copy", p, "--workers", "5", "--map", "81-198.18.1.2:8081")
	if err != nil {
		t.Fatal(err)
	}
	cfg := c.(*copyConfig)
	if cfg.Engine.Workers != 5 {
		t.Errorf("workers %d: want the flag's 5 over the file's 3", cfg.Engine.Workers)
	}
	if len(cfg.Engine.Maps) != 1 || cfg.Engine.Maps[0].Target.Port() != 8081 {
		t.Errorf("maps %v: want the flag's only, not merged with the file's", cfg.Engine.Maps)
	}
	if cfg.Engine.Linger != 7*time.Second || cfg.Engine.Pool == nil || cfg.Capture.Interface != "eth0" {
		t.Errorf("linger %v, pool %v, iface %q: want the file's", cfg.Engine.Linger, cfg.Engine.Pool, cfg.Capture.Interface)
	}
	if cfg.Engine.MSS != 1460 {
		t.Errorf("mss %d: want the default", cfg.Engine.MSS)
	}

	i, err := daemonFromFile(t, "intercept", p, "--allow", "198.18.0.2")
	if err != nil {
		t.Fatal(err)
	}
	icfg := i.(*interceptConfig)
	if icfg.Agent.FlushDelay != time.Millisecond || len(icfg.Agent.Allow) != 1 || icfg.Agent.Allow[0].Addr().String() != "198.18.0.2" {
		t.Errorf("flush delay %v, allow %v", icfg.Agent.FlushDelay, icfg.Agent.Allow)
	}

	// A bad value from the command line is named as the flag, one from the
	// file as the key.
	if _, err := daemonFromFile(t, "copy", p, "--workers", "-1"); err == nil || !strings.Contains(err.Error(), "--workers") {
		t.Errorf("bad flag over the file: error %v, want one naming --workers", err)
	}
	bad := writeConfig(t, copyFile+"workers = -1\n")
	if _, err := daemonFromFile(t, "copy", bad); err == nil || !strings.Contains(err.Error(), "copy.workers") {
		t.Errorf("bad file value: error %v, want one naming copy.workers", err)
	}
	if _, err := daemonFromFile(t, "copy", bad, "--workers", "2"); err != nil {
		t.Errorf("a good flag over a bad file value: %v", err)
	}
	if _, err := daemonFromFile(t, "copy", bad, "--log-level", "loud", "--workers", "2"); err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Errorf("bad --log-level: error %v, want one naming the flag", err)
	}

	// The daemon needs its own table.
	only := writeConfig(t, "[intercept]\niface = \"eth0\"\n")
	if _, err := daemonFromFile(t, "copy", only, "-i", "eth0", "-x", "80-198.18.1.2", "-s", "198.18.1.3"); err == nil || !strings.Contains(err.Error(), "no [copy] table") {
		t.Errorf("file without [copy]: error %v", err)
	}
}

// TestCLIConfigErrors runs the daemons with --config through the command
// tree: a bad file fails before anything is opened, naming the key.
func TestCLIConfigErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"copy", "--config", writeConfig(t, copyFile+"mss = 100\n")}, "copy.mss"},
		{[]string{"copy", "--config", writeConfig(t, copyFile+"mss = 100\n"), "--mss", "99"}, "--mss"},
		{[]string{"copy", "--config", writeConfig(t, copyFile+"[intercept]\nbogus = 1\n")}, "intercept.bogus"},
		// The root's --log-level, given before the subcommand, wins too.
		{[]string{"copy", "--config", writeConfig(t, "log_level = \"loud\"\n"+copyFile)}, "log_level"},
		{[]string{"--log-level", "debug", "copy", "--config", writeConfig(t, "log_level = \"loud\"\n"+copyFile+"workers = -1\n")}, "copy.workers"},
		{[]string{"copy", "--config", filepath.Join(dir, "none.toml")}, "config"},
		{[]string{"intercept", "--config", writeConfig(t, "[intercept]\niface = \"eth0\"\nflush_delay = \"0s\"\n")}, "intercept.flush_delay"},
		{[]string{"intercept", "--config", writeConfig(t, "log_file = 3\n[intercept]\niface = \"eth0\"\n")}, "log_file"},
		{[]string{"intercept", "-i", "eth0", "--log-file", dir + "/none/x.log"}, "--log-file"},
		{[]string{"intercept", "-i", "eth0", "--dump", dir + "/none/x.pcap"}, "--dump"},
		{[]string{"copy", "-i", "eth0", "-x", "80-198.18.1.2:80", "-s", "198.18.1.3", "--dump-files", "0"}, "--dump-files"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, _, err := execute(t, tt.args...)
			if err == nil {
				t.Fatal("succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not name %s", err, tt.want)
			}
		})
	}
}

// TestConfigCheckClient checks --client prints the address the copy
// daemon would forge: the pool's pure function of the client and the seed.
func TestConfigCheckClient(t *testing.T) {
	file := copyFile + "client_pool = [\"198.19.0.0/16\", \"2001:2:0:ff::/64\"]\npool_seed = 42\n"
	pool, err := rewrite.NewPool([]netip.Prefix{netip.MustParsePrefix("198.19.0.0/16"), netip.MustParsePrefix("2001:2:0:ff::/64")}, 42)
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := execute(t, "config", "check", writeConfig(t, file), "--client", "198.18.0.2", "--client", "2001:2::2,::ffff:198.18.0.3")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"198.18.0.2", "2001:2::2", "198.18.0.3"} {
		a := netip.MustParseAddr(c)
		want := fields("#   client " + c + " forged as " + pool.Map(a).String())
		if !strings.Contains(fields(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	out, _, err = execute(t, "config", "check", writeConfig(t, copyFile+"client_pool = [\"198.19.0.0/16\"]\n"), "--client", "2001:2::2")
	if err != nil || !strings.Contains(out, "not forged: no client_pool prefix of its family") {
		t.Errorf("IPv6 client, IPv4 pool: %v\n%s", err, out)
	}
	out, _, err = execute(t, "config", "check", writeConfig(t, copyFile), "--client", "198.18.0.2")
	if err != nil || !strings.Contains(out, "not forged: no client_pool") {
		t.Errorf("no pool: %v\n%s", err, out)
	}
	if _, _, err := execute(t, "config", "check", writeConfig(t, copyFile), "--client", "client.example"); err == nil || !strings.Contains(err.Error(), "--client") {
		t.Errorf("bad --client: %v", err)
	}
	if _, _, err := execute(t, "config", "check", writeConfig(t, "[intercept]\niface = \"eth0\"\n"), "--client", "198.18.0.2"); err == nil || !strings.Contains(err.Error(), "[copy]") {
		t.Errorf("--client without [copy]: %v", err)
	}
}
