package divert

import (
	"encoding/binary"
	"errors"
	"testing"
)

// packetMsg builds a queued packet's message as the kernel sends it:
// packet header, a metadata attribute, the payload, and capLen when set.
func packetMsg(id uint32, payload []byte, capLen uint32) []byte {
	var attrs [][]byte
	hdr := binary.BigEndian.AppendUint32(nil, id)
	hdr = binary.BigEndian.AppendUint16(hdr, 0x0800)
	hdr = append(hdr, 3) // NF_INET_LOCAL_OUT
	attrs = append(attrs, attr(attrPacketHdr, hdr...), attr(6, be32(2)...), attr(attrPayload, payload...))
	if capLen != 0 {
		attrs = append(attrs, attr(attrCapLen, be32(capLen)...))
	}
	b := configMsg(1, 5, attrs...)
	binary.NativeEndian.PutUint16(b[nlType:], typePacket)
	return b
}

func TestParsePacket(t *testing.T) {
	payload := []byte{0x45, 0, 0, 40, 1, 2, 3} // odd length: padded
	msg := packetMsg(0xdeadbeef, payload, 1500)
	m, rest, err := splitMessage(append(msg, msg...))
	if err != nil || len(rest) != len(msg) {
		t.Fatalf("split: %v, rest %d want %d", err, len(rest), len(msg))
	}
	var p packet
	if err := parsePacket(m, &p); err != nil {
		t.Fatal(err)
	}
	if p.id != 0xdeadbeef || p.hwProto != 0x0800 || p.hook != 3 || string(p.payload) != string(payload) || p.capLen != 1500 {
		t.Fatalf("parsed %+v", p)
	}
}

func TestParsePacketErrors(t *testing.T) {
	good := packetMsg(9, []byte{0x45}, 0)
	noPayload := configMsg(1, 5, attr(attrPacketHdr, 0, 0, 0, 9, 8, 0, 3))
	binary.NativeEndian.PutUint16(noPayload[nlType:], typePacket)
	badAttr := append([]byte(nil), good...)
	binary.NativeEndian.PutUint16(badAttr[nlHdrLen+nfgHdrLen:], 0xfff0)
	for _, tc := range []struct {
		name   string
		msg    []byte
		want   error
		wantID bool
	}{
		{"short", good[:nlHdrLen+2], errShort, false},
		{"no packet header", configMsg(1, 5, attr(attrPayload, 0x45)), errNoPacketID, false},
		{"no payload", noPayload, errNoPayload, true},
		{"attribute too long", badAttr, errBadAttr, false},
		{"short packet header", configMsg(1, 5, attr(attrPacketHdr, 1, 2)), errBadAttr, false},
	} {
		var p packet
		err := parsePacket(tc.msg, &p)
		if !errors.Is(err, tc.want) || p.hasID != tc.wantID {
			t.Errorf("%s: err %v hasID %v, want %v %v", tc.name, err, p.hasID, tc.want, tc.wantID)
		}
	}
	for _, b := range [][]byte{nil, good[:10], func() []byte {
		b := append([]byte(nil), good...)
		binary.NativeEndian.PutUint32(b, uint32(len(b)+1))
		return b
	}()} {
		if _, _, err := splitMessage(b); err == nil {
			t.Errorf("split of %d bytes succeeded", len(b))
		}
	}
}

func TestPutVerdict(t *testing.T) {
	var b [verdictMsgLen]byte
	putVerdict(b[:], 4, 300, 77)
	if binary.NativeEndian.Uint32(b[nlLen:]) != verdictMsgLen || msgType(b[:]) != typeVerdict ||
		binary.BigEndian.Uint16(b[nlHdrLen+nfgResID:]) != 300 {
		t.Fatalf("headers % x", b)
	}
	a := b[nlHdrLen+nfgHdrLen:]
	if binary.NativeEndian.Uint16(a[attrType:]) != attrVerdictHdr ||
		binary.BigEndian.Uint32(a[attrHdrLen:]) != verdictDrop || binary.BigEndian.Uint32(a[attrHdrLen+4:]) != 77 {
		t.Fatalf("verdict % x", a)
	}
}

func TestParseAck(t *testing.T) {
	b := make([]byte, nlHdrLen+4)
	binary.NativeEndian.PutUint16(b[nlType:], nlmsgError)
	binary.NativeEndian.PutUint32(b[nlHdrLen:], uint32(0xffffffff)) // -EPERM
	if errno, err := parseAck(b); err != nil || errno != 1 {
		t.Fatalf("errno %d err %v", errno, err)
	}
	if _, err := parseAck(b[:nlHdrLen]); err == nil {
		t.Fatal("short ack parsed")
	}
}

// FuzzParsePacket: any bytes, split and parsed, neither panic nor yield a
// payload outside the message.
func FuzzParsePacket(f *testing.F) {
	f.Add(packetMsg(1, []byte{0x45, 0, 0, 20}, 0))
	f.Add(packetMsg(2, make([]byte, 60), 9000))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		for len(b) > 0 {
			msg, rest, err := splitMessage(b)
			if err != nil {
				return
			}
			if len(msg) < nlHdrLen || len(rest) >= len(b) {
				t.Fatalf("split made no progress: msg %d rest %d of %d", len(msg), len(rest), len(b))
			}
			var p packet
			if parsePacket(msg, &p) == nil && len(p.payload) == 0 {
				t.Fatal("parsed without payload")
			}
			_, _ = parseAck(msg)
			b = rest
		}
	})
}
