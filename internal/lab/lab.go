//go:build linux

package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Lab-wide prefixes. Every address the lab configures or routes lies in
// LabV4 or LabV6.
var (
	LabV4 = netip.MustParsePrefix("198.18.0.0/15")
	LabV6 = netip.MustParsePrefix("2001:2::/48")
)

// The client net: the client and prod's client-facing side.
var (
	ClientNetV4      = netip.MustParsePrefix("198.18.0.0/24")
	ClientNetV6      = netip.MustParsePrefix("2001:2::/64")
	ClientV4         = netip.MustParseAddr("198.18.0.2")
	ClientV6         = netip.MustParseAddr("2001:2::2")
	ProdClientSideV4 = netip.MustParseAddr("198.18.0.1")
	ProdClientSideV6 = netip.MustParseAddr("2001:2::1")
)

// The segment: the bridge joining prod, shadow and assist.
var (
	SegmentV4 = netip.MustParsePrefix("198.18.1.0/24")
	SegmentV6 = netip.MustParsePrefix("2001:2:0:1::/64")
	ProdV4    = netip.MustParseAddr("198.18.1.1")
	ProdV6    = netip.MustParseAddr("2001:2:0:1::1")
	ShadowV4  = netip.MustParseAddr("198.18.1.2")
	ShadowV6  = netip.MustParseAddr("2001:2:0:1::2")
	AssistV4  = netip.MustParseAddr("198.18.1.3")
	AssistV6  = netip.MustParseAddr("2001:2:0:1::3")
)

// The client pool: source addresses tcpshadow may give mirrored connections.
// The shadow routes them via the assist; no namespace owns them.
var (
	PoolV4 = netip.MustParsePrefix("198.19.0.0/16")
	PoolV6 = netip.MustParsePrefix("2001:2:0:ff::/64")
)

// assistBlackholes are the destinations the shadow routes via the assist;
// the assist drops them silently, in both families.
var assistBlackholes = []netip.Prefix{ClientNetV4, PoolV4, ClientNetV6, PoolV6}

// Link names inside the namespaces. Names are per namespace, so they never
// collide with another lab's or the host's.
const (
	// HostLink is the only lab link of client, shadow and assist.
	HostLink = "eth0"
	// ProdClientLink is prod's link to the client.
	ProdClientLink = "eth0"
	// ProdSegmentLink is prod's link to the bridge (shadow and assist).
	ProdSegmentLink = "eth1"
	// BridgeLink is the bridge in the switch namespace.
	BridgeLink = "br0"
)

// Roles of the namespaces; the last part of each namespace's name.
const (
	RoleClient = "client"
	RoleProd   = "prod"
	RoleShadow = "shadow"
	RoleAssist = "assist"
	RoleSwitch = "switch"
)

// ErrClosed is returned by operations on a closed Lab.
var ErrClosed = errors.New("lab closed")

const (
	netnsDir        = "/run/netns"
	defaultPrefix   = "tsh"
	defaultMTU      = 1500
	setupTimeout    = 30 * time.Second
	settleTimeout   = 5 * time.Second
	teardownTimeout = 15 * time.Second
	stopGrace       = 5 * time.Second  // SIGTERM → SIGKILL
	killWait        = 5 * time.Second  // SIGKILL → give up
	outputLimit     = 256 << 10        // bytes of output kept per process
	idAttempts      = 8                // tries to find an unused lab ID
	vethIndexBase   = 101              // ifindex of the first created veth end
	runTimeout      = 60 * time.Second // default bound for Run without a deadline
)

