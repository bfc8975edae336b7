package conffile

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func flags() *pflag.FlagSet {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.String("name", "", "")
	fs.StringSlice("list", nil, "")
	fs.Int("count", 1, "")
	fs.Bool("on", false, "")
	fs.Duration("wait", time.Second, "")
	fs.Uint64("seed", 0, "")
	return fs
}

var all = []string{"name", "list", "count", "on", "wait", "seed"}

func TestApply(t *testing.T) {
	f, err := Parse("t.toml", []byte(`[t]
name = "a"
list = ["x", "y,z"]
count = 3
on = true
wait = "1m30s"
seed = 9
`))
	if err != nil {
		t.Fatal(err)
	}
	fs := flags()
	if err := fs.Parse([]string{"--count", "5"}); err != nil {
		t.Fatal(err)
	}
	set, err := f.Apply(fs, "t", all)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := set["count"]; ok {
		t.Error("the file set --count, given on the command line")
	}
	if set["wait"] != "t.wait" || len(set) != 5 {
		t.Errorf("set %v", set)
	}
	got := map[string]string{}
	fs.VisitAll(func(fl *pflag.Flag) { got[fl.Name] = Value(fl) })
	want := map[string]string{
		"name": `"a"`, "list": `["x", "y,z"]`, "count": "5", "on": "true", "wait": `"1m30s"`, "seed": "9",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %s, want %s", k, got[k], v)
		}
	}
}

func TestApplyErrors(t *testing.T) {
	for _, tt := range []struct{ file, want string }{
		{"[t]\nname = 1\n", "t.name: want a string, got the integer 1"},
		{"[t]\nlist = [\"a\", true]\n", "t.list[1]: want a string, got the boolean true"},
		{"[t]\nlist = \"a\"\n", "t.list: want an array of strings"},
		{"[t]\ncount = 1.5\n", "t.count: want an integer, got the float 1.5"},
		{"[t]\non = \"yes\"\n", "t.on: want true or false"},
		{"[t]\nwait = 30\n", "t.wait: want a duration string"},
		{"[t]\nwait = \"30\"\n", `t.wait: "30": want a duration`},
		{"[t]\nseed = -1\n", "t.seed: want an integer from 0"},
		{"[t]\nname = 1979-05-27\n", "got a date or time"},
		{"[t]\nname = {a = 1}\n", "got a table"},
		{"[t]\nother = 1\n", "unknown key t.other; [t] takes name, list"},
		{"[t]\nname = \"a\"\nname = \"b\"\n", "line 3"},
		{"[u]\nname = \"a\"\n", "no [t] table"},
	} {
		f, err := Parse("t.toml", []byte(tt.file))
		if err == nil {
			_, err = f.Apply(flags(), "t", all)
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: error %v, want %q", tt.file, err, tt.want)
		}
	}
}

// TestQuote checks Quote's strings read back unchanged.
func TestQuote(t *testing.T) {
	for _, s := range []string{"", "plain", `a "quoted" \ path`, "tab\there\nnewline\x7f", "µs ✓"} {
		f, err := Parse("q.toml", []byte("v = "+Quote(s)+"\n"))
		if err != nil {
			t.Fatalf("%q as %s: %v", s, Quote(s), err)
		}
		fs := pflag.NewFlagSet("q", pflag.ContinueOnError)
		fs.String("v", "", "")
		if _, err := f.Apply(fs, "", []string{"v"}); err != nil {
			t.Fatal(err)
		}
		if got, _ := fs.GetString("v"); got != s {
			t.Errorf("%q came back as %q", s, got)
		}
	}
}

// TestLoadRefusesWritableByOthers: a config file that group or others may
// write is refused, naming the file; the owner's own write bit is fine.
func TestLoadRefusesWritableByOthers(t *testing.T) {
	dir := t.TempDir()
	for mode, ok := range map[os.FileMode]bool{0o600: true, 0o644: true, 0o400: true, 0o664: false, 0o646: false, 0o666: false} {
		p := filepath.Join(dir, fmt.Sprintf("c%o.toml", mode))
		if err := os.WriteFile(p, []byte("[copy]\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		_, err := Load(p)
		if ok != (err == nil) || !ok && !strings.Contains(err.Error(), p) {
			t.Errorf("mode %04o: %v", mode, err)
		}
	}
	if _, err := Load(dir); err == nil {
		t.Error("a directory loaded as a config")
	}
}
