package main

import (
	"bytes"
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/doctor"
	"github.com/tcpshadow/tcpshadow/internal/doctor/doctortest"
	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// doctorConfigFrom parses args with the doctor command's flags and
// validates them as the command would, without running anything.
func doctorConfigFrom(t testing.TB, args ...string) (*doctorConfig, error) {
	t.Helper()
	f := parseFlags(t, newDoctorCmd(&globalOptions{}), args)
	o := &doctorOptions{
		role:         flagValue(t, f.GetString, "role"),
		iface:        flagValue(t, f.GetString, "iface"),
		agent:        flagValue(t, f.GetString, "intercept"),
		secretFile:   flagValue(t, f.GetString, "secret-file"),
		tlsCA:        flagValue(t, f.GetString, "tls-ca"),
		tlsName:      flagValue(t, f.GetString, "tls-server-name"),
		probe:        flagValue(t, f.GetBool, "probe"),
		maps:         flagValue(t, f.GetStringSlice, "map"),
		pools:        flagValue(t, f.GetStringSlice, "client-pool"),
		probeTimeout: flagValue(t, f.GetDuration, "probe-timeout"),
		via:          flagValue(t, f.GetStringSlice, "via"),
		to:           flagValue(t, f.GetStringSlice, "to"),
		prod:         flagValue(t, f.GetString, "prod"),
		listen:       flagValue(t, f.GetString, "listen"),
		send:         flagValue(t, f.GetString, "send"),
		capture:      flagValue(t, f.GetString, "capture"),
		mirrorListen: flagValue(t, f.GetDuration, "mirror-listen"),
		local:        flagValue(t, f.GetBool, "local"),
		queueNum:     flagValue(t, f.GetInt, "queue-num"),
	}
	return o.config(f)
}

func TestDoctorConfig(t *testing.T) {
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	t.Run("Assist", func(t *testing.T) {
		cfg, err := doctorConfigFrom(t, "--role", "assist", "-i", "eth0", "--to", "198.19.0.0/16", "--to", "2001:2:0:ff::5/64")
		if err != nil {
			t.Fatal(err)
		}
		want := doctor.AssistConfig{Iface: "eth0", To: []netip.Prefix{pfx("198.19.0.0/16"), pfx("2001:2:0:ff::/64")}, ListenPort: 36524}
		if cfg.role != "assist" || cfg.assist.Iface != want.Iface || !slices.Equal(cfg.assist.To, want.To) || cfg.assist.ListenPort != want.ListenPort {
			t.Fatalf("assist config %+v, want %+v", cfg.assist, want)
		}
		cfg, err = doctorConfigFrom(t, "--role", "assist", "-i", "eth0", "--listen", "198.18.1.3:4000")
		if err != nil || cfg.assist.ListenPort != 4000 {
			t.Fatalf("--listen: port %d, %v", cfg.assist.ListenPort, err)
		}
	})
	t.Run("Shadow", func(t *testing.T) {
		cfg, err := doctorConfigFrom(t, "--role", "shadow", "--via", "198.18.1.3", "--via", "2001:2:0:1::3",
			"--to", "198.19.0.0/16", "--to", "2001:2:0:ff::/64", "--prod", "::ffff:198.18.1.1")
		if err != nil {
			t.Fatal(err)
		}
		sc := cfg.shadow
		if !slices.Equal(sc.Via, []netip.Addr{addr("198.18.1.3"), addr("2001:2:0:1::3")}) ||
			!slices.Equal(sc.To, []netip.Prefix{pfx("198.19.0.0/16"), pfx("2001:2:0:ff::/64")}) || sc.Prod != addr("198.18.1.1") {
			t.Fatalf("shadow config %+v", sc)
		}
	})
	t.Run("Prod", func(t *testing.T) {
		secret := writeSecret(t, "0123456789abcdef-secret\n")
		cfg, err := doctorConfigFrom(t, "--role", "prod", "-i", "eth0", "-s", "198.18.1.3", "--secret-file", secret)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.agentAddr != "198.18.1.3:36524" || string(cfg.secret) != "0123456789abcdef-secret" || len(cfg.probes) != 0 ||
			cfg.prod.Iface != "eth0" || cfg.prod.Agent != "198.18.1.3:36524" || !strings.HasPrefix(cfg.name, "doctor@") {
			t.Fatalf("prod config %+v", cfg)
		}
		cfg, err = doctorConfigFrom(t, "--role", "prod", "-i", "eth0", "-s", "[2001:2:0:1::3]:4000", "--probe",
			"-x", "80-198.18.1.2:8080", "-x", "[2001:2::1]:80-[2001:2:0:1::2]:80", "-c", "198.19.0.0/16", "-c", "2001:2:0:ff::/64",
			"--probe-timeout", "5s")
		if err != nil {
			t.Fatal(err)
		}
		wantMaps := []tcpstate.Map{
			{Local: netip.AddrPortFrom(netip.Addr{}, 80), Target: netip.MustParseAddrPort("198.18.1.2:8080")},
			{Local: netip.MustParseAddrPort("[2001:2::1]:80"), Target: netip.MustParseAddrPort("[2001:2:0:1::2]:80")},
		}
		if cfg.agentAddr != "[2001:2:0:1::3]:4000" || !slices.Equal(cfg.probes, wantMaps) || len(cfg.pool) != 2 || cfg.probeTimeout != 5*time.Second {
			t.Fatalf("prod --probe config %+v", cfg)
		}
		// Maps without --probe are validated and then left alone.
		cfg, err = doctorConfigFrom(t, "--role", "prod", "-i", "eth0", "-s", "198.18.1.3", "-x", "80-198.18.1.2:80")
		if err != nil || len(cfg.probes) != 0 {
			t.Fatalf("--map without --probe: %v probes, %v", len(cfg.probes), err)
		}
	})
}

func TestDoctorConfigErrorsNameTheFlag(t *testing.T) {
	short := writeSecret(t, "short")
	prod := []string{"--role", "prod", "--iface", "eth0", "--intercept", "198.18.1.3"}
	probe := append(slices.Clone(prod), "--probe", "--map", "80-198.18.1.2:80")
	shadow := []string{"--role", "shadow", "--via", "198.18.1.3", "--to", "198.19.0.0/16"}
	tests := []struct {
		args []string
		want string
	}{
		{nil, "--role is required"},
		{[]string{"--role", "db"}, `--role "db"`},
		{[]string{"--role", "assist"}, "--iface is required"},
		{[]string{"--role", "assist", "-i", "eth0", "--listen", "198.18.1.3"}, `--listen "198.18.1.3"`},
		{[]string{"--role", "assist", "-i", "eth0", "--listen", ":0"}, `--listen ":0"`},
		{[]string{"--role", "assist", "-i", "eth0", "--to", "198.19.0.0"}, `--to "198.19.0.0"`},
		{[]string{"--role", "shadow", "--to", "198.19.0.0/16"}, "--via is required"},
		{[]string{"--role", "shadow", "--via", "assist", "--to", "198.19.0.0/16"}, `--via "assist"`},
		{[]string{"--role", "shadow", "--via", "198.18.1.3", "--via", "198.18.3.3", "--to", "198.19.0.0/16"}, "--via 198.18.3.3: one address per family"},
		{[]string{"--role", "shadow", "--via", "198.18.1.3"}, "--to is required"},
		{[]string{"--role", "shadow", "--via", "198.18.1.3", "--to", "2001:2:0:ff::/64"}, "--to 2001:2:0:ff::/64: no --via"},
		{append(slices.Clone(shadow), "--prod", "prod"), `--prod "prod"`},
		{[]string{"--role", "prod", "--intercept", "198.18.1.3"}, "--iface is required"},
		{[]string{"--role", "prod", "--iface", "eth0"}, "--intercept is required"},
		{[]string{"--role", "prod", "--iface", "eth0", "--intercept", "198.18.1.3:0"}, `--intercept "198.18.1.3:0"`},
		{append(slices.Clone(prod), "--secret-file", short), "--secret-file"},
		{append(slices.Clone(prod), "--probe"), "--probe needs --map"},
		{append(slices.Clone(prod), "--probe", "--map", "bad"), `--map "bad"`},
		{probe, "--client-pool of 198.18.1.2's address family"},
		{append(slices.Clone(probe), "--map", "80-[2001:2:0:1::2]:80", "--client-pool", "198.19.0.0/16"), "--client-pool of 2001:2:0:1::2's"},
		{append(slices.Clone(prod), "--client-pool", "198.19.0.0/16", "--client-pool", "198.20.0.0/16"), "--client-pool"},
		{append(slices.Clone(prod), "--client-pool", "pool"), `--client-pool "pool"`},
		{append(slices.Clone(prod), "--send", "pigeon"), `--send "pigeon"`},
		{append(slices.Clone(prod), "--capture", "vxlan://198.18.1.3"), "--iface or --capture, not both"},
		{[]string{"--role", "prod", "--intercept", "198.18.1.3", "--capture", "gre://198.18.1.3"}, "--capture: mirror"},
		{[]string{"--role", "prod", "--intercept", "198.18.1.3", "--capture", "vxlan://198.18.1.3", "--mirror-listen", "2m"}, "--mirror-listen 2m0s"},
		{[]string{"--role", "shadow", "--via", "198.18.1.3", "--to", "198.19.0.0/16", "--send", "datalink"}, "--send"},
		{append(slices.Clone(probe), "--client-pool", "198.19.0.0/16", "--probe-timeout", "0s"), "--probe-timeout 0s"},
		// Flags of another role are a mistake, named with the roles they are for.
		{[]string{"--role", "assist", "-i", "eth0", "--via", "198.18.1.3"}, "--via applies to --role shadow, not --role assist"},
		{append(slices.Clone(shadow), "--iface", "eth0"), "--iface applies to --role prod|assist, not --role shadow"},
		{append(slices.Clone(prod), "--to", "198.19.0.0/16"), "--to applies to --role shadow|assist"},
		{[]string{"--role", "assist", "-i", "eth0", "--probe"}, "--probe applies to --role prod"},
		{append(slices.Clone(shadow), "--listen", ":1"), "--listen applies to --role assist"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, err := doctorConfigFrom(t, tt.args...)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not say %q", err, tt.want)
			}
		})
	}
}

