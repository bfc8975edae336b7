package tcpstate

import (
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

// TestDefaults checks Defaults fills every field DefaultConfig sets, so a
// default added there is one a zero Config gets, and keeps what is set.
func TestDefaults(t *testing.T) {
	var c Config
	c.Defaults()
	want := DefaultConfig()
	want.ComparePrefix = 0 // 0 means off, so a zero Config keeps it
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Defaults of a zero Config:\n%+v\nwant DefaultConfig:\n%+v", c, want)
	}
	c = Config{MSS: 536, Linger: time.Second}
	c.Defaults()
	if c.MSS != 536 || c.Linger != time.Second || c.IdleTimeout != DefaultConfig().IdleTimeout {
		t.Errorf("Defaults overwrote a set field or left a zero one: %+v", c)
	}
}

// TestValidateNamesTheField checks each refusal names the Config field,
// so that callers can name their own setting of it.
func TestValidateNamesTheField(t *testing.T) {
	valid := func() Config {
		c := DefaultConfig()
		c.Maps = []Map{{Local: tProd, Target: tShadow}}
		return c
	}
	c := valid()
	if err := c.Validate(); err != nil {
		t.Fatalf("DefaultConfig with a map: %v", err)
	}
	for _, mss := range []int{MinMSS, 1460, MaxMSS} {
		c := valid()
		c.MSS = mss
		if err := c.Validate(); err != nil {
			t.Errorf("MSS %d: %v", mss, err)
		}
	}
	tests := []struct {
		field  string
		mutate func(*Config)
	}{
		{"Maps", func(c *Config) { c.Maps = nil }},
		{"Maps", func(c *Config) {
			for i := range 256 {
				c.Maps = append(c.Maps, Map{Local: tProd, Target: netip.AddrPortFrom(tShadow.Addr(), uint16(1000+i))})
			}
		}},
		{"Maps[1]", func(c *Config) { c.Maps = append(c.Maps, c.Maps[0]) }},
		{"Maps[0]", func(c *Config) { c.Maps[0].Target = netip.AddrPortFrom(tShadow.Addr(), 0) }},
		{"Workers", func(c *Config) { c.Workers = 0 }},
		{"Workers", func(c *Config) { c.Workers = 1025 }},
		{"MSS", func(c *Config) { c.MSS = MinMSS - 1 }},
		{"MSS", func(c *Config) { c.MSS = MaxMSS + 1 }},
		{"SynMSS", func(c *Config) { c.SynMSS = 100 }},
		{"HandshakeTimeout", func(c *Config) { c.HandshakeTimeout = 0 }},
		{"ResponseTimeout", func(c *Config) { c.ResponseTimeout = -time.Second }},
		{"IdleTimeout", func(c *Config) { c.IdleTimeout = 0 }},
		{"Linger", func(c *Config) { c.Linger = -1 }},
		{"QuietPeriod", func(c *Config) { c.QuietPeriod = 0 }},
		{"RTOMin", func(c *Config) { c.RTOMin = 5 * time.Second }},
		{"MaxSessionBytes", func(c *Config) { c.MaxSessionBytes = 4095 }},
		{"MaxSessions", func(c *Config) { c.MaxSessions = 0 }},
		{"QueueLen", func(c *Config) { c.QueueLen = 0 }},
		{"QueueWait", func(c *Config) { c.QueueWait = 2 * MaxQueueWait }},
	}
	for _, tt := range tests {
		c := valid()
		tt.mutate(&c)
		err := c.Validate()
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tt.field {
			t.Errorf("want an error naming %s, got %v", tt.field, err)
		}
	}
}
