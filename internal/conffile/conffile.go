// Package conffile reads tcpshadow's configuration file and applies it to
// a command's flags: each key is a flag's name with '_' for '-', so the
// file mirrors the flags by construction and cannot drift from them.
// Values set on the command line win (pflag's Changed); everything else the
// file holds is set on the flag, so the command's usual validation sees one
// options struct whatever the source.
//
// The format is TOML (github.com/BurntSushi/toml v1.6.0), chosen over
// YAML because the file is a few flat sections ([copy], [intercept]) of
// scalars and lists, which TOML writes without significant indentation;
// because every TOML string is quoted, so values full of colons and
// brackets (maps like [2001:2::1]:80-[2001:2:0:1::2]:80, ":36524") are never
// reread as YAML flow sequences or mappings; because a TOML key given twice
// is a syntax error; and because it has comments, which the example file
// relies on. Decoding is strict: an unknown table or key, a value of the
// wrong type or a duration that does not parse is an error naming the key
// (copy.workers, copy.map[1]) and saying what it accepts. Durations are
// strings with units only: a bare integer would be nanoseconds.
//
// The package owns reading the file, parsing and type checking. It never
// validates ranges or meanings: the commands do, with errors naming the
// file's key. It refuses a file that anyone but its owner may write, or
// whose owner is neither root nor the user running: whoever can change
// the configuration can point the daemon anywhere.
package conffile

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/spf13/pflag"
)

// File is a parsed configuration file.
type File struct {
	Path string
	top  map[string]any
}

// Load reads and parses path, after checking nobody else may change it.
// Syntax errors name the line.
func Load(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if err := checkOwnership(path, fi); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, b)
}

// checkOwnership refuses a config file others may write.
func checkOwnership(path string, fi os.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("config %s: not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("config %s: writable by group or others (mode %04o): chmod go-w it", path, perm)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("config %s: owned by uid %d, neither root nor this user", path, st.Uid)
	}
	return nil
}

// Parse parses data read from path (used only in messages).
func Parse(path string, data []byte) (*File, error) {
	top := make(map[string]any)
	if _, err := toml.Decode(string(data), &top); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("config %s: line %d: %s", path, pe.Position.Line, pe.Message)
		}
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &File{Path: path, top: top}, nil
}

