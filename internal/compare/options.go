package compare

import (
	"fmt"
	"strconv"
	"strings"
)

// CheckPrefix validates a response prefix length (--compare-prefix): 0
// turns comparison off, otherwise 1 to MaxPrefix bytes.
func CheckPrefix(n int) error {
	if n < 0 || n > MaxPrefix {
		return fmt.Errorf("compare prefix %d: want 0 (off) to %d bytes", n, MaxPrefix)
	}
	return nil
}

// MapProtocols resolves protocol options (--protocol, repeatable) for
// maps named names with local ports ports: "PROTO" sets every map not
// named otherwise; "PORT=PROTO" the maps with that local port;
// "NAME=PROTO" the map of that name (its --map text). Maps nothing names
// are Auto. A spec naming no map, or a map named twice, is an error.
func MapProtocols(specs []string, names []string, ports []uint16) ([]Protocol, error) {
	if len(names) != len(ports) {
		return nil, fmt.Errorf("protocols: %d map names, %d ports", len(names), len(ports))
	}
	out := make([]Protocol, len(names))
	set := make([]string, len(names)) // the spec that set each map
	all := Auto
	allSpec := ""
	for _, spec := range specs {
		key, val := "", spec
		i := strings.LastIndexByte(spec, '=')
		keyed := i >= 0
		if keyed {
			key, val = spec[:i], spec[i+1:]
		}
		p, err := ParseProtocol(val)
		if err != nil {
			return nil, fmt.Errorf("--protocol %q: %w", spec, err)
		}
		if !keyed {
			if allSpec != "" {
				return nil, fmt.Errorf("--protocol %q: every map's protocol was already set by %q", spec, allSpec)
			}
			all, allSpec = p, spec
			continue
		}
		port, perr := strconv.ParseUint(key, 10, 16)
		matched := false
		for i := range names {
			if names[i] == key || perr == nil && ports[i] == uint16(port) {
				if set[i] != "" {
					return nil, fmt.Errorf("--protocol %q: map %s already set by %q", spec, names[i], set[i])
				}
				out[i], set[i], matched = p, spec, true
			}
		}
		if !matched {
			return nil, fmt.Errorf("--protocol %q: no map %s (maps: %s)", spec, key, strings.Join(names, ", "))
		}
	}
	for i := range out {
		if set[i] == "" {
			out[i] = all
		}
	}
	return out, nil
}