// TestDoctorCLIErrors runs the real command tree: a bad invocation fails
// before any check runs.
func TestDoctorCLIErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"doctor"}, "--role is required"},
		{[]string{"doctor", "--role", "shadow", "--via", "198.18.1.3", "--to", "198.19.0.0/16", "--iface", "eth0"}, "--iface applies to"},
		{[]string{"doctor", "--role", "prod", "--probe-timeout", "soon"}, "--probe-timeout"},
		{[]string{"doctor", "--role", "prod", "extra"}, `unknown command "extra"`},
		{[]string{"doctor", "--role", "assist", "-i", "eth0", "--log-level", "loud"}, "--log-level"},
	} {
		_, _, err := execute(t, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: error %v, want it to say %q", tt.args, err, tt.want)
		}
	}
}

// TestDoctorOutput runs the checks on a fake host and checks what the
// command prints: one line per check, a summary, and an error (the exit
// status) exactly when a check FAILs.
func TestDoctorOutput(t *testing.T) {
	host := &doctortest.Host{
		Sysctls: map[string]int{"net/ipv4/ip_forward": 0, "net/ipv4/conf/eth0/forwarding": 0, "net/ipv6/conf/all/forwarding": 0},
		Routes: []doctortest.Route{
			{Dst: netip.MustParsePrefix("2001:2:0:ff::/64"), Route: doctor.Route{Kind: doctor.Blackhole}},
			{Dst: netip.MustParsePrefix("198.18.1.0/24"), Route: doctor.Route{Kind: doctor.Unicast, Dev: "eth0"}},
		},
		Links: []string{"eth0"},
	}
	run := func(args ...string) (string, error) {
		t.Helper()
		cfg, err := doctorConfigFrom(t, args...)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		err = runDoctor(context.Background(), cfg, host, &out)
		return out.String(), err
	}

	out, err := run("--role", "assist", "-i", "eth0", "--to", "2001:2:0:ff::/64")
	want := `ok   ip_forward: net.ipv4.ip_forward=0, net.ipv4.conf.eth0.forwarding=0: replies die here
ok   ipv6_forwarding: net.ipv6.conf.all.forwarding=0: replies die here
ok   blackhole 2001:2:0:ff::/64: blackhole route: replies are dropped silently
ok   capture eth0: a live capture opens
warn agent_listen :36524: nothing listens on TCP port 36524: the agent is not running (or listens on another port); fix: tcpshadow intercept --iface eth0 --listen :36524
doctor --role assist: 4 ok, 1 warn, 0 FAIL
`
	if err != nil || out != want {
		t.Errorf("assist: error %v, output\n%s\nwant\n%s", err, out, want)
	}

	// No route to the pool: one FAIL, and the command fails.
	host.ChainsErr = doctor.ErrNotChecked
	host.Sysctls["net/ipv4/conf/all/rp_filter"] = 0
	out, err = run("--role", "shadow", "--via", "198.18.1.3", "--to", "198.19.0.0/16")
	want = `FAIL route 198.19.0.0/16: route missing: replies to 198.19.0.0/16 have no route, so they never reach the assist host; fix: tcpshadow route add --via 198.18.1.3 --to 198.19.0.0/16
ok   rp_filter 198.19.0.0/16: off (all=0): forged sources are accepted
doctor --role shadow: 1 ok, 0 warn, 1 FAIL
`
	if err == nil || err.Error() != "1 check failed" || out != want {
		t.Errorf("shadow: error %v, output\n%s\nwant\n%s", err, out, want)
	}
}