// Tables returns the names of the file's top-level tables, sorted.
func (f *File) Tables() []string {
	var out []string
	for k, v := range f.top {
		if _, ok := v.(map[string]any); ok {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// Has reports whether the file has table name.
func (f *File) Has(name string) bool {
	_, ok := f.top[name].(map[string]any)
	return ok
}

// KeyName is the file's key for flag name in table ("" for the top
// level): copy.flush_delay for flush-delay in [copy].
func KeyName(table, flag string) string {
	k := strings.ReplaceAll(flag, "-", "_")
	if table == "" {
		return k
	}
	return table + "." + k
}

// Apply sets the keys of table ("" for the top-level keys; tables there
// are skipped) on the flags of fs with the same names, except flags set on
// the command line. allowed lists the flags the table may set; any other
// key is an error. It returns, for every flag the file set, its key name.
func (f *File) Apply(fs *pflag.FlagSet, table string, allowed []string) (map[string]string, error) {
	kv := f.top
	if table != "" {
		var ok bool
		if kv, ok = f.top[table].(map[string]any); !ok {
			return nil, fmt.Errorf("config %s: no [%s] table", f.Path, table)
		}
	}
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys) // the first error is the same every time
	set := make(map[string]string)
	for _, k := range keys {
		v := kv[k]
		if _, isTable := v.(map[string]any); isTable && table == "" {
			continue
		}
		name := KeyName(table, k)
		flag := strings.ReplaceAll(k, "_", "-")
		fl := fs.Lookup(flag)
		if strings.Contains(k, "-") || fl == nil || !slices.Contains(allowed, flag) {
			raw := k
			if table != "" {
				raw = table + "." + k
			}
			return nil, fmt.Errorf("config %s: unknown key %s; %s takes %s", f.Path, raw, where(table), keyList(allowed))
		}
		if fl.Changed {
			continue // the command line wins
		}
		if err := setFlag(fl, v); err != nil {
			var ie *itemError
			if errors.As(err, &ie) {
				return nil, fmt.Errorf("config %s: %s[%d]: %w", f.Path, name, ie.i, ie.err)
			}
			return nil, fmt.Errorf("config %s: %s: %w", f.Path, name, err)
		}
		set[flag] = name
	}
	return set, nil
}

func where(table string) string {
	if table == "" {
		return "the top level"
	}
	return "[" + table + "]"
}

func keyList(flags []string) string {
	keys := make([]string, len(flags))
	for i, f := range flags {
		keys[i] = KeyName("", f)
	}
	return strings.Join(keys, ", ")
}

// setFlag type-checks v against the flag's type and sets it. TOML values
// arrive as string, int64, float64, bool, time types, []any or
// map[string]any.
func setFlag(fl *pflag.Flag, v any) error {
	switch typ := fl.Value.Type(); typ {
	case "string":
		s, ok := v.(string)
		if !ok {
			return wantGot("a string", v)
		}
		return fl.Value.Set(s)
	case "bool":
		b, ok := v.(bool)
		if !ok {
			return wantGot("true or false", v)
		}
		return fl.Value.Set(strconv.FormatBool(b))
	case "int", "int64":
		n, ok := v.(int64)
		if !ok {
			return wantGot("an integer", v)
		}
		return fl.Value.Set(strconv.FormatInt(n, 10))
	case "uint64":
		n, ok := v.(int64)
		if !ok || n < 0 {
			return wantGot("an integer from 0", v)
		}
		return fl.Value.Set(strconv.FormatInt(n, 10))
	case "duration":
		s, ok := v.(string)
		if !ok {
			// An integer would be nanoseconds to time.Duration: a
			// classic trap, so only strings with units are taken.
			return wantGot(`a duration string such as "200us", "2s" or "1m30s"`, v)
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q: want a duration such as \"200us\", \"2s\" or \"1m30s\"", s)
		}
		return fl.Value.Set(d.String())
	case "stringSlice":
		arr, ok := v.([]any)
		if !ok {
			return wantGot(`an array of strings, e.g. ["a", "b"]`, v)
		}
		vals := make([]string, len(arr))
		for i, e := range arr {
			s, ok := e.(string)
			if !ok {
				return &itemError{i, wantGot("a string", e)}
			}
			vals[i] = s
		}
		sv, ok := fl.Value.(pflag.SliceValue)
		if !ok {
			return fmt.Errorf("flag --%s is not a slice", fl.Name)
		}
		return sv.Replace(vals)
	default:
		return fmt.Errorf("flag --%s of type %s cannot be set from a file", fl.Name, typ)
	}
}

// itemError is an error about element i of an array.
type itemError struct {
	i   int
	err error
}

func (e *itemError) Error() string { return fmt.Sprintf("[%d]: %v", e.i, e.err) }
func (e *itemError) Unwrap() error { return e.err }

func wantGot(want string, v any) error {
	return fmt.Errorf("want %s, got %s", want, describe(v))
}

// describe names a TOML value's type, with the value when short.
func describe(v any) string {
	switch x := v.(type) {
	case string:
		return "the string " + strconv.Quote(x)
	case int64:
		return "the integer " + strconv.FormatInt(x, 10)
	case float64:
		if math.IsInf(x, 0) || math.IsNaN(x) {
			return "a float"
		}
		return "the float " + strconv.FormatFloat(x, 'g', -1, 64)
	case bool:
		return "the boolean " + strconv.FormatBool(x)
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	case time.Time:
		return "a date or time"
	}
	return fmt.Sprintf("a %T", v)
}

// Quote renders s as a TOML basic string.
func Quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// Value renders a flag's current value as a TOML value.
func Value(fl *pflag.Flag) string {
	switch fl.Value.Type() {
	case "string":
		return Quote(fl.Value.String())
	case "duration":
		// "us" rather than "µs": both parse, one is on every keyboard.
		return Quote(strings.ReplaceAll(fl.Value.String(), "µs", "us"))
	case "stringSlice":
		var parts []string
		if sv, ok := fl.Value.(pflag.SliceValue); ok {
			for _, s := range sv.GetSlice() {
				parts = append(parts, Quote(s))
			}
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	return fl.Value.String()
}