var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,15}$`)

// Config selects the lab's shape. The zero value is valid.
type Config struct {
	// Prefix starts every namespace name: "<prefix>-<6 hex>-<role>".
	// Lowercase letters and digits, starting with a letter, at most 16
	// characters. Default "tsh".
	Prefix string
	// DisableOffloads turns off TSO, GSO, GRO and TX checksum offload on
	// every lab veth (ethtool -K), so captures see wire-sized segments with
	// full checksums. Needs ethtool.
	DisableOffloads bool
	// MTU of every lab link. Default 1500; 1280 to 65535.
	MTU int
	// TwoHosts builds the two-host topology (twohost.go): no assist
	// namespace; the shadow routes the client net and the pools toward
	// prod, so its replies leave unless its agent takes them.
	TwoHosts bool
	// AntiSpoofing makes the switch drop frames from prod whose IP source
	// is not prod's segment address (antispoof.go).
	AntiSpoofing bool

	// afterStep, when set, is called after each setup step; an error (or a
	// panic) aborts setup. Tests use it to inject failures.
	afterStep func(l *Lab, step string) error
	// stopGrace overrides the SIGTERM → SIGKILL wait used by Close.
	stopGrace time.Duration
}

func (c Config) withDefaults() (Config, error) {
	if c.Prefix == "" {
		c.Prefix = defaultPrefix
	}
	if !prefixRE.MatchString(c.Prefix) {
		return c, fmt.Errorf("prefix %q: want [a-z][a-z0-9]{0,15}", c.Prefix)
	}
	if c.MTU == 0 {
		c.MTU = defaultMTU
	}
	if c.MTU < 1280 || c.MTU > 65535 {
		return c, fmt.Errorf("mtu %d: want 1280 to 65535", c.MTU)
	}
	if c.stopGrace <= 0 {
		c.stopGrace = stopGrace
	}
	return c, nil
}

// Lab is a running sealed lab. Its namespaces are fixed after New; use Close
// to tear it down. Methods are safe for concurrent use.
type Lab struct {
	// ID is the random part shared by the lab's namespace names.
	ID string

	Client, Prod, Shadow, Assist, Switch *NS

	cfg Config
	log *slog.Logger
	all []*NS // in creation order

	// spawn feeds the goroutine that starts every Process; it is locked to
	// one OS thread for the lab's lifetime, so the children's parent-death
	// signal fires only when this process (or that thread, at Close) ends.
	spawn chan spawnReq

	closeOnce sync.Once
	closeErr  error

	// mu guards the fields below. Lock order: Lab.mu is a leaf lock.
	mu     sync.Mutex
	closed bool
	procs  map[*Process]struct{}
}

// New builds a lab. On any setup error, or a panic during setup, it tears
// down whatever it made before returning. A nil log discards messages.
func New(ctx context.Context, cfg Config, log *slog.Logger) (_ *Lab, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("lab config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("lab needs iproute2: %w", err)
	}
	if cfg.DisableOffloads {
		if _, err := exec.LookPath("ethtool"); err != nil {
			return nil, fmt.Errorf("lab DisableOffloads needs ethtool: %w", err)
		}
	}
	id, err := newID(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()

	l := &Lab{
		ID:    id,
		cfg:   cfg,
		log:   log.With("lab", cfg.Prefix+"-"+id),
		spawn: make(chan spawnReq),
		procs: make(map[*Process]struct{}),
	}
	go l.spawner()

	ok := false
	defer func() {
		if ok {
			return
		}
		// Runs on error returns and while a setup panic unwinds.
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("teardown after failed setup: %w", cerr))
		}
	}()
	start := time.Now()
	if err := l.setup(ctx); err != nil {
		return nil, fmt.Errorf("set up lab %s-%s: %w", cfg.Prefix, id, err)
	}
	ok = true
	l.log.Info("lab up", "namespaces", l.names(), "mtu", cfg.MTU,
		"offloads_disabled", cfg.DisableOffloads, "took", time.Since(start).Round(time.Millisecond))
	return l, nil
}

// NewT builds a lab for a test or benchmark and closes it in t.Cleanup. It
// skips when not running as root or when iproute2 is missing, and fails the
// test on a setup or teardown error.
func NewT(t testing.TB, cfg Config) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("lab: needs root to create network namespaces (run the tests as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("lab: iproute2 'ip' not found in PATH")
	}
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	l, err := New(context.Background(), cfg, log)
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("lab: %v", err)
		}
	})
	return l
}

// Namespaces returns the lab's namespaces: client, prod, shadow, assist,
// switch.
func (l *Lab) Namespaces() []*NS {
	return present(l.Client, l.Prod, l.Shadow, l.Assist, l.Switch)
}

func (l *Lab) names() []string {
	var s []string
	for _, n := range l.all {
		s = append(s, n.name)
	}
	return s
}

// Close stops every process started through the lab (SIGTERM, a bounded
// wait, SIGKILL), closes the netlink and namespace handles, deletes the
// namespaces and checks they are gone. It is idempotent and safe to call
// concurrently; every call returns the first call's result. Sockets made
// with Listen or DialContext are the caller's to close; until they are, the
// kernel keeps the (now nameless) namespace alive.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.teardown() })
	return l.closeErr
}

func (l *Lab) teardown() error {
	l.mu.Lock()
	l.closed = true
	procs := make([]*Process, 0, len(l.procs))
	for p := range l.procs {
		procs = append(procs, p)
	}
	l.mu.Unlock()

	var (
		errMu sync.Mutex
		errs  []error
	)
	addErr := func(err error) {
		errMu.Lock()
		errs = append(errs, err)
		errMu.Unlock()
	}

	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(func() {
			if err := p.terminate(l.cfg.stopGrace); err != nil {
				addErr(err)
			}
		})
	}
	wg.Wait()
	// The spawner's thread normally exits with it (unless the runtime ran
	// it on the main thread, which is never retired); any child still alive
	// then gets its parent-death signal.
	close(l.spawn)

	inodes := make(map[uint64]string)
	for _, n := range l.all {
		if ino, err := n.inode(); err == nil {
			inodes[ino] = n.name
		}
		n.closeHandles()
	}

	ctx, cancel := context.WithTimeout(context.Background(), teardownTimeout)
	defer cancel()
	for _, n := range l.all {
		if err := deleteNamespace(ctx, n.name); err != nil {
			addErr(err)
		}
	}
	if err := checkNoProcessesIn(inodes); err != nil {
		addErr(err)
	}
	err := errors.Join(errs...)
	if err != nil {
		l.log.Warn("lab teardown incomplete", "err", err)
	} else if len(l.all) > 0 {
		l.log.Info("lab closed", "namespaces", len(l.all), "stopped_processes", len(procs))
	}
	return err
}

// deleteNamespace removes a named namespace and verifies the name is gone.
func deleteNamespace(ctx context.Context, name string) error {
	path := filepath.Join(netnsDir, name)
	out, err := exec.CommandContext(ctx, "ip", "netns", "delete", name).CombinedOutput()
	if err != nil {
		// Fall back to what ip does: detach the bind mount, remove the file.
		_ = unix.Unmount(path, unix.MNT_DETACH)
		if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return fmt.Errorf("delete namespace %s: %w: %s", name, err, strings.TrimSpace(string(out)))
		}
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete namespace %s: %s still exists", name, path)
	}
	return nil
}

// checkNoProcessesIn reports processes still inside one of the namespaces
// (by namespace inode). It never signals them: an operator may have entered
// the namespace with ip netns exec.
func checkNoProcessesIn(inodes map[uint64]string) error {
	if len(inodes) == 0 {
		return nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return fmt.Errorf("scan processes: %w", err)
	}
	var left []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			// Our own main thread may sit in a lab namespace for a moment,
			// inside an in-flight Do; Do always switches back.
			continue
		}
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) != nil {
			continue // exited or not ours to read
		}
		if name, ok := inodes[st.Ino]; ok {
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			left = append(left, fmt.Sprintf("pid %d (%s) in %s", pid, strings.TrimSpace(string(comm)), name))
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("processes left in lab namespaces: %s", strings.Join(left, ", "))
	}
	return nil
}

func newID(prefix string) (string, error) {
	for range idAttempts {
		var b [3]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", fmt.Errorf("lab id: %w", err)
		}
		id := hex.EncodeToString(b[:])
		free := true
		for _, role := range []string{RoleClient, RoleProd, RoleShadow, RoleAssist, RoleSwitch} {
			if _, err := os.Lstat(filepath.Join(netnsDir, nsName(prefix, id, role))); err == nil {
				free = false
				break
			}
		}
		if free {
			return id, nil
		}
	}
	return "", fmt.Errorf("lab id: no unused id for prefix %q after %d tries", prefix, idAttempts)
}

func nsName(prefix, id, role string) string { return prefix + "-" + id + "-" + role }

// setup builds the lab step by step; on error the caller tears down.
func (l *Lab) setup(ctx context.Context) error {
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"namespaces", l.addNamespaces},
		{"sysctls", l.setSysctls},
		{"links", l.addLinks},
		{"link sysctls", l.setLinkSysctls},
		{"addresses", l.addAddresses},
		{"routes", l.addRoutes},
		{"offloads", l.disableOffloads},
		{"anti-spoofing", l.addAntiSpoofing},
		{"settle", l.settle},
	}
	for _, s := range steps {
		if err := s.fn(ctx); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		l.log.Debug("lab setup step done", "step", s.name)
		if err := l.hook(s.name); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) hook(step string) error {
	if l.cfg.afterStep == nil {
		return nil
	}
	if err := l.cfg.afterStep(l, step); err != nil {
		return fmt.Errorf("%s: %w", step, err)
	}
	return nil
}

func (l *Lab) addNamespaces(ctx context.Context) error {
	for _, role := range l.roles() {
		n, err := l.addNamespace(ctx, role)
		if err != nil {
			return err
		}
		switch role {
		case RoleClient:
			l.Client = n
		case RoleProd:
			l.Prod = n
		case RoleShadow:
			l.Shadow = n
		case RoleAssist:
			l.Assist = n
		case RoleSwitch:
			l.Switch = n
		}
		if err := l.hook("namespace " + role); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) addNamespace(ctx context.Context, role string) (*NS, error) {
	name := nsName(l.cfg.Prefix, l.ID, role)
	n := &NS{lab: l, name: name, role: role, fd: -1}
	out, err := exec.CommandContext(ctx, "ip", "netns", "add", name).CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if !strings.Contains(msg, "exists") {
			// ip may have got as far as creating the name; Close removes it.
			l.all = append(l.all, n)
		}
		return nil, fmt.Errorf("ip netns add %s: %w: %s", name, err, msg)
	}
	l.all = append(l.all, n)
	fd, err := netns.GetFromPath(filepath.Join(netnsDir, name))
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", name, err)
	}
	n.fd = fd
	h, err := netlink.NewHandleAt(fd)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", name, err)
	}
	n.h = h
	return n, nil
}
