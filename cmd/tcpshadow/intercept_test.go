package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// interceptOptionsFrom parses args with the intercept command's flags.
func interceptOptionsFrom(t testing.TB, args ...string) *interceptOptions {
	t.Helper()
	o := &interceptOptions{}
	parseFlags(t, newInterceptCmdWith(&globalOptions{}, o), args)
	return o
}

func TestInterceptConfigDefaults(t *testing.T) {
	cfg, err := interceptOptionsFrom(t, "-i", "eth0", "--name", "assist1", "--insecure-no-auth").config()
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Capture
	if c.Interface != "eth0" || c.Filter != "" || c.BufferSize != 32<<20 || c.SnapLen != 512 || !c.InboundOnly {
		t.Errorf("capture config %+v", c)
	}
	if f := cfg.CaptureConfig().Filter; f != "tcp and not (dst port 36524)" {
		t.Errorf("derived filter %q", f)
	}
	a := cfg.Agent
	if a.Name != "assist1" || a.Secret != nil || !a.InsecureNoAuth || a.Allow != nil || a.FlushDelay != 200*time.Microsecond ||
		a.MaxFlows != 1<<20 || a.MaxPeerFlows != 1<<18 || a.MaxHandshakes != 64 || a.MaxConnsPerAddr != 16 {
		t.Errorf("agent config %+v", a)
	}
	if cfg.MaxMemory != 1<<30 {
		t.Errorf("max memory %d", cfg.MaxMemory)
	}
	if cfg.MaxCPU != max(1, runtime.NumCPU()/2) {
		t.Errorf("max CPU %d, want half the host's", cfg.MaxCPU)
	}
	if cfg.Listen != ":36524" || cfg.MetricsAddr != "" || cfg.StatsInterval != 30*time.Second {
		t.Errorf("listen %q, metrics %q, stats interval %v", cfg.Listen, cfg.MetricsAddr, cfg.StatsInterval)
	}
}

func TestInterceptConfigFlags(t *testing.T) {
	secret := writeSecret(t, "0123456789abcdef\n")
	cfg, err := interceptOptionsFrom(t, "--iface", "eth1", "--filter", "tcp and src port 80",
		"-l", "198.18.1.3:4000", "--secret-file", secret,
		"--allow", "198.18.1.1,2001:2:0:1::1", "--allow", "198.18.0.0/24", "--allow", "::ffff:198.18.1.9",
		"--flush-delay", "1s", "--max-flows", "1", "--metrics", "198.18.1.3:9464", "--stats-interval", "0",
		"--capture-buffer-mb", "4096", "--max-cpu", "3", "--max-memory", "256MiB",
		"--max-peer-flows", "9", "--max-handshakes", "8", "--max-conns-per-addr", "2",
	).config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Capture.Interface != "eth1" || cfg.Capture.Filter != "tcp and src port 80" || cfg.Capture.BufferSize != 4096<<20 {
		t.Errorf("capture config %+v", cfg.Capture)
	}
	wantAllow := []netip.Prefix{
		netip.MustParsePrefix("198.18.1.1/32"),
		netip.MustParsePrefix("2001:2:0:1::1/128"),
		netip.MustParsePrefix("198.18.0.0/24"),
		netip.MustParsePrefix("198.18.1.9/32"), // unmapped
	}
	a := cfg.Agent
	if !slices.Equal(a.Allow, wantAllow) {
		t.Errorf("allow %v, want %v", a.Allow, wantAllow)
	}
	if string(a.Secret) != "0123456789abcdef" || a.FlushDelay != time.Second || a.MaxFlows != 1 {
		t.Errorf("agent config %+v", a)
	}
	if cfg.MaxCPU != 3 || cfg.MaxMemory != 256<<20 || a.MaxPeerFlows != 9 || a.MaxHandshakes != 8 || a.MaxConnsPerAddr != 2 {
		t.Errorf("--max-cpu 3 --max-memory 256MiB: %d CPUs, %d bytes, %+v", cfg.MaxCPU, cfg.MaxMemory, a)
	}
	if cfg.Listen != "198.18.1.3:4000" || cfg.MetricsAddr != "198.18.1.3:9464" || cfg.StatsInterval != 0 {
		t.Errorf("listen %q, metrics %q, stats interval %v", cfg.Listen, cfg.MetricsAddr, cfg.StatsInterval)
	}
	for _, l := range []string{"[2001:2:0:1::3]:36524", "0.0.0.0:1"} {
		if _, err := interceptOptionsFrom(t, "-i", "eth0", "--insecure-no-auth", "--listen", l).config(); err != nil {
			t.Errorf("--listen %s: %v", l, err)
		}
	}
}

