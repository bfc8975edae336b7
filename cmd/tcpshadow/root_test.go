package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket/pcap"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
)

// parseFlags parses args with cmd's own flag set, so tests see the
// defaults the CLI really has, and returns the parsed set.
func parseFlags(t testing.TB, cmd *cobra.Command, args []string) *pflag.FlagSet {
	t.Helper()
	f := cmd.Flags()
	if err := f.Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	if f.NArg() != 0 {
		t.Fatalf("parse %q: stray arguments %q", args, f.Args())
	}
	return f
}

// flagValue reads flag name from f with get (f.GetString, f.GetInt, ...).
func flagValue[T any](t testing.TB, get func(string) (T, error), name string) T {
	t.Helper()
	v, err := get(name)
	if err != nil {
		t.Fatalf("flag --%s: %v", name, err)
	}
	return v
}

// writeSecret writes content to a file in a test directory and returns
// its path.
func writeSecret(t testing.TB, content string) string {
	t.Helper()
	return writeSecretMode(t, content, 0o600)
}

// writeSecretMode is writeSecret with a file mode.
func writeSecretMode(t testing.TB, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// execute runs the root command with args, as main does, and returns
// what it wrote and its error. Nothing here may reach daemon.RunCopy or
// daemon.RunAgent: every case must fail in validation or print only.
func execute(t testing.TB, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = root.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

// TestCLIErrorsNameTheFlag runs the real command tree: a bad flag value
// fails before anything is opened, with an error naming the flag.
func TestCLIErrorsNameTheFlag(t *testing.T) {
	secret := writeSecret(t, "short")
	tests := []struct {
		args []string
		want string // in the error
	}{
		{[]string{"copy", "--iface", "eth0", "--map", "bad", "--intercept", "198.18.1.3"}, `--map "bad"`},
		{[]string{"copy", "--iface", "eth0", "-x", "80-198.18.1.2:80", "-s", "198.18.1.3", "--workers", "-1"}, "--workers"},
		{[]string{"copy", "--iface", "eth0", "-x", "80-198.18.1.2:80", "-s", "198.18.1.3", "--client-pool", "nope"}, "--client-pool"},
		{[]string{"copy", "--iface", "eth0", "-x", "80-198.18.1.2:80", "-s", "198.18.1.3", "--secret-file", secret}, "--secret-file"},
		{[]string{"copy", "--iface", "eth0", "-x", "80-198.18.1.2:80", "-s", "198.18.1.3", "--linger", "0s"}, "--linger"},
		{[]string{"copy", "--map", "80-198.18.1.2:80", "--intercept", "198.18.1.3"}, "--iface"},
		{[]string{"copy", "--iface", "eth0", "--intercept", "198.18.1.3"}, "--map"},
		{[]string{"copy", "--iface", "eth0", "--map", "80-198.18.1.2:80"}, "--intercept"},
		{[]string{"copy", "--iface", "eth0", "-x", "80-198.18.1.2:80", "-s", "198.18.1.3", "--log-level", "loud"}, "--log-level"},
		{[]string{"copy", "--iface", "eth0", "-x", "80-198.18.1.2:80", "-s", "198.18.1.3", "--log-format", "xml"}, "--log-format"},
		{[]string{"intercept", "--iface", "eth0", "--listen", "198.18.1.3"}, "--listen"},
		{[]string{"intercept", "--iface", "eth0", "--allow", "x"}, "--allow"},
		{[]string{"intercept", "--iface", "eth0", "--flush-delay", "0s"}, "--flush-delay"},
		{[]string{"intercept", "--listen", ":36524"}, "--iface"},
		{[]string{"route", "add", "--to", "198.19.0.0/16"}, "--via"},
		{[]string{"route", "add", "--via", "198.18.1.3"}, "--to"},
		{[]string{"route", "add", "--via", "198.18.1.3", "--to", "198.19.0.0/16", "--table", "255"}, "--table"},
		{[]string{"route", "del"}, "--to"},
		{[]string{"route", "show", "--to", "x"}, "--to"},
		// A flag's value that does not parse fails in cobra, naming it.
		{[]string{"copy", "--workers", "many"}, "--workers"},
		{[]string{"intercept", "--flush-delay", "soon"}, "--flush-delay"},
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

// TestCLIRejectsUnknown checks unknown flags, subcommands and stray
// arguments fail instead of being ignored.
func TestCLIRejectsUnknown(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, `unknown command "bogus"`},
		{[]string{"copy", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"copy", "extra"}, `unknown command "extra"`},
		{[]string{"intercept", "--iface", "eth0", "extra"}, `unknown command "extra"`},
		{[]string{"intercept", "-z"}, "unknown shorthand flag: 'z'"},
		{[]string{"route", "bogus"}, `unknown command "bogus"`},
		{[]string{"route", "add", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"route", "del", "--via", "198.18.1.3"}, "unknown flag: --via"}, // --via is add's only
		{[]string{"route", "show", "extra"}, `unknown command "extra"`},
		{[]string{"version", "extra"}, `unknown command "extra"`},
		{[]string{"version", "--bogus"}, "unknown flag: --bogus"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, _, err := execute(t, tt.args...)
			if err == nil {
				t.Fatal("succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

// TestCLIHelp checks the commands without an action print their help and
// succeed.
func TestCLIHelp(t *testing.T) {
	for _, args := range [][]string{{}, {"route"}, {"--help"}, {"copy", "--help"}} {
		out, _, err := execute(t, args...)
		if err != nil {
			t.Errorf("%q: %v", args, err)
		}
		if !strings.Contains(out, "Usage:") {
			t.Errorf("%q printed no usage:\n%s", args, out)
		}
	}
}

func TestVersion(t *testing.T) {
	old := version
	version = "1.2.3-test"
	t.Cleanup(func() { version = old })
	out, _, err := execute(t, "version")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines, got %q", out)
	}
	if want := fmt.Sprintf("tcpshadow 1.2.3-test (control protocol v%d, go", wire.Version); !strings.HasPrefix(lines[0], want) {
		t.Errorf("first line %q: want the version set at build time and the protocol version", lines[0])
	}
	if lines[1] != pcap.Version() || !strings.HasPrefix(lines[1], "libpcap version ") {
		t.Errorf("second line %q, want the libpcap version %q", lines[1], pcap.Version())
	}
}
