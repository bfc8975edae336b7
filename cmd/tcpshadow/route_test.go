package main

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// routeOptionsFrom parses args with the flags of route's subcommand sub
// (add, del or show).
func routeOptionsFrom(t testing.TB, sub string, args ...string) *routeOptions {
	t.Helper()
	var cmd *cobra.Command
	for _, c := range newRouteCmd(&globalOptions{}).Commands() {
		if c.Name() == sub {
			cmd = c
		}
	}
	if cmd == nil {
		t.Fatalf("no route subcommand %q", sub)
	}
	f := parseFlags(t, cmd, args)
	o := &routeOptions{
		to:       flagValue(t, f.GetStringSlice, "to"),
		table:    flagValue(t, f.GetInt, "table"),
		priority: flagValue(t, f.GetInt, "priority"),
	}
	if sub == "add" {
		o.via = flagValue(t, f.GetString, "via")
		o.dev = flagValue(t, f.GetString, "dev")
	}
	return o
}

func TestRouteConfig(t *testing.T) {
	pfx := netip.MustParsePrefix
	tests := []struct {
		sub      string
		args     []string
		via      string // "" for none
		to       []netip.Prefix
		dev      string
		table    int
		priority int
	}{
		{"add", []string{"--via", "198.18.1.3", "--to", "198.19.0.0/16"}, "198.18.1.3", []netip.Prefix{pfx("198.19.0.0/16")}, "", 0, 1000},
		{"add", []string{"--via", "198.18.1.3", "--to", "198.19.0.0/16,198.18.0.0/24", "--to", "198.18.7.7/32"}, "198.18.1.3",
			[]netip.Prefix{pfx("198.19.0.0/16"), pfx("198.18.0.0/24"), pfx("198.18.7.7/32")}, "", 0, 1000},
		{"add", []string{"--via", "198.18.1.3", "--to", "198.19.1.2/16"}, "198.18.1.3", []netip.Prefix{pfx("198.19.0.0/16")}, "", 0, 1000}, // masked
		{"add", []string{"--via", "::ffff:198.18.1.3", "--to", "198.19.0.0/16"}, "198.18.1.3", []netip.Prefix{pfx("198.19.0.0/16")}, "", 0, 1000},
		{"add", []string{"--via", "2001:2:0:1::3", "--to", "2001:2:0:ff::/64", "--dev", "eth0", "--table", "100", "--priority", "32765"},
			"2001:2:0:1::3", []netip.Prefix{pfx("2001:2:0:ff::/64")}, "eth0", 100, 32765},
		{"del", []string{"--to", "198.19.0.0/16,2001:2:0:ff::/64", "--table", "100"}, "", []netip.Prefix{pfx("198.19.0.0/16"), pfx("2001:2:0:ff::/64")}, "", 100, 1000},
		{"del", nil, "", nil, "", 0, 1000}, // routeDel asks for --to
		{"show", nil, "", nil, "", 0, 1000},
		{"show", []string{"--to", "198.19.0.0/16", "--priority", "1"}, "", []netip.Prefix{pfx("198.19.0.0/16")}, "", 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.sub+" "+strings.Join(tt.args, " "), func(t *testing.T) {
			cfg, err := routeOptionsFrom(t, tt.sub, tt.args...).config(tt.sub == "add")
			if err != nil {
				t.Fatal(err)
			}
			var via netip.Addr
			if tt.via != "" {
				via = netip.MustParseAddr(tt.via)
			}
			if cfg.via != via || !slices.Equal(cfg.to, tt.to) || cfg.dev != tt.dev || cfg.table != tt.table || cfg.priority != tt.priority {
				t.Errorf("config %+v, want via %v to %v dev %q table %d priority %d", cfg, via, tt.to, tt.dev, tt.table, tt.priority)
			}
		})
	}
}

func TestRouteConfigErrorsNameTheFlag(t *testing.T) {
	tests := []struct {
		sub  string
		args []string
		flag string
	}{
		{"add", []string{"--to", "198.19.0.0/16"}, "--via"},
		{"add", []string{"--via", "assist", "--to", "198.19.0.0/16"}, "--via"},
		{"add", []string{"--via", "198.18.1.0/24", "--to", "198.19.0.0/16"}, "--via"},
		{"add", []string{"--via", "198.18.1.3"}, "--to"},
		{"add", []string{"--via", "198.18.1.3", "--to", "198.19.0.0"}, "--to"},
		{"add", []string{"--via", "198.18.1.3", "--to", "198.19.0.0/33"}, "--to"},
		{"add", []string{"--via", "198.18.1.3", "--to", "2001:2:0:ff::/64"}, "--to"},
		{"add", []string{"--via", "2001:2:0:1::3", "--to", "198.19.0.0/16"}, "--via"},
		{"add", []string{"--via", "198.18.1.3", "--to", "198.19.0.0/16", "--table", "-1"}, "--table"},
		{"add", []string{"--via", "198.18.1.3", "--to", "198.19.0.0/16", "--table", "255"}, "--table"},
		{"add", []string{"--via", "198.18.1.3", "--to", "198.19.0.0/16", "--table", "4294967281"}, "--table"},
		{"add", []string{"--via", "198.18.1.3", "--to", "198.19.0.0/16", "--priority", "0"}, "--priority"},
		{"add", []string{"--via", "198.18.1.3", "--to", "198.19.0.0/16", "--priority", "32766"}, "--priority"},
		{"del", []string{"--to", "x"}, "--to"},
		{"del", []string{"--to", "198.19.0.0/16", "--table", "255"}, "--table"},
		{"show", []string{"--to", "198.19.0.0/16,"}, "--to"},
		{"show", []string{"--priority", "-5"}, "--priority"},
	}
	for _, tt := range tests {
		t.Run(tt.sub+" "+strings.Join(tt.args, " "), func(t *testing.T) {
			cfg, err := routeOptionsFrom(t, tt.sub, tt.args...).config(tt.sub == "add")
			if err == nil {
				t.Fatalf("accepted: %+v", cfg)
			}
			if !strings.Contains(err.Error(), tt.flag) {
				t.Fatalf("error %q does not name %s", err, tt.flag)
			}
		})
	}
}