func TestInterceptConfigErrorsNameTheFlag(t *testing.T) {
	with := func(args ...string) []string { return append([]string{"--iface", "eth0"}, args...) }
	tests := []struct {
		args []string
		flag string
	}{
		{[]string{"--filter", "tcp"}, "--iface"},
		{with(), "--secret-file is required"},
		{with(), "--insecure-no-auth"},
		{with("--insecure-no-auth", "--secret-file", writeSecret(t, "0123456789abcdef\n")), "choose one"},
		{with("--secret-file", writeSecretMode(t, "0123456789abcdef\n", 0o640)), "chmod 600"},
		{with("--secret-file", writeSecret(t, "a 0123456789abcdef\nb short\n")), "shorter than 16"},
		{with("--secret-file", writeSecret(t, "a 0123456789abcdef\nb c d\n")), "NAME SECRET"},
		{with("--secret-file", writeSecret(t, "a 0123456789abcdef\na 0123456789abcdef\n")), "given twice"},
		{with("--insecure-no-auth", "--max-memory", "1MiB"), "--max-memory"},
		{with("--insecure-no-auth", "--max-memory", "lots"), "--max-memory"},
		{with("--insecure-no-auth", "--max-handshakes", "0"), "--max-handshakes"},
		{with("--insecure-no-auth", "--max-conns-per-addr", "0"), "--max-conns-per-addr"},
		{with("--insecure-no-auth", "--max-peer-flows", "0"), "--max-peer-flows"},
		{with("--insecure-no-auth", "--debug-pprof", "--metrics", "198.18.1.3:9464"), "--debug-pprof"},
		{with("--listen", "198.18.1.3"), "--listen"},
		{with("--listen", ""), "--listen"},
		{with("--listen", "2001:2:0:1::3:36524"), "--listen"},
		{with("--listen", "198.18.1.3:"), "--listen"},
		{with("--listen", "198.18.1.3:0"), "--listen"},
		{with("--listen", "198.18.1.3:65536"), "--listen"},
		{with("--listen", "198.18.1.3:agent"), "--listen"},
		{with("--allow", "copy-daemon"), "--allow"},
		{with("--allow", "198.18.1.0/33"), "--allow"},
		{with("--allow", "198.18.1.1,"), "--allow"},
		{with("--flush-delay", "0s"), "--flush-delay"},
		{with("--tls-cert", "/nonexistent/cert.pem"), "--tls-cert"},
		{with("--tls-key", "/nonexistent/key.pem"), "--tls-key"},
		{with("--max-cpu", "0"), "--max-cpu 0"},
		{with("--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"), "--tls-cert"},
		{with("--flush-delay", "-1ms"), "--flush-delay"},
		{with("--flush-delay", "1001ms"), "--flush-delay"},
		{with("--max-flows", "0"), "--max-flows"},
		{with("--stats-interval", "-1s"), "--stats-interval"},
		{with("--capture-buffer-mb", "0"), "--capture-buffer-mb"},
		{with("--capture-buffer-mb", "4097"), "--capture-buffer-mb"},
		{with("--secret-file", "/nonexistent/tcpshadow-secret"), "--secret-file"},
		{with("--secret-file", writeSecret(t, "0123456789abcde")), "--secret-file"}, // 15 bytes
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			cfg, err := interceptOptionsFrom(t, tt.args...).config()
			if err == nil {
				t.Fatalf("accepted: %+v", cfg)
			}
			if !strings.Contains(err.Error(), tt.flag) {
				t.Fatalf("error %q does not name %s", err, tt.flag)
			}
		})
	}
}

// TestInterceptSecretFiles: one line is the shared secret, several lines
// NAME SECRET one per copy daemon (comments and blank lines aside).
func TestInterceptSecretFiles(t *testing.T) {
	cfg, err := interceptOptionsFrom(t, "-i", "eth0", "--secret-file",
		writeSecret(t, "# per copy daemon\nprod-1  0123456789abcdef-1\n\nprod-2\t0123456789abcdef-2\n")).config()
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.Agent
	if a.Secret != nil || len(a.Secrets) != 2 || string(a.Secrets["prod-1"]) != "0123456789abcdef-1" || string(a.Secrets["prod-2"]) != "0123456789abcdef-2" {
		t.Fatalf("secrets %q, shared %q", a.Secrets, a.Secret)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", filepath.Dir(writeSecretMode(t, "0123456789abcdef\n", 0o440)))
	cred := filepath.Join(os.Getenv("CREDENTIALS_DIRECTORY"), "secret")
	if _, err := interceptOptionsFrom(t, "-i", "eth0", "--secret-file", cred).config(); err != nil {
		t.Fatalf("a credential systemd passes with its group bits: %v", err)
	}
}
