package daemon

import (
	"errors"
	"net/netip"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/rewrite"
	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// validCopy is the smallest valid copy daemon configuration.
func validCopy() CopyConfig {
	c := DefaultCopyConfig()
	c.Capture.Interface = "eth0"
	c.Client.Addr = "198.18.1.3:36524"
	c.Engine.Maps = []tcpstate.Map{{
		Local:  netip.AddrPortFrom(netip.Addr{}, 80),
		Target: netip.MustParseAddrPort("198.18.1.2:80"),
	}}
	return c
}

// validAgent is the smallest valid agent configuration.
func validAgent() AgentConfig {
	c := DefaultAgentConfig()
	c.Capture.Interface = "eth0"
	c.Agent.Secret = []byte("0123456789abcdef-daemon")
	return c
}

func TestDefaultConfigs(t *testing.T) {
	c := validCopy()
	if err := c.Validate(); err != nil {
		t.Errorf("default copy config: %v", err)
	}
	if !c.Capture.InboundOnly || c.Capture.SnapLen != 262144 || c.Capture.BufferSize != 32<<20 || c.Capture.Timeout != time.Millisecond {
		t.Errorf("copy capture %+v", c.Capture)
	}
	if c.MaxCPU != max(1, runtime.NumCPU()/2) || c.MaxMemory != 1<<30 || c.StatsInterval != 30*time.Second {
		t.Errorf("copy budgets: %d CPUs, %d bytes, stats every %v", c.MaxCPU, c.MaxMemory, c.StatsInterval)
	}
	if c.Dump.Path != "" || c.Dump.MaxBytes != 100<<20 || c.Dump.Files != 5 {
		t.Errorf("copy dump %+v: want off, 100 MiB, 5 files", c.Dump)
	}
	a := validAgent()
	if err := a.Validate(); err != nil {
		t.Errorf("default agent config: %v", err)
	}
	if !a.Capture.InboundOnly || a.Capture.SnapLen != 512 || a.Capture.Filter != "" || a.Listen != ":36524" || a.MaxMemory != 1<<30 {
		t.Errorf("agent capture %+v, listen %q", a.Capture, a.Listen)
	}
	if a.Agent.FlushDelay != 200*time.Microsecond || a.Agent.MaxFlows != 1<<20 {
		t.Errorf("agent config %+v", a.Agent)
	}
}

// TestEngineBudgets checks the engine's budgets come from MaxMemory and
// MaxCPU: half the memory for buffered data, a quarter for sessions at
// about 1 KiB each, one worker per CPU.
func TestEngineBudgets(t *testing.T) {
	c := validCopy()
	c.MaxCPU = 3
	e := c.EngineConfig()
	if e.Workers != 3 || e.MaxBufferBytes != 512<<20 || e.MaxSessions != 1<<30/4/1024 {
		t.Errorf("1 GiB, 3 CPUs: %d workers, %d buffer bytes, %d sessions", e.Workers, e.MaxBufferBytes, e.MaxSessions)
	}
	c.Engine.Workers, c.Engine.MaxSessions, c.MaxMemory = 5, 1000, 64<<20
	e = c.EngineConfig()
	if e.Workers != 5 || e.MaxBufferBytes != 32<<20 || e.MaxSessions != 1000 {
		t.Errorf("64 MiB, 5 workers, 1000 sessions: %d workers, %d buffer bytes, %d sessions", e.Workers, e.MaxBufferBytes, e.MaxSessions)
	}
	if c.Engine.Workers != 5 || c.Engine.MaxBufferBytes != 0 {
		t.Errorf("EngineConfig changed the config: %+v", c.Engine)
	}
}

// TestQueueWaitFollowsTheRing: the capture waits on a full worker queue
// for half the time its ring takes to fill at 1 Gbit/s, within the
// engine's default and tcpstate.MaxQueueWait.
func TestQueueWaitFollowsTheRing(t *testing.T) {
	floor := tcpstate.DefaultConfig().QueueWait
	for _, tc := range []struct {
		ring      int
		maxMemory int64
		want      time.Duration
		wantRing  int
	}{
		{1 << 20, 1 << 30, floor, 1 << 20},
		{32 << 20, 1 << 30, 134 * time.Millisecond, 32 << 20}, // 33,554,432 bytes at 125 MB/s, halved
		{256 << 20, 2 << 30, tcpstate.MaxQueueWait, 256 << 20},
		{256 << 20, 1 << 30, 537 * time.Millisecond, 128 << 20}, // an eighth of the memory budget
	} {
		c := validCopy()
		c.Capture.BufferSize, c.MaxMemory = tc.ring, tc.maxMemory
		got := c.EngineConfig().QueueWait
		if d := got - tc.want; d < -time.Millisecond || d > time.Millisecond {
			t.Errorf("%d MiB ring: queue wait %v, want %v", tc.ring>>20, got, tc.want)
		}
		// The ring holds, at the rate it is read at, twice the wait.
		if cc := c.CaptureConfig(); cc.BufferSize != tc.wantRing || cc.Hold != 2*got {
			t.Errorf("%d MiB ring with %d MiB of memory: capture ring up to %d, hold %v; want up to %d, holding twice %v",
				tc.ring>>20, tc.maxMemory>>20, cc.BufferSize, cc.Hold, tc.wantRing, got)
		}
		if err := c.Validate(); err != nil {
			t.Errorf("%d MiB ring: %v", tc.ring>>20, err)
		}
	}
}

// TestValidateNamesTheField checks every refusal names the field, from
// the config's root, so that the CLI can name the flag or key.
func TestValidateNamesTheField(t *testing.T) {
	dir := t.TempDir()
	copyTests := []struct {
		field  string
		mutate func(*CopyConfig)
	}{
		{"Capture.Interface", func(c *CopyConfig) { c.Capture.Interface = "" }},
		{"Capture.SnapLen", func(c *CopyConfig) { c.Capture.SnapLen = 127 }},
		{"Capture.SnapLen", func(c *CopyConfig) { c.Capture.SnapLen = 262145 }},
		{"Capture.BufferSize", func(c *CopyConfig) { c.Capture.BufferSize = 0 }},
		{"Capture.BufferSize", func(c *CopyConfig) { c.Capture.BufferSize = 4097 << 20 }},
		{"Capture.Timeout", func(c *CopyConfig) { c.Capture.Timeout = time.Millisecond - 1 }},
		{"Capture.Timeout", func(c *CopyConfig) { c.Capture.Timeout = time.Second + 1 }},
		{"Client.Addr", func(c *CopyConfig) { c.Client.Addr = "" }},
		{"MaxCPU", func(c *CopyConfig) { c.MaxCPU = 0 }},
		{"MaxCPU", func(c *CopyConfig) { c.MaxCPU = 1025 }},
		{"MaxMemory", func(c *CopyConfig) { c.MaxMemory = 16<<20 - 1 }},
		{"StatsInterval", func(c *CopyConfig) { c.StatsInterval = -time.Second }},
		{"Pprof", func(c *CopyConfig) { c.Pprof, c.MetricsAddr = true, "198.18.0.1:9464" }},
		{"Pprof", func(c *CopyConfig) { c.Pprof, c.MetricsAddr = true, ":9464" }},
		{"Dump.MaxBytes", func(c *CopyConfig) { c.Dump.MaxBytes = 0 }},
		{"Dump.Files", func(c *CopyConfig) { c.Dump.Files = 1001 }},
		{"Dump.Path", func(c *CopyConfig) { c.Dump.Path = filepath.Join(dir, "none", "x.pcap") }},
		{"Dump.Path", func(c *CopyConfig) { c.Dump.Path = dir }},
		{"Engine.Maps", func(c *CopyConfig) { c.Engine.Maps = nil }},
		{"Engine.Maps[1]", func(c *CopyConfig) { c.Engine.Maps = append(c.Engine.Maps, c.Engine.Maps[0]) }},
		{"Engine.Workers", func(c *CopyConfig) { c.Engine.Workers = -1 }},
		{"Engine.MSS", func(c *CopyConfig) { c.Engine.MSS = 535 }},
		{"Engine.Linger", func(c *CopyConfig) { c.Engine.Linger = 0 }},
		{"Engine.MaxSessionBytes", func(c *CopyConfig) { c.Engine.MaxSessionBytes = 4095 }},
		{"Engine.MaxSessions", func(c *CopyConfig) { c.Engine.MaxSessions = 0 }},
	}
	for _, tt := range copyTests {
		c := validCopy()
		tt.mutate(&c)
		checkField(t, c.Validate(), tt.field)
	}
	agentTests := []struct {
		field  string
		mutate func(*AgentConfig)
	}{
		{"Capture.Interface", func(c *AgentConfig) { c.Capture.Interface = "" }},
		{"Capture.BufferSize", func(c *AgentConfig) { c.Capture.BufferSize = 4097 << 20 }},
		{"Listen", func(c *AgentConfig) { c.Listen = "" }},
		{"Agent.FlushDelay", func(c *AgentConfig) { c.Agent.FlushDelay = 0 }},
		{"Agent.FlushDelay", func(c *AgentConfig) { c.Agent.FlushDelay = time.Second + 1 }},
		{"Agent.MaxFlows", func(c *AgentConfig) { c.Agent.MaxFlows = 0 }},
		{"MaxCPU", func(c *AgentConfig) { c.MaxCPU = 0 }},
		{"MaxMemory", func(c *AgentConfig) { c.MaxMemory = 1 << 20 }},
		{"Agent.Secret", func(c *AgentConfig) { c.Agent.Secret = nil }},
		{"Agent.Secrets", func(c *AgentConfig) { c.Agent.Secrets = map[string][]byte{"prod": []byte("x")} }},
		{"Pprof", func(c *AgentConfig) { c.Pprof, c.MetricsAddr = true, "198.18.1.3:9464" }},
		{"StatsInterval", func(c *AgentConfig) { c.StatsInterval = -1 }},
		{"Dump.Files", func(c *AgentConfig) { c.Dump.Files = 0 }},
	}
	for _, tt := range agentTests {
		c := validAgent()
		tt.mutate(&c)
		checkField(t, c.Validate(), tt.field)
	}
}

func checkField(t testing.TB, err error, field string) {
	t.Helper()
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != field {
		t.Errorf("want an error naming %s, got %v", field, err)
	}
}

// TestAgentInsecureOnPurpose: without a secret the agent runs only when
// told to; the profiler is fine on loopback.
func TestAgentInsecureOnPurpose(t *testing.T) {
	c := validAgent()
	c.Agent.Secret, c.Agent.InsecureNoAuth = nil, true
	c.Pprof, c.MetricsAddr = true, "127.0.0.1:9464"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.Agent.Secrets = map[string][]byte{"prod-1": []byte("0123456789abcdef")}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestAgentCaptureFilter: the agent's own port is never captured, on its
// listening address when it has one; a given filter is kept, narrowed.
func TestAgentCaptureFilter(t *testing.T) {
	for _, tt := range []struct{ filter, listen, want string }{
		{"", ":36524", "tcp and not (dst port 36524)"},
		{"", "198.18.1.3:36524", "tcp and not (dst host 198.18.1.3 and dst port 36524)"},
		{"", "[2001:2:0:1::3]:4000", "tcp and not (dst host 2001:2:0:1::3 and dst port 4000)"},
		{"", "0.0.0.0:36524", "tcp and not (dst port 36524)"},
		{"tcp and src port 80", "198.18.1.3:36524", "(tcp and src port 80) and not (dst host 198.18.1.3 and dst port 36524)"},
	} {
		c := validAgent()
		c.Capture.Filter, c.Listen = tt.filter, tt.listen
		if got := c.CaptureConfig().Filter; got != tt.want {
			t.Errorf("filter %q listen %q: %q, want %q", tt.filter, tt.listen, got, tt.want)
		}
	}
}

// TestRelayBudget: the flow table is held to a quarter of MaxMemory.
func TestRelayBudget(t *testing.T) {
	c := validAgent()
	if got := c.RelayConfig().MaxFlows; got != 1<<20 {
		t.Errorf("1 GiB: %d flows", got)
	}
	c.MaxMemory = 64 << 20
	if got := c.RelayConfig().MaxFlows; got != 64<<20/4/flowBytes {
		t.Errorf("64 MiB: %d flows", got)
	}
}

// TestClientAnnouncement: the copier announces its pool (slot included),
// or the whole address space without one, and a flow idle time no live
// session exceeds.
func TestClientAnnouncement(t *testing.T) {
	c := validCopy()
	cc := c.ClientConfig()
	if len(cc.Pools) != 2 || cc.Pools[0].Prefix.Bits() != 0 || cc.Pools[1].Prefix.Bits() != 0 {
		t.Errorf("without a pool: %v", cc.Pools)
	}
	e := c.EngineConfig()
	e.Defaults()
	if want := max(e.IdleTimeout, e.ResponseTimeout, e.HandshakeTimeout) + e.Linger; cc.FlowIdle != want || want <= e.IdleTimeout {
		t.Errorf("flow idle %v, want %v", cc.FlowIdle, want)
	}
	pool, err := rewrite.NewPool([]netip.Prefix{netip.MustParsePrefix("198.19.0.0/16")}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if c.Engine.Pool, err = pool.WithSlot(2, 5); err != nil {
		t.Fatal(err)
	}
	cc = c.ClientConfig()
	if len(cc.Pools) != 1 || cc.Pools[0].String() != "198.19.0.0/16 slot 2/5" {
		t.Errorf("with a pool: %v", cc.Pools)
	}
}

// TestHTTP2MapsAskForRecords: the maps named http2 have the agent walk
// their shadow ports (once each) and prod captured whole; auto maps, or
// comparison off, ask for nothing of the kind.
func TestHTTP2MapsAskForRecords(t *testing.T) {
	c := validCopy()
	c.Engine.Maps = append(c.Engine.Maps,
		tcpstate.Map{Local: netip.AddrPortFrom(netip.Addr{}, 8080), Target: netip.MustParseAddrPort("198.18.1.2:8443")},
		tcpstate.Map{Local: netip.AddrPortFrom(netip.Addr{}, 8081), Target: netip.MustParseAddrPort("198.18.1.3:8443")},
		tcpstate.Map{Local: netip.AddrPortFrom(netip.Addr{}, 6379), Target: netip.MustParseAddrPort("198.18.1.2:6379")})
	if got := c.ClientConfig().H2Ports; got != nil {
		t.Fatalf("every map auto: H2 ports %v", got)
	}
	if pc, _ := c.ProdCaptureConfig(); pc.SnapLen != prodSnapLen {
		t.Fatalf("prod's snap length %d without an http2 map", pc.SnapLen)
	}
	c.Compare.Protocols = []string{"8080=http2", "8081=http2", "6379=redis"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := c.ClientConfig().H2Ports; len(got) != 1 || got[0] != 8443 {
		t.Fatalf("H2 ports %v, want [8443]", got)
	}
	if pc, _ := c.ProdCaptureConfig(); pc.SnapLen != capture.MaxSnapLen {
		t.Fatalf("prod's snap length %d with an http2 map", pc.SnapLen)
	}
	c.Engine.ComparePrefix = 0
	if got := c.ClientConfig().H2Ports; got != nil {
		t.Fatalf("comparison off: H2 ports %v", got)
	}
}
