//go:build linux

package lab

import (
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"
)

// TestMirrorProd: once prod's client link is mirrored, a connection
// attempt from the client arrives at the assist's MirrorPort as VXLAN
// datagrams of the VNI asked for, both directions (the client's SYN and
// prod's RST).
func TestMirrorProd(t *testing.T) {
	l := NewT(t, Config{})
	const vni = 4242
	if err := l.MirrorProd(context.Background(), vni); err != nil {
		t.Fatal(err)
	}
	var conn *net.UDPConn
	if err := l.Assist.Do(func() (err error) {
		conn, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IP(AssistV4.AsSlice()), Port: MirrorPort})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if c, err := l.Client.DialContext(ctx, "tcp", net.JoinHostPort(ProdClientSideV4.String(), "9")); err == nil {
		c.Close() // nothing listens: prod resets
	}
	fromClient, fromProd := false, false
	buf := make([]byte, 65536)
	deadline := time.Now().Add(5 * time.Second)
	for !(fromClient && fromProd) && time.Now().Before(deadline) {
		_ = conn.SetReadDeadline(deadline)
		n, err := conn.Read(buf)
		if err != nil {
			break
		}
		d := buf[:n]
		if n < 8+14+20 || d[0]&0x08 == 0 || binary.BigEndian.Uint32(d[4:])>>8 != vni {
			t.Fatalf("datagram %x: not VXLAN VNI %d", d[:min(n, 16)], vni)
		}
		frame := d[8:]
		if binary.BigEndian.Uint16(frame[12:]) != 0x0800 || frame[14+9] != 6 {
			continue // ARP, neighbour discovery
		}
		src := [4]byte(frame[14+12 : 14+16])
		fromClient = fromClient || src == ClientV4.As4()
		fromProd = fromProd || src == ProdClientSideV4.As4()
	}
	if !fromClient || !fromProd {
		t.Fatalf("mirrored TCP from the client %v, from prod %v; want both directions", fromClient, fromProd)
	}
}
