package compare

import (
	"slices"
	"strings"
	"testing"
)

func TestCheckPrefix(t *testing.T) {
	for _, n := range []int{0, 1, DefaultPrefix, MaxPrefix} {
		if err := CheckPrefix(n); err != nil {
			t.Errorf("%d: %v", n, err)
		}
	}
	for _, n := range []int{-1, MaxPrefix + 1, 1 << 20} {
		if err := CheckPrefix(n); err == nil {
			t.Errorf("%d accepted", n)
		}
	}
}

func TestMapProtocols(t *testing.T) {
	names := []string{"80-198.18.1.2:80", "6379-198.18.1.2:6379", "198.18.0.1:5432-198.18.1.2:5432"}
	ports := []uint16{80, 6379, 5432}
	for _, tc := range []struct {
		specs []string
		want  []Protocol
	}{
		{nil, []Protocol{Auto, Auto, Auto}},
		{[]string{"http"}, []Protocol{HTTP1, HTTP1, HTTP1}},
		{[]string{"6379=redis"}, []Protocol{Auto, Redis, Auto}},
		{[]string{"h2c", "6379=redis", "198.18.0.1:5432-198.18.1.2:5432=pg"}, []Protocol{HTTP2, Redis, Postgres}},
	} {
		got, err := MapProtocols(tc.specs, names, ports)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%q: %v, %v; want %v", tc.specs, got, err, tc.want)
		}
	}
	for _, tc := range []struct {
		specs []string
		want  string
	}{
		{[]string{"smtp"}, `"smtp"`},
		{[]string{"8080=http"}, "no map 8080"},
		{[]string{"6379=redis", "6379=http"}, "already set"},
		{[]string{"http", "redis"}, "already set"},
		{[]string{"80=gopher"}, "gopher"},
	} {
		if _, err := MapProtocols(tc.specs, names, ports); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.specs, err, tc.want)
		}
	}
}
