package intercept

import (
	"reflect"
	"testing"
	"time"
)

// TestDefaultConfigs checks that the Default*Config functions fill in
// every tunable (a command line takes its flag defaults from them) and
// that defaults() fills exactly the zero fields with those values.
func TestDefaultConfigs(t *testing.T) {
	check := func(t *testing.T, def any, zero func() any, custom func() (any, any)) {
		t.Helper()
		v := reflect.ValueOf(def)
		for i := range v.NumField() {
			f := v.Type().Field(i)
			switch f.Type.Kind() {
			case reflect.Int, reflect.Int64:
				if v.Field(i).Int() <= 0 {
					t.Errorf("%s has no default", f.Name)
				}
			}
		}
		if got := zero(); !reflect.DeepEqual(got, def) {
			t.Errorf("zero config with defaults\n got %+v\nwant %+v", got, def)
		}
		if got, want := custom(); !reflect.DeepEqual(got, want) {
			t.Errorf("set fields overridden by defaults\n got %+v\nwant %+v", got, want)
		}
	}
	t.Run("Agent", func(t *testing.T) {
		check(t, DefaultAgentConfig(),
			func() any { var c AgentConfig; c.defaults(); return c },
			func() (any, any) {
				c := AgentConfig{FlushDelay: time.Millisecond, MaxFlows: 7}
				c.defaults()
				want := DefaultAgentConfig()
				want.FlushDelay, want.MaxFlows = time.Millisecond, 7
				return c, want
			})
	})
	t.Run("Client", func(t *testing.T) {
		check(t, DefaultClientConfig(),
			func() any { var c ClientConfig; c.defaults(); return c },
			func() (any, any) {
				c := ClientConfig{Addr: "agent:1", RetryMax: time.Minute, QueueLen: 3}
				c.defaults()
				want := DefaultClientConfig()
				want.Addr, want.RetryMax, want.QueueLen = "agent:1", time.Minute, 3
				return c, want
			})
	})
}
