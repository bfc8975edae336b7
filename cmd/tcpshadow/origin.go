package main

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tcpshadow/tcpshadow/internal/conffile"
	"github.com/tcpshadow/tcpshadow/internal/daemon"
)

// This file is where options come from: the config file under the flags,
// and naming what the user wrote in errors.

// origin says where each option came from, so a validation error names
// what the user wrote: the flag, or the config file's key.
type origin struct {
	table string            // the config file's table for the command; empty without a file
	keys  map[string]string // flag name → file key, for the options the file set
}

// name names a flag's option: "--linger", or "copy.linger" when the file
// set it.
func (o origin) name(flag string) string {
	if k, ok := o.keys[flag]; ok {
		return k
	}
	return "--" + flag
}

// item names element i of a list option: "--map", or "copy.map[1]".
func (o origin) item(flag string, i int) string {
	if k, ok := o.keys[flag]; ok {
		return fmt.Sprintf("%s[%d]", k, i)
	}
	return "--" + flag
}

// missing names a required option nobody gave.
func (o origin) missing(flag string) string {
	if o.table == "" {
		return "--" + flag
	}
	return fmt.Sprintf("%s (--%s)", conffile.KeyName(o.table, flag), flag)
}

// fieldFlag names the flag that sets a daemon config field and, when the
// field holds it in another form than the user wrote (MiB as bytes, a
// size string as a number, one list element), the value as given.
type fieldFlag struct {
	flag  string
	given any // nil: the field's own value; a []string gives the element in error
}

// explain names the flag or file key that set the field of a
// *daemon.FieldError in err, with the value the user wrote; other errors,
// and fields of no flag, are returned as they are.
func (o origin) explain(err error, fields map[string]fieldFlag) error {
	var fe *daemon.FieldError
	if !errors.As(err, &fe) {
		return err
	}
	base, i := fe.Field, -1
	if open := strings.IndexByte(base, '['); open >= 0 && strings.HasSuffix(base, "]") {
		n, perr := strconv.Atoi(base[open+1 : len(base)-1])
		if perr != nil {
			return err
		}
		base, i = base[:open], n
	}
	fv, ok := fields[base]
	if !ok {
		return err
	}
	name := o.name(fv.flag)
	if i >= 0 {
		name = o.item(fv.flag, i)
	}
	if fe.Value == nil {
		return fmt.Errorf("%s: %w", name, fe.Err)
	}
	v := fe.Value
	if fv.given != nil {
		v = fv.given
	}
	if list, ok := v.([]string); ok && i >= 0 && i < len(list) {
		v = list[i]
	}
	if s, ok := v.(string); ok {
		return fmt.Errorf("%s %q: %w", name, s, fe.Err)
	}
	return fmt.Errorf("%s %v: %w", name, v, fe.Err)
}

// Config file layout: one table per daemon; the logging keys both share
// sit at the top level.
var (
	fileTables    = []string{"copy", "intercept"}
	topLevelFlags = []string{"log-format", "log-level", "log-file"}
	notInFile     = []string{"help", "config"}
)

// daemonCmd returns a fresh, unattached command for a table, with the
// root's logging flags added, and its options.
func daemonCmd(table string) (*cobra.Command, *globalOptions, any) {
	g := &globalOptions{}
	var cmd *cobra.Command
	var opts any
	switch table {
	case "copy":
		o := &copyOptions{}
		cmd, opts = newCopyCmdWith(g, o), o
	case "intercept":
		o := &interceptOptions{}
		cmd, opts = newInterceptCmdWith(g, o), o
	default:
		panic("no daemon " + table)
	}
	g.addFlags(cmd.Flags())
	return cmd, g, opts
}

// tableFlags lists the flags a table's keys set: every flag of the
// daemon but the top-level and command-line-only ones.
func tableFlags(table string) []string {
	cmd, _, _ := daemonCmd(table)
	var out []string
	fs := cmd.Flags()
	fs.SortFlags = false // in the order the command defines them
	fs.VisitAll(func(f *pflag.Flag) {
		if !slices.Contains(topLevelFlags, f.Name) && !slices.Contains(notInFile, f.Name) {
			out = append(out, f.Name)
		}
	})
	return out
}

// applyConfigFile fills the flags of fs, the flags of the daemon reading
// table, from the config file at path, except flags set on the command
// line. The other daemon's table is type-checked too, so a mistake
// anywhere in a shared file fails at startup.
func applyConfigFile(fs *pflag.FlagSet, table, path string) (origin, error) {
	if path == "" {
		return origin{}, nil
	}
	f, err := conffile.Load(path)
	if err != nil {
		return origin{}, err
	}
	if !f.Has(table) {
		return origin{}, fmt.Errorf("config %s: no [%s] table for the %s daemon", path, table, table)
	}
	return applyFile(f, fs, table)
}

func applyFile(f *conffile.File, fs *pflag.FlagSet, table string) (origin, error) {
	if err := checkTables(f); err != nil {
		return origin{}, err
	}
	for _, other := range fileTables {
		if other != table && f.Has(other) {
			scratch, _, _ := daemonCmd(other)
			if _, err := f.Apply(scratch.Flags(), other, tableFlags(other)); err != nil {
				return origin{}, err
			}
		}
	}
	from := origin{table: table, keys: make(map[string]string)}
	for _, t := range []string{"", table} {
		allowed := topLevelFlags
		if t != "" {
			allowed = tableFlags(t)
		}
		keys, err := f.Apply(fs, t, allowed)
		if err != nil {
			return origin{}, err
		}
		for flag, key := range keys {
			from.keys[flag] = key
		}
	}
	return from, nil
}

// errNoTable is returned by config check for a file with neither table.
var errNoTable = errors.New("want a [copy] or an [intercept] table")
