package e2e

import (
	"context"
	"encoding/binary"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// TestDoctorDeployModes: doctor names each mode's classic failure. On
// prod, an OUTPUT rule on the raw sends' path is warned of, with --send
// datalink as the fix, and is no problem for the datalink path. On a
// mirror target, a session delivering nothing fails, one of full frames
// is ok, one of truncated frames is warned of.
func TestDoctorDeployModes(t *testing.T) {
	const vni = 42
	e := newEnv(t, envOptions{lateCopier: true, lab: lab.Config{DisableOffloads: true}})
	l := e.lab
	prod := []string{"--role", "prod", "--iface", lab.ProdClientLink, "--intercept", lab.AssistV4.String(), "--secret-file", e.secret}
	session := lab.MirrorTarget(vni)
	target := []string{"--role", "prod", "--capture", session, "--mirror-listen", "1s",
		"--intercept", lab.AssistV4.String(), "--secret-file", e.secret}
	check := "mirror " + session

	t.Run("OutputRule", func(t *testing.T) {
		runDoctor(t, l.Prod, prod...).expect(t, 0, nil)
		nftApply(t, l.Prod, prodOutputDrop)
		t.Cleanup(func() { mustRun(t, l.Prod, "nft", "delete", "table", "inet", "prodfw") })
		runDoctor(t, l.Prod, prod...).expect(t, 0, map[string][]string{
			"warn send_path": {"inet prodfw out (output hook, 2 rules, policy accept)", "EPERM", "fix: run copy with --send datalink"},
		})
		runDoctor(t, l.Prod, append(slices.Clone(prod), "--send", "datalink")...).expect(t, 0, nil)
	})

	t.Run("MirrorNothing", func(t *testing.T) {
		runDoctor(t, l.Assist, target...).expect(t, 1, map[string][]string{
			"FAIL " + check: {"no datagram in 1s", "delivers nothing"},
		})
	})

	// traffic runs fn every 20 ms until the returned stop is called.
	traffic := func(fn func()) (stop func()) {
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for i := 0; i < 500; i++ { // bounded: 10 s at most
				select {
				case <-done:
					return
				case <-time.After(20 * time.Millisecond):
					fn()
				}
			}
		})
		return func() { close(done); wg.Wait() }
	}

	t.Run("MirrorHealthy", func(t *testing.T) {
		if err := l.MirrorProd(context.Background(), vni); err != nil {
			t.Fatal(err)
		}
		client := l.Client.HTTPClient(1)
		defer client.CloseIdleConnections()
		stop := traffic(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if c, err := l.Client.DialContext(ctx, "tcp", prodV4HTTP); err == nil {
				c.Close()
			}
		})
		d := runDoctor(t, l.Assist, target...)
		stop()
		d.expect(t, 0, nil)
		if line := d.line(check); !containsAll(line, "frames in 1s", "none truncated") {
			t.Errorf("mirror line %q", line)
		}
	})

	t.Run("MirrorTruncated", func(t *testing.T) {
		// A mirror that cuts frames: a TCP segment whose IP header claims
		// 1000 bytes, 60 of them sent, in VXLAN of the session's VNI.
		var conn net.Conn
		if err := l.Shadow.Do(func() (err error) {
			conn, err = net.Dial("udp", net.JoinHostPort(lab.AssistV4.String(), "4789"))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		d := make([]byte, 8+14+60)
		d[0] = 0x08
		binary.BigEndian.PutUint32(d[4:], vni<<8)
		binary.BigEndian.PutUint16(d[8+12:], 0x0800)
		ip := d[8+14:]
		ip[0], ip[9] = 0x45, 6
		binary.BigEndian.PutUint16(ip[2:], 1000)
		copy(ip[12:], lab.ClientV4.AsSlice())
		copy(ip[16:], lab.ProdClientSideV4.AsSlice())
		ip[20+12] = 5 << 4
		stop := traffic(func() { _, _ = conn.Write(d) })
		res := runDoctor(t, l.Assist, target...)
		stop()
		res.expect(t, 0, map[string][]string{
			"warn " + check: {"frames truncated", "never copied", "fix: raise the mirror target's MTU"},
		})
	})
}

func containsAll(s string, words ...string) bool {
	for _, w := range words {
		if !strings.Contains(s, w) {
			return false
		}
	}
	return true
}
